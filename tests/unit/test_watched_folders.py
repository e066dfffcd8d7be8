"""Watched folders in the sandbox (sora.isolation.watched, issue 18): which folders get a bind of
their own, that each is opened without following a link and bound by descriptor, and, with
bubblewrap as root, what a sandboxed command can do in them (read, write with `writable`) and
cannot (write without it, reach through a link planted in place of the folder)."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile

import pytest
import yaml

from sora.config import load_function_config
from sora.isolation import nofollow, sandbox, watched

AS_ROOT = os.geteuid() == 0


def make_function(base, triggers, **config):
    folder = base / "fn"
    folder.mkdir(exist_ok=True)
    (folder / "index.js").write_text("exports.handler = async () => 1;\n")
    (folder / "sora.yaml").write_text(yaml.safe_dump({
        "name": "watcher", "language": "nodejs", "entrypoint": "index.js",
        "handler": "handler", "trigger": ["http", *triggers], **config}))
    return str(folder)


@pytest.fixture
def layout(tmp_path):
    """A function folder with ./inbox and ./done, and an operator's folder outside it."""
    folder = tmp_path / "fn"
    (folder / "inbox").mkdir(parents=True)
    (folder / "done").mkdir()
    (tmp_path / "drop" / "inbox").mkdir(parents=True)
    return tmp_path


def test_which_folders_get_a_bind_of_their_own(layout):
    drop = str(layout / "drop" / "inbox")
    folder = make_function(layout, [{"file": {"path": "./inbox"}},
                                     {"file": {"path": "./done", "writable": True}},
                                     {"file": {"path": drop}}])
    fn = load_function_config(folder)
    binds = watched.binds(fn)
    # Each is bound by descriptor, read-only or writable; outside ones first.
    assert binds == [("--ro-bind-fd", f"{{sora-folder-fd:{layout / 'drop'}//inbox}}", drop),
                     ("--ro-bind-fd", f"{{sora-folder-fd:{folder}//inbox}}", f"{folder}/inbox"),
                     ("--bind-fd", f"{{sora-folder-fd:{folder}//done}}", f"{folder}/done")]
    # A writableFolder function's own folders are writable through its folder's bind.
    fn = dataclasses.replace(fn, writableFolder=True)
    assert [b[2] for b in watched.binds(fn)] == [drop]
    assert all(w.writable for w in watched.folders(fn) if w.inside)
    # isolation: none just uses the path; a published version gets none.
    assert watched.binds(dataclasses.replace(fn, isolation="none")) == []
    assert watched.binds(dataclasses.replace(fn, version="3")) == []


def test_two_triggers_on_one_folder_mount_it_once_writable_if_either_is(layout):
    folder = make_function(layout, [{"file": {"path": "./inbox", "pattern": "*.csv"}},
                                    {"file": {"path": "./inbox", "pattern": "*.json",
                                              "writable": True}}])
    fn = load_function_config(folder)
    assert watched.binds(fn) == [("--bind-fd", f"{{sora-folder-fd:{folder}//inbox}}",
                                  f"{folder}/inbox")]
    assert watched.folders(fn)[0].index == 1


def test_the_command_line_binds_the_folders_after_the_function_folder(layout):
    drop = str(layout / "drop" / "inbox")
    folder = make_function(layout, [{"file": {"path": "./inbox", "writable": True}},
                                    {"file": {"path": drop}}])
    argv = sandbox.wrap(["/bin/true"], load_function_config(folder))
    own = argv.index(f"{folder}/inbox")
    assert argv[own - 2] == "--bind-fd" and argv[own - 1].startswith(watched.SLOT_PREFIX)
    assert argv.index(folder) < own        # over the read-only folder's bind
    outside = argv.index(drop)
    assert argv[outside - 2] == "--ro-bind-fd"
    # Its parents are made in the sandbox (0755); none is made through the function folder.
    assert argv[argv.index(str(layout / "drop")) - 1] == "--dir"
    assert f"{folder}" not in [argv[i + 1] for i, a in enumerate(argv) if a == "--dir"]


def test_slots_are_filled_with_descriptors_of_the_folders(layout):
    folder = make_function(layout, [{"file": {"path": "./inbox", "writable": True}}])
    argv = sandbox.wrap(["/bin/true"], load_function_config(folder))
    with watched.passed_to(argv) as (command, fds):
        assert len(fds) == 1 and str(fds[0]) in command
        assert not any(a.startswith(watched.SLOT_PREFIX) for a in command)
        assert os.path.samestat(os.fstat(fds[0]), os.stat(os.path.join(folder, "inbox")))
    with pytest.raises(OSError):
        os.fstat(fds[0])   # closed once spawned


@pytest.mark.parametrize("planted", ["link-to-etc", "link-to-other", "file", "link-on-way"])
def test_a_folder_replaced_by_a_link_or_a_file_is_refused(layout, planted):
    folder = make_function(layout, [{"file": {"path": "./deep/inbox", "writable": True}}])
    os.makedirs(os.path.join(folder, "deep", "inbox"))
    fn = load_function_config(folder)
    other = layout / "other" / "inbox"
    other.mkdir(parents=True)
    deep = os.path.join(folder, "deep")
    inbox = os.path.join(deep, "inbox")
    # What the function's setup could have left, after the config was read.
    if planted == "link-on-way":
        os.rename(deep, deep + ".real")
        os.symlink(deep + ".real", deep)
    else:
        os.rmdir(inbox)
        if planted == "file":
            open(inbox, "w").close()
        else:
            os.symlink("/etc" if planted == "link-to-etc" else str(other), inbox)
    reason = watched.problem(fn)
    assert reason is not None and reason.startswith("trigger[1].file.path: expected the watched "
                                                    f"folder {inbox} to be a directory"), reason
    argv = sandbox.wrap(["/bin/true"], fn)
    with pytest.raises(nofollow.UnsafePath, match="not mounted into the sandbox"):
        with watched.passed_to(argv):
            pass


def test_an_operator_folder_whose_last_component_is_a_link_is_refused(layout):
    real = layout / "drop" / "inbox"
    link = layout / "drop" / "linked"
    link.symlink_to(real)
    folder = make_function(layout, [{"file": {"path": str(link)}}])
    assert "symbolic link" in watched.problem(load_function_config(folder))
    # Its parents are the operator's, trusted: a link there is followed.
    (layout / "drop-alias").symlink_to(layout / "drop")
    folder = make_function(layout, [{"file": {"path": str(layout / "drop-alias" / "inbox")}}])
    assert watched.problem(load_function_config(folder)) is None


# --- for real, in bubblewrap as root -----------------------------------------------------------

as_root_with_bwrap = pytest.mark.skipif(not AS_ROOT or not sandbox.available(),
                                        reason="needs root and bubblewrap")


def run_in_sandbox(fn, script: str) -> subprocess.CompletedProcess:
    argv = sandbox.wrap(["/bin/sh", "-c", script], fn)
    with sandbox.passed_to(argv) as (command, fds):
        return subprocess.run(command, cwd=fn.directory, capture_output=True, text=True,
                              pass_fds=fds, timeout=60)


@as_root_with_bwrap
def test_in_the_sandbox_a_writable_inbox_in_a_read_only_folder(layout):
    drop = layout / "drop" / "inbox"
    (drop / "report.csv").write_text("a,b\n")
    os.chmod(drop / "report.csv", 0o600)       # a dropper's private file
    folder = make_function(layout, [{"file": {"path": "./inbox", "writable": True}},
                                    {"file": {"path": str(drop)}}])
    fn = load_function_config(folder)
    assert watched.grant(fn, sandbox.confined) is None
    done = run_in_sandbox(fn, f"""
        cat {drop}/report.csv
        touch {drop}/new 2>/dev/null && echo drop-writable || echo drop-read-only
        echo hi > {folder}/inbox/made && mv {folder}/inbox/made {folder}/inbox/moved && echo inbox-writable
        rm {folder}/inbox/moved && echo inbox-delete
        touch {folder}/x 2>/dev/null && echo folder-writable || echo folder-read-only
        id -u""")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["a,b", "drop-read-only", "inbox-writable", "inbox-delete",
                                   "folder-read-only", str(sandbox.sandbox_uid(fn))], done
    # What the function made in the inbox, the host sees; what a dropper adds later, the
    # function's uid can read (the default ACL).
    (drop / "later.csv").write_text("c\n")
    done = run_in_sandbox(fn, f"cat {drop}/later.csv")
    assert done.stdout == "c\n", done


@as_root_with_bwrap
def test_a_link_inside_the_folder_reaches_only_what_the_uid_could_read(layout):
    secret = layout / "root-only.txt"
    secret.write_text("root's secret")
    os.chmod(secret, 0o600)
    drop = layout / "drop" / "inbox"
    (drop / "sneaky").symlink_to(secret)
    (drop / "shadow").symlink_to("/etc/shadow")
    folder = make_function(layout, [{"file": {"path": str(drop)}}])
    fn = load_function_config(folder)
    assert watched.grant(fn, sandbox.confined) is None
    # setfacl walked physically: the link's target got no ACL.
    assert str(sandbox.sandbox_uid(fn)) not in subprocess.run(
        ["getfacl", "-n", str(secret)], capture_output=True, text=True).stdout
    done = run_in_sandbox(fn, f"cat {drop}/sneaky 2>&1; cat {drop}/shadow 2>&1; true")
    assert "root's secret" not in done.stdout
    assert "No such file" in done.stdout and "Permission denied" in done.stdout, done.stdout


@as_root_with_bwrap
def test_a_sandbox_without_the_watched_folder_of_another_function(layout):
    other = make_function(layout, [{"file": {"path": "./inbox"}}])
    (layout / "fn" / "inbox" / "theirs.txt").write_text("theirs")
    mine = layout / "mine"
    mine.mkdir()
    (mine / "index.js").write_text("exports.handler = async () => 1;\n")
    (mine / "sora.yaml").write_text(yaml.safe_dump({
        "name": "mine", "language": "nodejs", "entrypoint": "index.js", "handler": "handler"}))
    fn = load_function_config(str(mine))
    done = run_in_sandbox(fn, f"cat {other}/inbox/theirs.txt 2>&1; true")
    assert "No such file" in done.stdout, done.stdout


@as_root_with_bwrap
def test_unprivileged_the_folder_is_bound_by_descriptor_in_a_user_namespace(monkeypatch):
    # Sora run as an ordinary user: bubblewrap binds the descriptor in a user namespace of its
    # own, and the function (Sora's uid, `nobody` here) reads and writes as that uid.
    from tests.unit.test_sandbox_unprivileged import NOBODY, as_nobody, unprivileged
    base = tempfile.mkdtemp(prefix="sora-watched-", dir="/tmp")
    try:
        os.chmod(base, 0o755)
        folder, drop = os.path.join(base, "fn"), os.path.join(base, "drop")
        for path in (folder, os.path.join(folder, "inbox"), drop):
            os.mkdir(path)
            os.chown(path, NOBODY, NOBODY)
        with open(os.path.join(folder, "sora.yaml"), "w") as fh:
            fh.write(f"name: fn\nlanguage: provided\ntrigger: [http, {{file: {{path: ./inbox, "
                     f"writable: true}}}}, {{file: {{path: {drop}}}}}]\n")
        fn = load_function_config(folder)
        unprivileged(monkeypatch)
        argv = sandbox.wrap(["/bin/sh", "-c", f"touch {folder}/inbox/made && echo made; "
                                              f"touch {drop}/x 2>/dev/null || echo read-only"],
                            fn)
        assert "--unshare-user" in argv and "--bind-fd" in argv and "--ro-bind-fd" in argv
        monkeypatch.undo()
        done = as_nobody(argv, folder)
        assert done.stdout.split() == ["made", "read-only"], (done.stdout, done.stderr)
        assert os.stat(os.path.join(folder, "inbox", "made")).st_uid == NOBODY
    finally:
        shutil.rmtree(base)


def test_the_acl_needs_the_kernel_to_refuse_hard_links_to_others_files(tmp_path):
    sysctl = tmp_path / "protected_hardlinks"
    sysctl.write_text("1\n")
    assert watched.hardlinks_problem(str(sysctl)) is None
    sysctl.write_text("0\n")
    assert "fs.protected_hardlinks = 1" in watched.hardlinks_problem(str(sysctl))
    assert "unreadable" in watched.hardlinks_problem(str(tmp_path / "missing"))


@as_root_with_bwrap
def test_the_function_folder_itself_watched_writable_keeps_sora_yaml_read_only(layout):
    folder = make_function(layout, [{"file": {"path": ".", "writable": True}}])
    fn = load_function_config(folder)
    assert watched.grant(fn, sandbox.confined) is None
    before = open(os.path.join(folder, "sora.yaml")).read()
    done = run_in_sandbox(fn, "touch made && echo made; echo 'isolation: none' >> sora.yaml "
                              "2>/dev/null || echo sora-yaml-read-only")
    assert done.stdout.split() == ["made", "sora-yaml-read-only"], done
    assert open(os.path.join(folder, "sora.yaml")).read() == before


def test_only_bubblewraps_options_take_a_slot(layout):
    # A word of the function's own command shaped like a slot is left as it is: root opens
    # nothing for it, and no descriptor reaches the command.
    folder = make_function(layout, [{"file": {"path": "./inbox"}}])
    fake = f"{watched.SLOT_PREFIX}/root//.ssh{watched.SLOT_SUFFIX}"
    argv = sandbox.wrap(["/bin/echo", "--ro-bind-fd", fake], load_function_config(folder))
    with watched.passed_to(argv) as (command, fds):
        assert len(fds) == 1 and command[-1] == fake


@as_root_with_bwrap
def test_the_folders_descriptor_does_not_reach_the_sandboxed_command(layout):
    folder = make_function(layout, [{"file": {"path": "./inbox"}},
                                    {"file": {"path": str(layout / "drop" / "inbox")}}])
    done = run_in_sandbox(load_function_config(folder), "ls /proc/self/fd")
    # stdin, stdout, stderr and ls's own listing: an inherited folder descriptor would be a
    # way out of the mount namespace (openat(fd, "..")).
    assert done.stdout.split() == ["0", "1", "2", "3"], done


@pytest.mark.skipif(not AS_ROOT, reason="needs root (an ACL for another uid)")
def test_a_file_dropped_0600_later_is_given_to_the_functions_uid_by_its_descriptor(layout):
    drop = layout / "drop" / "inbox"
    folder = make_function(layout, [{"file": {"path": str(drop)}}])
    fn = load_function_config(folder)
    uid = sandbox.sandbox_uid(fn)
    fd = os.open(drop / "late.csv", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        assert watched.grant_file(fd, fn)
        assert not watched.grant_file(fd, fn)      # already there
    finally:
        os.close(fd)
    acl = subprocess.run(["getfacl", "-n", "-c", str(drop / "late.csv")], capture_output=True,
                         text=True).stdout.split()
    assert acl == ["user::rw-", f"user:{uid}:r--", "group::---", "mask::r--", "other::---"], acl
    # Writable, over an existing ACL: the entry widened, others kept, the mask recomputed.
    subprocess.run(["setfacl", "-m", "u:12345:r,g:54321:x", str(drop / "late.csv")], check=True)
    fd = os.open(drop / "late.csv", os.O_RDONLY)
    try:
        assert watched.grant_file(fd, fn, writable=True)
    finally:
        os.close(fd)
    acl = subprocess.run(["getfacl", "-n", "-c", str(drop / "late.csv")], capture_output=True,
                         text=True).stdout.split()
    assert acl == ["user::rw-", "user:12345:r--", f"user:{uid}:rw-", "group::---",
                   "group:54321:--x", "mask::rwx", "other::---"], acl
    # A hard link's other name may be anyone's file: left alone.
    (layout / "not-theirs").write_text("secret")
    os.chmod(layout / "not-theirs", 0o600)
    os.link(layout / "not-theirs", drop / "linked.csv")
    fd = os.open(drop / "linked.csv", os.O_RDONLY)
    try:
        assert not watched.grant_file(fd, fn)
    finally:
        os.close(fd)
    assert str(uid) not in subprocess.run(["getfacl", "-n", str(layout / "not-theirs")],
                                          capture_output=True, text=True).stdout


@pytest.mark.skipif(not AS_ROOT, reason="needs root (files of another uid, an ACL)")
def test_a_file_moved_in_whose_owner_could_not_have_put_it_there_is_not_granted(layout):
    """A dropper allowed to rename files out of another folder moves in a file its owner keeps
    private (0600): the watcher (root) gave the function's uid read access to it. A file is
    granted only when its owner may create files in the folder holding it."""
    drop = layout / "drop" / "inbox"
    drop.chmod(0o755)                       # root's: uid 4242 cannot create files here
    folder = make_function(layout, [{"file": {"path": str(drop)}}])
    fn = load_function_config(folder)
    uid = sandbox.sandbox_uid(fn)
    moved = drop / "moved-in.csv"
    moved.write_text("alice's private notes")
    os.chown(moved, 4242, 4242)
    moved.chmod(0o600)
    fd = os.open(moved, os.O_RDONLY)
    try:
        assert not watched.grant_file(fd, fn, folder=os.stat(drop))
        drop.chmod(0o777)                   # anyone may create here: it may be its owner's drop
        assert watched.grant_file(fd, fn, folder=os.stat(drop))
    finally:
        os.close(fd)
        drop.chmod(0o755)
    assert f"user:{uid}:r--" in subprocess.run(["getfacl", "-n", "-c", str(moved)],
                                               capture_output=True, text=True).stdout
    assert watched.may_create_in(0, os.stat(drop))
    assert watched.may_create_in(os.stat(drop).st_uid, os.stat(drop))
