"""Issue 14, points 1 and 5 without processes of a host: the supervisor's snapshot of the
functions' configs, sora.yaml's read-only bind, setup's check of sora.yaml, and what of the
host's environment a setup gets."""
from __future__ import annotations

import dataclasses
import os
import sys

import pytest

from sora import config_snapshot
from sora.config import load_function_config, load_host_config
from sora.isolation import sandbox, secrets
from sora.setup.run import SetupRun


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def folder(tmp_path):
    fn = tmp_path / "fns" / "fn"
    write(fn / "index.js", "exports.handler = async () => 1;\n")
    write(fn / "sora.yaml", "name: fn\nlanguage: nodejs\nentrypoint: index.js\n"
                            "secrets: {TOKEN: {env: PIP_INDEX_URL}}\n")
    return fn


def run_setup(fn, state_dir):
    run = SetupRun(fn, str(state_dir))
    run.start()
    while (outcome := run.poll()) is None:
        pass
    return outcome


# --- the snapshot ------------------------------------------------------------------------------

def test_children_get_the_config_read_at_start_not_the_folder_s(tmp_path, folder):
    host = write(tmp_path / "host-config.yaml", "functionPaths: [fns/fn, fns/gone]\n"
                                                 "server: {httpPort: 1}\nstateDir: state\n")
    config = load_host_config(str(host))
    assert [f.name for f in config.functions] == ["fn"] and len(config.broken) == 1
    path = config_snapshot.snapshot_path(config.stateDir)
    config_snapshot.write(path, config.functions, config.broken)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    # What the function (or its setup) writes afterwards changes nothing a child reads.
    write(folder / "sora.yaml", "name: fn\nlanguage: nodejs\nentrypoint: index.js\n"
                                "isolation: none\nauth: none\n")
    child = config_snapshot.load_host_config_of_child(str(host))
    assert child.functions == config.functions and child.broken == config.broken
    assert child.functions[0].sandboxed and child.functions[0].auth == "apiKey"
    assert child.functions[0].secrets[0].env == "PIP_INDEX_URL"
    assert child.server == config.server


def test_a_child_without_the_supervisor_s_snapshot_refuses_to_guess(tmp_path, folder):
    host = write(tmp_path / "host-config.yaml", "functionPaths: [fns/fn]\n"
                                                 "server: {httpPort: 1}\nstateDir: state\n")
    with pytest.raises(Exception, match="written by the supervisor"):
        config_snapshot.load_host_config_of_child(str(host))


def test_the_digest_is_of_the_bytes_that_were_validated(folder):
    fn = load_function_config(str(folder))
    assert len(fn.sourceDigest) == 64
    write(folder / "sora.yaml", (folder / "sora.yaml").read_text() + "# a comment\n")
    assert load_function_config(str(folder)).sourceDigest != fn.sourceDigest


# --- sora.yaml read-only in every sandbox ------------------------------------------------------

def binds(argv):
    end = argv.index("--")
    return [tuple(argv[i:i + 3]) for i in range(end) if argv[i] in ("--bind", "--ro-bind")]


@pytest.mark.parametrize("writable", [False, True])
def test_sora_yaml_is_bound_read_only_over_the_folder(folder, writable):
    if writable:
        write(folder / "sora.yaml", (folder / "sora.yaml").read_text() + "writableFolder: true\n")
    fn = load_function_config(str(folder))
    spec = str(folder / "sora.yaml")
    for argv in (sandbox.wrap(["node"], fn), sandbox.wrap_setup("true", fn, "/copy", "/home")):
        mounts = binds(argv)
        over = [i for i, (_, _, dest) in enumerate(mounts) if dest == str(folder)]
        assert over and ("--ro-bind", spec, spec) in mounts[over[0] + 1:], mounts


def test_the_copy_back_of_a_root_setup_never_writes_sora_yaml(folder, tmp_path, monkeypatch):
    write(folder / "sora.yaml", "name: fn\nlanguage: nodejs\nentrypoint: index.js\n"
                                "setup: [npm install]\n")
    fn = load_function_config(str(folder))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(os, "chown", lambda *a: None)
    run = SetupRun(fn, str(tmp_path / "state"))
    *_, (label, back) = run._plan()
    assert "rsync" in back and back[-1] == f"{fn.directory}/"   # (confined: bwrap … rsync)
    assert "--exclude=/sora.yaml" in back


# --- setup's check ------------------------------------------------------------------------------

def unboxed(folder, command):
    write(folder / "sora.yaml", "name: fn\nlanguage: nodejs\nentrypoint: index.js\n"
                                f"isolation: none\nsetup: [{command!r}]\n")
    return load_function_config(str(folder))


def test_a_setup_that_leaves_sora_yaml_alone_succeeds(folder, tmp_path):
    outcome = run_setup(unboxed(folder, "echo built > out.txt"), tmp_path / "state")
    assert outcome.ok and not outcome.config_changed


@pytest.mark.parametrize("command", [
    "echo 'auth: none' >> sora.yaml",                              # rewritten
    "rm sora.yaml && ln -s /etc/hostname sora.yaml",               # a link in its place
    "rm sora.yaml && mkfifo sora.yaml",                            # would block a reader
    "rm sora.yaml",                                                # gone
])
def test_a_setup_that_changes_sora_yaml_fails_naming_it(folder, tmp_path, command):
    fn = unboxed(folder, command)
    outcome = run_setup(fn, tmp_path / "state")
    assert not outcome.ok and outcome.config_changed
    assert f"{fn.source}: setup command" in outcome.reason and "changed sora.yaml" in \
        outcome.reason
    assert "changed sora.yaml" in (tmp_path / "state" / "setup" / "fn.log").read_text()


# --- the host's environment in setup (point 5) --------------------------------------------------

HOST = {"GOOGLE_API_KEY": "g", "GOPATH": "/root/go", "GITHUB_TOKEN": "t",
        "CARGO_REGISTRY_TOKEN": "c", "PIPELINE_SECRET": "p", "AWS_SECRET_ACCESS_KEY": "a",
        "GOPROXY": "https://proxy.golang.org", "GOFLAGS": "-mod=mod", "GOPRIVATE": "corp",
        "HTTPS_PROXY": "http://proxy:3128", "no_proxy": "localhost",
        "SSL_CERT_FILE": "/etc/ssl/ca.pem", "NODE_EXTRA_CA_CERTS": "/etc/ssl/ca.pem",
        "PIP_INDEX_URL": "https://user:pw@index/simple", "PIP_TRUSTED_HOST": "index",
        "npm_config_registry": "https://registry/", "NPM_CONFIG_STRICT_SSL": "true",
        "npm_config__authToken": "n", "NPM_CONFIG__AUTH": "n", "npm_config_otp": "1",
        "npm_config_key": "PEM", "npm_config_": "x"}


def test_setup_gets_named_variables_only_and_never_a_declared_secret(folder):
    fn = dataclasses.replace(load_function_config(str(folder)), env={"OWN": "1"})
    withheld = secrets.declared_env_names([fn])
    assert withheld == {"PIP_INDEX_URL"}
    env = sandbox.setup_environment(fn, withheld, host_env=HOST)
    assert set(env) == {"GOPROXY", "GOFLAGS", "GOPRIVATE", "HTTPS_PROXY", "no_proxy",
                        "SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS", "PIP_TRUSTED_HOST",
                        "npm_config_registry", "NPM_CONFIG_STRICT_SSL", "OWN"}
    # Not withheld, a listed variable passes.
    assert sandbox.setup_environment(fn, frozenset(), host_env=HOST)["PIP_INDEX_URL"] == \
        HOST["PIP_INDEX_URL"]


def test_no_short_prefix_is_left():
    for name in ("GO", "GOOGLE_CREDENTIALS", "PIP_", "PIPX_HOME", "CARGO_HOME", "npm_token"):
        assert not sandbox.passed_to_setup(name), name


# --- an interpreter in the folder that links out of it -------------------------------------------

def test_an_interpreter_in_the_folder_mounts_only_the_host_s_interpreters(tmp_path, folder):
    # Any folder of the host that holds an executable two levels down (`<dir>/bin/node`, a
    # provided function's `<fns>/<name>/bootstrap`) would be mounted as the interpreter's
    # installation if a link made by setup could name it.
    secret_dir = tmp_path / "admin"
    write(secret_dir / ".ssh" / "id_rsa", "KEY")
    exe = write(secret_dir / "bin" / "python3", "#!/bin/sh\n")
    exe.chmod(0o755)
    venv = folder / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(exe)
    (venv / "python3").symlink_to(sys.base_prefix + "/bin/python3")
    (venv / "inside").symlink_to(folder / "index.js")
    hostile, host_python, inside = (str(venv / n) for n in ("python", "python3", "inside"))
    assert "not followed into the sandbox" in sandbox.interpreter_problem([hostile], str(folder))
    assert str(secret_dir) not in sandbox.read_only_paths([hostile], str(folder))
    assert sandbox.interpreter_problem([host_python], str(folder)) is None
    assert sandbox.interpreter_problem([inside], str(folder)) is None
    assert os.path.realpath(sys.base_prefix) in [
        os.path.realpath(p) for p in sandbox.read_only_paths([host_python], str(folder))]
    fn = load_function_config(str(folder))
    argv = sandbox.wrap([hostile, "-s", "bootstrap.py"], fn)
    assert not [a for a in argv[:argv.index("--")] if a.startswith(str(secret_dir))], argv


def test_a_sora_yaml_that_is_a_link_is_refused_at_load(tmp_path, folder):
    real = write(tmp_path / "elsewhere.yaml", (folder / "sora.yaml").read_text())
    (folder / "sora.yaml").unlink()
    (folder / "sora.yaml").symlink_to(real)
    with pytest.raises(Exception, match="expected a regular file, got a link"):
        load_function_config(str(folder))
