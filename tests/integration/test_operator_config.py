"""Issue 14, points 1 and 5: what a function or its setup writes never changes how Sora runs it.

`sora.yaml` is the operator's. Attacks: a setup command (an npm `postinstall`, say) rewrites it
to `isolation: none`; a `writableFolder` function rewrites it and waits for its worker to be
restarted; a setup of `isolation: none` rewrites it. And the host's environment: setup must get
the package managers' variables by name, never by a short prefix, never a declared secret.
"""
from __future__ import annotations

import sys

import pytest
import requests

from sora.isolation import sandbox
from tests.integration import functions as F
from tests.support import SoraHost, json_of, wait_for, write_function

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not sandbox.available(), reason="bubblewrap is not installed")]

# What a hostile install script does: replace the function's sora.yaml by one that opts out of
# the sandbox (keeping the rest, so the function still loads).
REWRITE_TO_NONE = ("grep -v '^isolation:' sora.yaml > /tmp/hostile.yaml; "
                   "echo 'isolation: none' >> /tmp/hostile.yaml; cat /tmp/hostile.yaml > sora.yaml")

# A writableFolder function that rewrites its own sora.yaml (in place, and by a rename over it).
SELF_REWRITER = r"""
const fs = require('fs');
const attempt = (fn) => { try { fn(); return 'done'; } catch (e) { return e.code; } };
exports.handler = async () => {
  const hostile = fs.readFileSync('sora.yaml', 'utf8').replace(/^isolation:.*$/m, '')
    + '\nisolation: none\n';
  const write = attempt(() => fs.writeFileSync('sora.yaml', hostile));
  const rename = attempt(() => {
    fs.writeFileSync('hostile.yaml', hostile);
    fs.renameSync('hostile.yaml', 'sora.yaml');
  });
  return { uid: process.getuid(), write, rename };
};
"""

WHOAMI = "exports.handler = async () => ({ uid: process.getuid() });\n"

HOST_ENV = {"GOOGLE_API_KEY": "google-key-must-not-leak",
            "CARGO_REGISTRY_TOKEN": "cargo-token-must-not-leak",
            "SOME_UNRELATED_TOKEN": "unrelated-token-must-not-leak",
            # Listed for setup, but another function declares it as its secret.
            "PIP_INDEX_URL": "https://user:index-password-must-not-leak@pypi.example/simple",
            "HTTPS_PROXY": "http://proxy.example:3128",
            "npm_config_registry": "https://registry.example/",
            "npm_config__authToken": "npm-token-must-not-leak"}


# A Python function whose interpreter is a link that setup makes, to an executable in a folder
# of the host (here a wrapper of the host's Python in an admin's folder beside a key).
READ_SECRET = """
import os
def handler(event, context):
    try:
        with open(os.environ["SECRET"]) as fh:
            return {"read": fh.read()}
    except OSError as exc:
        return {"read": exc.strerror}
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("operator-config")
    fns = base / "fns"
    admin = base / "admin"
    (admin / "bin").mkdir(parents=True)
    (admin / "id_rsa").write_text("admin-key-must-not-leak")
    wrapper = admin / "bin" / "python3"
    wrapper.write_text(f"#!/bin/sh\nexec {sys._base_executable} \"$@\"\n")
    wrapper.chmod(0o755)
    dirs = [write_function(fns, "postinstall", {"index.js": WHOAMI}, name="postinstall",
                           setup=[REWRITE_TO_NONE]),
            write_function(fns, "tolerant", {"index.js": WHOAMI}, name="tolerant",
                           setup=[REWRITE_TO_NONE + " || true"]),
            write_function(fns, "unboxed", {"index.js": WHOAMI}, name="unboxed",
                           isolation="none",
                           setup=["echo 'env: {INJECTED: by-setup}' >> sora.yaml"]),
            write_function(fns, "diary", {"index.js": SELF_REWRITER}, name="diary",
                           writableFolder=True),
            write_function(fns, "envdump", {"index.js": F.ECHO}, name="envdump",
                           setup=["env > setup-env.txt"]),
            write_function(fns, "indexed", {"index.js": F.ECHO}, name="indexed",
                           secrets={"INDEX": {"env": "PIP_INDEX_URL"}}),
            write_function(fns, "linker", {"main.py": READ_SECRET}, name="linker",
                           language="python", entrypoint="main.py", runtime=".venv/bin/python",
                           env={"SECRET": str(admin / "id_rsa")},
                           setup=[f"mkdir -p .venv/bin && ln -sf {wrapper} .venv/bin/python"])]
    host = SoraHost(base, dirs, https=False, env=HOST_ENV)
    host.written = {d.name: (d / "sora.yaml").read_bytes() for d in dirs}   # the operator's
    host.start(wait_functions=["tolerant", "diary", "envdump", "indexed"])
    yield host
    assert host.stop() == 0


def unchanged(host, name: str) -> bool:
    return (host.base / "fns" / name / "sora.yaml").read_bytes() == host.written[name]


def test_a_setup_that_rewrites_sora_yaml_fails_and_nothing_runs_unconfined(host):
    state = wait_for(lambda: (s := host.function_state("postinstall"))["state"] == "FATAL" and s,
                     what="the setup to fail")
    assert "setup command" in state["reason"], state
    assert unchanged(host, "postinstall")   # never synced back
    r = host.invoke("postinstall")
    assert r.status_code == 503, r.text   # it never runs, let alone as root
    # A script that shrugs the failure off gets nowhere either: its sandbox is kept.
    assert unchanged(host, "tolerant")
    assert json_of(host.invoke("tolerant"))["uid"] == sandbox.sandbox_uid("tolerant") != 0


def test_an_unsandboxed_setup_that_changes_sora_yaml_makes_the_function_fatal(host):
    state = wait_for(lambda: (s := host.function_state("unboxed"))["state"] == "FATAL" and s,
                     what="the setup to fail")
    assert "changed sora.yaml" in state["reason"] and "unboxed/sora.yaml" in state["reason"], \
        state
    assert host.invoke("unboxed").status_code == 503


def test_a_writable_folder_function_cannot_write_its_sora_yaml_even_after_a_restart(host):
    folder = host.base / "fns" / "diary"
    seen = json_of(host.invoke("diary"))
    assert seen["write"] in ("EROFS", "EACCES") and seen["rename"] in ("EBUSY", "EROFS"), seen
    assert seen["uid"] == sandbox.sandbox_uid("diary") != 0
    assert unchanged(host, "diary")
    assert (folder / "hostile.yaml").exists()   # the rest of its folder stays writable
    # Its worker restarts (killed): it still runs with the config the host started with.
    host.kill_worker("diary")
    seen = json_of(host.invoke("diary"))
    assert seen["uid"] == sandbox.sandbox_uid("diary") != 0, seen


def test_a_restarted_worker_uses_the_config_read_at_start_whatever_the_folder_says(host):
    # Were sora.yaml changed all the same (here by the test, from outside every sandbox), a
    # worker started later still runs with what the supervisor read before setup.
    spec = host.base / "fns" / "diary" / "sora.yaml"
    spec.write_bytes(host.written["diary"] + b"isolation: none\n")
    try:
        host.kill_worker("diary")
        seen = json_of(host.invoke("diary"))
        assert seen["uid"] == sandbox.sandbox_uid("diary") != 0, seen
    finally:
        spec.write_bytes(host.written["diary"])


def test_setup_gets_the_package_managers_variables_by_name_and_no_secret(host):
    env = (host.base / "fns" / "envdump" / "setup-env.txt").read_text()
    for leaked in ("google-key", "cargo-token", "unrelated-token", "index-password",
                   "npm-token"):
        assert f"{leaked}-must-not-leak" not in env, leaked
    assert "HTTPS_PROXY=http://proxy.example:3128" in env
    assert "npm_config_registry=https://registry.example/" in env


def test_an_interpreter_linked_out_of_the_folder_mounts_nothing_of_the_host(host):
    state = wait_for(lambda: (s := host.function_state("linker"))["state"] == "FATAL" and s,
                     timeout=60, what="the function to be refused")
    assert "runtime:" in state["reason"] and "not followed into the sandbox" in \
        state["reason"], state
    r = host.invoke("linker")
    assert r.status_code == 503 and "admin-key" not in r.text, r.text


ADMIN = "admin-key-0123456789abcdef"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    base = tmp_path_factory.mktemp("operator-config-auth")
    fns = base / "fns"
    dirs = [write_function(fns, "private", {"index.js": F.ECHO}, name="private")]
    host = SoraHost(base, dirs, https=False, api_key=ADMIN, extra={
        "auth": {"apiKeys": [{"name": "ops", "key": ADMIN, "scopes": ["admin"]}]}})
    host.start()
    yield host
    assert host.stop() == 0


def test_a_restarted_gateway_keeps_the_auth_read_at_start(keyed):
    url = f"{keyed.url}/functions/private"
    assert requests.get(url, timeout=30).status_code == 401
    spec = keyed.function_dirs[0] / "sora.yaml"
    written = spec.read_bytes()
    spec.write_bytes(written + b"auth: none\n")   # as a function that could write it would
    try:
        master = next(p for p in keyed.descendants() if "gunicorn" in " ".join(p.cmdline())
                      and p.ppid() == keyed.proc.pid)
        worker = master.children()[0]
        worker.kill()
        wait_for(lambda: [c for c in master.children() if c.pid != worker.pid]
                 and keyed.invoke("private").status_code == 200, timeout=30,
                 what="a new gateway worker")
        assert requests.get(url, timeout=30).status_code == 401
    finally:
        spec.write_bytes(written)
