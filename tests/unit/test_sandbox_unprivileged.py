"""The sandbox when Sora does not run as root: bubblewrap in a user namespace of its own, the
function keeping Sora's uid. The suite runs as root, so these build the command lines as an
unprivileged user would (os.geteuid patched) and run them for real as `nobody` with setpriv.
The interpreter's and Sora's folders are left out of the mounts (under /root here, which
`nobody` cannot read), so the sandboxed commands are plain /bin/sh."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from sora.config import load_function_config
from sora.isolation import sandbox

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not sandbox.available(),
                                reason="needs root (to become nobody) and bubblewrap")


@pytest.fixture
def function_dir():
    """A function folder `nobody` owns, beside another it must not see."""
    base = tempfile.mkdtemp(prefix="sora-unprivileged-", dir="/tmp")
    os.chmod(base, 0o755)
    fn, other = os.path.join(base, "fn"), os.path.join(base, "other")
    for folder in (fn, other):
        os.mkdir(folder)
        os.chown(folder, NOBODY, NOBODY)
    with open(os.path.join(fn, "sora.yaml"), "w") as fh:
        fh.write("name: fn\nlanguage: provided\n")
    with open(os.path.join(other, "secret.txt"), "w") as fh:
        fh.write("not yours")
    os.chown(os.path.join(other, "secret.txt"), NOBODY, NOBODY)
    yield fn, other
    shutil.rmtree(base)


def as_nobody(argv, cwd):
    with sandbox.passed_to(argv) as (command, filter_fds):   # seccomp, watched folders
        return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                               "--clear-groups", "--", *command], cwd=cwd, capture_output=True,
                              text=True, timeout=30, pass_fds=filter_fds)


def unprivileged(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: NOBODY)
    monkeypatch.setattr(sandbox, "read_only_paths", lambda argv, folder=None: [])
    monkeypatch.setattr(sandbox, "setup_paths", lambda: ([], "/usr/bin:/bin"))


def test_an_instance_runs_in_a_user_namespace_as_sora_s_own_uid(function_dir, monkeypatch):
    folder, other = function_dir
    fn = load_function_config(folder)
    unprivileged(monkeypatch)
    assert sandbox.sandbox_uid("fn") == NOBODY
    argv = sandbox.wrap(["/bin/sh", "-c", f"id -u; echo $$; cat {other}/secret.txt 2>&1; "
                                          f"touch {folder}/x 2>&1; ls /proc | grep -c '^[0-9]'"],
                        fn)
    assert "--unshare-user" in argv and "setpriv" not in argv
    monkeypatch.undo()
    done = as_nobody(argv, folder)
    assert done.returncode == 0, done.stderr
    uid, pid, other_read, own_write, pids = done.stdout.strip().split("\n")
    assert uid == str(NOBODY)
    assert pid in ("1", "2")                      # its own pid namespace
    assert "No such file or directory" in other_read
    assert "Read-only file system" in own_write
    assert int(pids) <= 4        # its own /proc: init, sh, ls, grep (the host has hundreds)


def test_no_user_namespace_of_its_own(function_dir, monkeypatch):
    # bubblewrap's --disable-userns (it runs in a user namespace here) and the seccomp filter.
    folder, _ = function_dir
    fn = load_function_config(folder)
    unprivileged(monkeypatch)
    argv = sandbox.wrap(["/bin/sh", "-c", "unshare -Ur id -u 2>&1; echo status $?"], fn)
    assert "--disable-userns" in argv and "--seccomp" in argv
    monkeypatch.undo()
    done = as_nobody(argv, folder)
    assert done.returncode == 0, done.stderr
    assert "Operation not permitted" in done.stdout and "status 1" in done.stdout, done.stdout
    # Without the filter, --disable-userns alone still refuses it (bubblewrap's own guard).
    slot = argv.index("--seccomp")
    done = as_nobody(argv[:slot] + argv[slot + 2:], folder)
    assert "No space left on device" in done.stdout, done.stdout   # max_user_namespaces 0


def test_setup_works_in_the_folder_itself(function_dir, monkeypatch):
    folder, other = function_dir
    fn = load_function_config(folder)
    home = os.path.join(os.path.dirname(folder), "home")
    os.mkdir(home)
    os.chown(home, NOBODY, NOBODY)
    unprivileged(monkeypatch)
    argv = sandbox.wrap_setup(f"id -u > made.txt; ls {other} 2>/dev/null || echo hidden; "
                              "echo $HOME", fn, folder, home)
    monkeypatch.undo()
    done = as_nobody(argv, folder)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["hidden", sandbox.SETUP_HOME]
    made = os.path.join(folder, "made.txt")
    assert open(made).read().strip() == str(NOBODY) and os.stat(made).st_uid == NOBODY


def test_unavailable_reason_is_none_where_user_namespaces_work(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: NOBODY)
    # As root the probe runs all the same; it fails only where bubblewrap cannot make one.
    assert sandbox.unavailable_reason() is None


def test_neither_setup_nor_a_writable_folder_can_write_sora_yaml(function_dir, monkeypatch):
    # Issue 14, point 1: the folder is writable (and nobody owns sora.yaml here), yet the file
    # is the operator's: mounted read-only over the folder, it cannot be written, replaced or
    # removed from inside.
    folder, _ = function_dir
    spec = os.path.join(folder, "sora.yaml")
    with open(spec, "a") as fh:
        fh.write("writableFolder: true\n")
    os.chown(spec, NOBODY, NOBODY)
    before = open(spec, "rb").read()
    fn = load_function_config(folder)
    home = os.path.join(os.path.dirname(folder), "home")
    os.mkdir(home)
    os.chown(home, NOBODY, NOBODY)
    attack = ("echo 'isolation: none' >> sora.yaml 2>&1 || echo no-append; "
              "echo x > other.yaml && mv other.yaml sora.yaml 2>/dev/null || echo no-rename; "
              "rm -f sora.yaml 2>/dev/null || echo no-remove; touch made && echo made")
    unprivileged(monkeypatch)
    argvs = [sandbox.wrap_setup(attack, fn, folder, home),
             sandbox.wrap(["/bin/sh", "-c", attack], fn)]
    monkeypatch.undo()
    for argv in argvs:
        done = as_nobody(argv, folder)
        assert done.stdout.split()[-4:] == ["no-append", "no-rename", "no-remove", "made"], \
            (done.stdout, done.stderr)
        assert open(spec, "rb").read() == before
