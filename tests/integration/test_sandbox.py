"""`isolation: sandbox` (the default): each instance and each setup command in bubblewrap, as
the function's own unprivileged uid, seeing only the system (read-only), its folder (read-only;
writable for setup), a private /tmp and its own processes. `isolation: none` opts out."""
from __future__ import annotations

import os

import psutil
import pytest

from sora.isolation import sandbox
from tests.integration import functions as F
from tests.support import json_of, served, write_function

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not sandbox.available(), reason="bubblewrap is not installed")]

PROBE = r"""
const fs = require('fs');
const net = require('net');
const path = require('path');
const tryRead = (p) => { try { fs.readdirSync(p); return 'read'; } catch (e) { return e.code; } };
const tryWrite = (p, bytes) => {
  try { fs.writeFileSync(p, Buffer.alloc(bytes, 1)); return 'wrote'; } catch (e) { return e.code; }
};
exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  const connect = await new Promise((resolve) => {
    const s = net.connect(Number(q.port), '127.0.0.1');
    s.once('connect', () => { s.destroy(); resolve('connected'); });
    s.once('error', (e) => resolve(e.code));
  });
  return {
    uid: process.getuid(), gid: process.getgid(), cwd: process.cwd(),
    other: tryRead(q.other), state: tryRead(q.state), cert: fs.existsSync(q.cert),
    sora: fs.existsSync(q.config),
    ownFolder: tryWrite(path.join(process.cwd(), 'new-file'), 10),
    tmpSmall: tryWrite('/tmp/small', 1024), tmpBig: tryWrite('/tmp/big', 16 << 20),
    etc: tryWrite('/etc/sora-sandbox-test', 1),
    pids: fs.readdirSync('/proc').filter((x) => /^\d+$/.test(x)).length,
    secret: fs.readFileSync(path.join(process.env.SORA_SECRETS_DIR, 'TOKEN'), 'utf8'),
    connect,
  };
};
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("sandbox")
    fns = base / "fns"
    dirs = [write_function(fns, "boxed", {"index.js": PROBE, "token.txt": "s3cret-token"},
                           name="boxed", isolation="sandbox", network=False, tmpSize=8,
                           secrets={"TOKEN": {"file": "token.txt"}}),
            write_function(fns, "netbox", {"index.js": PROBE, "token.txt": "s3cret-token"},
                           name="netbox", isolation="sandbox",
                           secrets={"TOKEN": {"file": "token.txt"}}),
            write_function(fns, "crashy", {"index.js": F.CRASH}, name="crashy",
                           isolation="sandbox"),
            write_function(fns, "zerobox", {"index.js": PROBE, "token.txt": "zero-token"},
                           name="zerobox", isolation="sandbox", minInstances=0,
                           secrets={"TOKEN": {"file": "token.txt"}}),
            # Sandboxed by default; and the opt-out.
            write_function(fns, "plain", {"index.js": PROBE, "token.txt": "plain-token"},
                           name="plain", secrets={"TOKEN": {"file": "token.txt"}}),
            write_function(fns, "unboxed", {"index.js": PROBE, "token.txt": "open-token"},
                           name="unboxed", isolation="none",
                           secrets={"TOKEN": {"file": "token.txt"}},
                           setup=["id -u > setup-uid.txt"]),
            write_function(fns, "diary", {"index.js": PROBE, "token.txt": "diary-token"},
                           name="diary", writableFolder=True,
                           secrets={"TOKEN": {"file": "token.txt"}}),
            write_function(fns, "setupbox", {"index.js": F.ECHO, "doomed.txt": "old"},
                           name="setupbox", setup=setup_probe(base)),
            write_function(fns, "other", {"index.js": F.ECHO}, name="other")]
    yield from served(base, dirs, https=True,
                      env={"SORA_TEST_HOST_SECRET": "must-not-leak", "PIP_NO_COLOR": "1"})


def setup_probe(base) -> list[str]:
    """Setup commands that leave what they could do in files of the function's folder."""
    def attempt(name, command):
        return f"if {command} >/dev/null 2>&1; then echo yes > {name}; else echo no > {name}; fi"
    return ["id -u > setup-uid.txt",
            attempt("setup-other.txt", f"ls {base / 'fns' / 'other'}"),
            attempt("setup-state.txt", f"ls {base / 'state'}"),
            attempt("setup-config.txt", f"cat {base / 'host-config.yaml'}"),
            attempt("setup-etc.txt", "touch /etc/sora-setup-test"),
            attempt("setup-home.txt", "mkdir -p $HOME/.cache && touch $HOME/.cache/x"),
            "env > setup-env.txt",
            "rm doomed.txt", "mkdir -p made/deep && echo built > made/deep/out.txt"]


def probe(host, name):
    r = host.invoke(name, params={"other": str(host.base / "fns" / "other"),
                                  "state": str(host.base / "state"),
                                  "config": str(host.config_path), "cert": str(host.cert),
                                  "port": host.http_port})
    assert r.status_code == 200, r.text
    return json_of(r)


def test_a_sandboxed_instance_sees_only_what_it_needs(host):
    seen = probe(host, "boxed")
    assert seen["uid"] == sandbox.sandbox_uid("boxed") and seen["uid"] != 0
    assert seen["gid"] == seen["uid"]
    assert seen["cwd"] == str(host.base / "fns" / "boxed")
    for where in ("other", "state"):
        assert seen[where] == "ENOENT", (where, seen)
    assert seen["sora"] is False and seen["cert"] is False   # host config, TLS certificate
    assert seen["ownFolder"] == "EROFS" and seen["etc"] == "EROFS"
    assert seen["tmpSmall"] == "wrote" and seen["tmpBig"] == "ENOSPC"   # tmpSize: 8 MB
    assert seen["pids"] <= 3                    # its own pid namespace and /proc
    assert seen["secret"] == "s3cret-token"     # its secrets, read-only, as its uid
    assert seen["connect"] != "connected"       # network: false


def test_network_is_on_unless_turned_off(host):
    assert probe(host, "netbox")["connect"] == "connected"


def test_the_same_function_without_a_sandbox_could_see_it_all(host):
    # The control: the probe's paths do exist on the host, so ENOENT above is the sandbox.
    for path in (host.base / "fns" / "other", host.base / "state", host.config_path,
                 host.cert):
        assert os.path.exists(path)
    seen = probe(host, "unboxed")   # isolation: none
    assert seen["uid"] == os.geteuid() and seen["other"] == "read" and seen["sora"] is True
    assert seen["secret"] == "open-token"


def test_a_function_is_sandboxed_unless_it_opts_out(host):
    seen = probe(host, "plain")   # no `isolation` in its sora.yaml
    assert seen["uid"] == sandbox.sandbox_uid("plain") and seen["uid"] != os.geteuid()
    assert seen["other"] == "ENOENT" and seen["ownFolder"] == "EROFS"
    assert seen["pids"] <= 3 and seen["secret"] == "plain-token"
    assert "isolation: none" in host.log(whole=True)   # the opt-out is logged


def test_a_writable_folder_is_writable_only_where_configured(host):
    seen = probe(host, "diary")   # writableFolder: true
    assert seen["ownFolder"] == "wrote" and seen["etc"] == "EROFS"
    assert seen["other"] == "ENOENT" and seen["uid"] == sandbox.sandbox_uid("diary")
    made = host.base / "fns" / "diary" / "new-file"
    assert made.stat().st_size == 10 and made.stat().st_uid == seen["uid"]
    assert probe(host, "plain")["ownFolder"] == "EROFS"   # the default


def test_setup_runs_in_the_sandbox_and_its_work_lands_in_the_folder(host):
    folder = host.base / "fns" / "setupbox"
    read = lambda name: (folder / name).read_text().strip()   # noqa: E731
    assert read("setup-uid.txt") == str(sandbox.sandbox_uid("setupbox")) != "0"
    assert [read(f"setup-{what}.txt") for what in ("other", "state", "config", "etc")] == \
        ["no"] * 4
    assert read("setup-home.txt") == "yes"          # a writable home of its own
    # Of the host's environment only what package managers read (PIP_*, proxies, ...).
    env = read("setup-env.txt")
    assert "PIP_NO_COLOR=1" in env and "must-not-leak" not in env and "PATH=" in env
    assert not os.path.exists("/etc/sora-setup-test")
    # What it made and deleted is in the folder itself, owned by the folder's owner.
    assert not (folder / "doomed.txt").exists()
    assert read("made/deep/out.txt") == "built"
    assert (folder / "made" / "deep" / "out.txt").stat().st_uid == folder.stat().st_uid
    # isolation: none runs setup as Sora's own user.
    assert (host.base / "fns" / "unboxed" / "setup-uid.txt").read_text().strip() == \
        str(os.geteuid())


def test_crashes_in_the_sandbox_read_the_same(host):
    r = host.invoke("crashy", params={"exit": "7"})
    assert r.status_code == 502 and json_of(r)["errorType"] == "Sora.RuntimeExited"
    assert "exit status 7" in json_of(r)["errorMessage"]
    assert host.invoke("crashy").status_code == 200
    assert host.invoke("other").status_code == 200


def test_a_sandboxed_function_scaled_to_zero_starts_from_its_prestarted_sandbox(host):
    # The pool keeps one runtime already in this function's sandbox (bound to its folder and
    # its secrets folder); the cold call takes it and it loads the function as its uid.
    def standbys():
        found = []
        for proc in host.descendants():
            try:
                if proc.ppid() == host.proc.pid and proc.name() == "bwrap" and \
                        str(host.base / "fns" / "zerobox") in " ".join(proc.cmdline()):
                    found.append(proc)
            except psutil.Error:   # an instance that just ended, not yet reaped
                continue
        return found
    standby = standbys()
    assert len(standby) == 1
    r = host.invoke("zerobox", params={"other": str(host.base / "fns" / "other"),
                                       "state": str(host.base / "state"),
                                       "config": str(host.config_path), "cert": str(host.cert),
                                       "port": host.http_port})
    assert r.status_code == 200, r.text
    seen = json_of(r)
    assert seen["uid"] == sandbox.sandbox_uid("zerobox") and seen["secret"] == "zero-token"
    assert seen["other"] == "ENOENT" and seen["ownFolder"] == "EROFS"
    assert host.record(r.headers["X-Sora-Request-Id"])["cold"] is True
    # The taken one is now the instance (still the supervisor's child, reaped by the pool).
    assert standby[0].is_running()
