"""Paths a function can change, opened or copied as root without following its links
(issue 14 point 2): the safe-open walk, the secrets reader on it, the setup home made afresh,
and what rsync and setfacl (as Sora runs them) do with links in the source and destination."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from sora.config import ConfigError, load_function_config
from sora.isolation import nofollow, sandbox, secrets
from sora.setup.run import content_hash

MARKER = "root-only-marker-7f3a"
OTHER_UID = 64999

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (as Sora runs)")
with_tools = pytest.mark.skipif(not (sandbox.available() and shutil.which("rsync")
                                     and shutil.which("setfacl")),
                                reason="needs bubblewrap, rsync and setfacl")


@pytest.fixture
def tree(tmp_path):
    """A trusted root holding a folder and a file, and a root-only file outside it."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "file").write_text("content")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "key").write_text(MARKER)
    os.chmod(outside / "key", 0o600)
    return root, outside


def test_a_plain_path_is_read(tree):
    root, _ = tree
    assert nofollow.read_beneath(str(root), "sub/file", max_bytes=100) == b"content"
    assert nofollow.read_beneath(str(root), "./sub//file", max_bytes=100) == b"content"


def test_a_link_at_the_end_is_refused(tree):
    root, outside = tree
    os.symlink(outside / "key", root / "sub" / "link")
    with pytest.raises(nofollow.UnsafePath, match="'sub/link' is a symbolic link"):
        nofollow.read_beneath(str(root), "sub/link", max_bytes=100)


def test_a_link_in_the_middle_is_refused(tree):
    root, outside = tree
    os.symlink(outside, root / "middle")
    with pytest.raises(nofollow.UnsafePath, match="'middle' is a symbolic link"):
        nofollow.read_beneath(str(root), "middle/key", max_bytes=100)
    with pytest.raises(nofollow.UnsafePath, match="'middle' is a symbolic link"):
        nofollow.open_dir_beneath(os.open(root, os.O_RDONLY), "middle")


def test_dot_dot_is_refused(tree):
    root, _ = tree
    with pytest.raises(nofollow.UnsafePath, match="without '..'"):
        nofollow.read_beneath(str(root / "sub"), "../../outside/key", max_bytes=100)


def test_a_fifo_is_refused_without_blocking(tree):
    root, _ = tree
    os.mkfifo(root / "fifo")   # nobody writes it: a blocking open would never return
    with pytest.raises(nofollow.UnsafePath, match="expected a regular file, got a fifo"):
        nofollow.read_beneath(str(root), "fifo", max_bytes=100)


def test_a_directory_and_a_hard_link_and_a_big_file_are_refused(tree):
    root, _ = tree
    with pytest.raises(OSError):
        nofollow.read_beneath(str(root), "sub", max_bytes=100)
    os.link(root / "sub" / "file", root / "hard")
    with pytest.raises(nofollow.UnsafePath, match="no other hard link"):
        nofollow.read_beneath(str(root), "hard", max_bytes=100, single_link=True)
    with pytest.raises(nofollow.UnsafePath, match="at most 3 bytes"):
        nofollow.read_beneath(str(root), "sub/file", max_bytes=3)


@as_root
def test_a_file_of_the_wrong_owner_is_refused(tree):
    root, _ = tree
    os.chown(root / "sub" / "file", OTHER_UID, OTHER_UID)
    with pytest.raises(nofollow.UnsafePath, match=f"owned by uid 0, got uid {OTHER_UID}"):
        nofollow.read_beneath(str(root), "sub/file", max_bytes=100, owners=(0,))
    assert nofollow.read_beneath(str(root), "sub/file", max_bytes=100,
                                 owners=(0, OTHER_UID)) == b"content"


def _function(folder, secrets_yaml: str = "", extra: str = ""):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.js").write_text("exports.handler = async () => 1;\n")
    (folder / "sora.yaml").write_text("name: fn\nlanguage: nodejs\nentrypoint: index.js\n"
                                      "handler: handler\n" + extra +
                                      ("secrets:\n" + secrets_yaml if secrets_yaml else ""))
    return load_function_config(str(folder))


def test_a_secret_file_swapped_for_a_link_is_not_read(tree):
    root, outside = tree
    fn = _function(root / "fn", "  A: {file: a.txt}\n  B: {file: deep/b.txt}\n")
    os.symlink(outside / "key", root / "fn" / "a.txt")          # the file itself
    os.symlink(outside, root / "fn" / "deep")                   # a folder on its way
    (outside / "b.txt").write_text(MARKER)
    with pytest.raises(ConfigError) as caught:
        secrets.read_secrets(fn)
    text = str(caught.value)
    assert MARKER not in text
    assert "secrets.A.file: expected a readable UTF-8 regular file reached without " \
           "symbolic links" in text and "'a.txt' is a symbolic link" in text
    assert "secrets.B.file" in text and "'deep' is a symbolic link" in text


def test_secret_files_in_and_out_of_the_folder_are_read(tree):
    root, outside = tree
    (root / "fn").mkdir()
    (root / "fn" / "a.txt").write_text("alpha\n")
    (root / "shared").mkdir()
    (root / "shared" / "c.txt").write_text("gamma")
    fn = _function(root / "fn", f"  A: {{file: a.txt}}\n  B: {{file: {outside}/key}}\n"
                                "  C: {file: ../shared/c.txt}\n")
    assert secrets.read_secrets(fn) == {"A": "alpha", "B": MARKER, "C": "gamma"}


@as_root
def test_the_setup_home_is_made_afresh_and_never_written_through(tmp_path, monkeypatch):
    home_of_sora = tmp_path / "sora-home"
    (home_of_sora / ".config" / "pip").mkdir(parents=True)
    (home_of_sora / ".npmrc").write_text("registry=https://registry.example/\n")
    (home_of_sora / ".config" / "pip" / "pip.conf").write_text("[global]\n")
    monkeypatch.setenv("HOME", str(home_of_sora))
    setup_dir = tmp_path / "setup"
    setup_dir.mkdir()
    target = tmp_path / "host-file"
    target.write_text(MARKER)
    # What older versions kept, with links an earlier setup planted in it.
    old = setup_dir / "fn.home"
    (old / ".config").mkdir(parents=True)
    os.symlink(target, old / ".npmrc")
    os.symlink(tmp_path, old / ".config" / "pip")
    sandbox.remove_setup_homes(str(setup_dir), "fn")
    assert not os.path.lexists(old) and target.read_text() == MARKER
    home = sandbox.fresh_setup_home(str(setup_dir), "fn", OTHER_UID)
    assert os.stat(home).st_uid == OTHER_UID
    assert open(os.path.join(home, ".npmrc")).read().startswith("registry=")
    assert os.stat(os.path.join(home, ".config", "pip", "pip.conf")).st_uid == OTHER_UID
    assert os.stat(target).st_uid == 0 and target.read_text() == MARKER
    assert sandbox.fresh_setup_home(str(setup_dir), "fn", OTHER_UID) != home


def test_the_content_hash_does_not_follow_links_nor_block_on_a_fifo(tree):
    root, outside = tree
    before = content_hash(str(root), set())
    os.mkfifo(root / "fifo")
    os.symlink(outside / "key", root / "link")
    os.symlink(outside, root / "dirlink")
    after = content_hash(str(root), set())
    (outside / "key").write_text("changed")
    (outside / "new").write_text("new")
    assert before != after == content_hash(str(root), set())


# --- rsync and setfacl, run as Sora runs them -----------------------------------------------

@pytest.fixture
def folders(tmp_path):
    """A source and a destination folder, and host files outside both (root's, 0600)."""
    src, dst, host = tmp_path / "src", tmp_path / "dst", tmp_path / "host"
    for folder in (src, dst, host / "dir"):
        folder.mkdir(parents=True)
    (host / "key").write_text(MARKER)
    (host / "dir" / "kept").write_text(MARKER)
    for path in (host / "key", host / "dir" / "kept"):
        os.chmod(path, 0o600)
    return src, dst, host


def _run(argv):
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _host_untouched(host):
    for path in (host / "key", host / "dir" / "kept", host / "dir"):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (0, 0), path
    assert (host / "key").read_text() == (host / "dir" / "kept").read_text() == MARKER
    assert os.listdir(host / "dir") == ["kept"]
    for path in (host / "key", host / "dir"):
        assert "user:" not in subprocess.run(["getfacl", "-c", str(path)], capture_output=True,
                                             text=True).stdout.replace("user::", "")


@as_root
@with_tools
def test_rsync_copies_links_as_links_and_never_writes_through_them(folders):
    src, dst, host = folders
    # In the source: links to host files (setup's, synced back into the folder).
    os.symlink(host / "key", src / "key-link")
    os.symlink(host / "dir", src / "dir-link")
    os.mkfifo(src / "fifo")
    # In the destination: links where the source has a file and a folder (left by an earlier
    # setup in its copy), and one the source lacks (--delete).
    (src / "file").write_text("from source")
    (src / "dir").mkdir()
    (src / "dir" / "inner").write_text("inner")
    os.symlink(host / "key", dst / "file")
    os.symlink(host / "dir", dst / "dir")
    os.symlink(host / "dir", dst / "stale")
    _run(sandbox.folder_sync(str(src), str(dst), OTHER_UID, OTHER_UID))
    assert os.readlink(dst / "key-link") == str(host / "key")
    assert os.lstat(dst / "key-link").st_uid == OTHER_UID     # lchown, not chown
    assert os.readlink(dst / "dir-link") == str(host / "dir")
    assert (dst / "file").read_text() == "from source" and not os.path.islink(dst / "file")
    assert (dst / "dir" / "inner").read_text() == "inner" and not os.path.islink(dst / "dir")
    assert not os.path.lexists(dst / "stale") and not os.path.lexists(dst / "fifo")
    _host_untouched(host)


@with_tools
def test_rsync_back_keeps_what_was_saved_while_setup_ran(folders):
    """The copy back (keep_newer) leaves a file saved in the folder after the copy was made,
    and still replaces a link where the copy has a file."""
    src, dst, host = folders
    (src / "index.js").write_text("old, copied in before setup")
    (src / "made.txt").write_text("setup made it")
    (src / "file").write_text("from source")
    os.utime(src / "index.js", (1_000_000_000, 1_000_000_000))
    (dst / "index.js").write_text("saved while setup ran")
    os.symlink(host / "key", dst / "file")
    _run(sandbox.folder_sync(str(src), str(dst), OTHER_UID, OTHER_UID, keep_newer=True))
    assert (dst / "index.js").read_text() == "saved while setup ran"
    assert (dst / "made.txt").read_text() == "setup made it"
    assert (dst / "file").read_text() == "from source" and not os.path.islink(dst / "file")
    _host_untouched(host)


@as_root
@with_tools
def test_rsync_brings_back_no_set_id_bit_and_nothing_others_can_write(folders):
    # Setup (as the function's uid, allowed under no_new_privs) makes a set-uid copy of a
    # shell and a folder anyone can write; synced back owned by the folder's owner (root),
    # either would hand root to any local user.
    src, dst, _ = folders
    shell = src / "sh"
    shutil.copyfile("/bin/sh", shell)
    os.chown(shell, OTHER_UID, OTHER_UID)
    os.chmod(shell, 0o4755)
    (src / "open").mkdir()
    os.chmod(src / "open", 0o2777)
    _run(sandbox.folder_sync(str(src), str(dst), 0, 0))
    assert os.stat(dst / "sh").st_uid == 0
    assert os.stat(dst / "sh").st_mode & 0o7777 == 0o755
    assert os.stat(dst / "open").st_mode & 0o7777 == 0o755


@as_root
@with_tools
def test_setfacl_skips_links_in_the_folder(folders):
    src, _, host = folders
    (src / "sub").mkdir()
    for where in (src, src / "sub"):
        os.symlink(host / "key", where / "key-link")
        os.symlink(host / "dir", where / "dir-link")
    fn = _function(src, extra="writableFolder: true\n")
    assert sandbox.grant_folder(fn) is None
    assert f"user:{sandbox.sandbox_uid('fn')}:rwx" in subprocess.run(
        ["getfacl", "-c", str(src / "sub")], capture_output=True, text=True).stdout
    _host_untouched(host)


@as_root
@with_tools
def test_a_confined_file_tool_cannot_reach_the_host_even_through_a_link(folders):
    """What a race would make rsync or setfacl do (follow a link swapped in while it runs)
    done on purpose: in the confined namespace the host's files are not there."""
    src, dst, host = folders
    os.symlink(host / "key", src / "key-link")
    os.symlink(host / "dir", src / "dir-link")
    done = subprocess.run(sandbox.confined(
        ["sh", "-c", f"cat {src}/key-link; echo x > {src}/dir-link/new; "
                     f"chown {OTHER_UID} {src}/key-link; cat /etc/passwd; ls /root"],
        [str(src), str(dst)]), capture_output=True, text=True)
    assert MARKER not in done.stdout and "root:" not in done.stdout
    _host_untouched(host)


def test_a_sora_yaml_swapped_for_a_link_is_not_read(tree):
    root, outside = tree
    fn = root / "fn"
    _function(fn)
    (outside / "taken.yaml").write_text((fn / "sora.yaml").read_text().replace("name: fn",
                                                                               "name: taken"))
    os.unlink(fn / "sora.yaml")
    os.symlink(outside / "taken.yaml", fn / "sora.yaml")
    with pytest.raises(ConfigError, match="sora.yaml: expected a regular file, got a link"):
        load_function_config(str(fn))


def test_an_interpreter_linked_out_of_the_folder_is_not_bound(tmp_path):
    folder, elsewhere = tmp_path / "fn", tmp_path / "elsewhere"
    (folder / ".venv" / "bin").mkdir(parents=True)
    (elsewhere / "bin").mkdir(parents=True)
    (elsewhere / "bin" / "python").write_text("#!/bin/sh\n")
    python = folder / ".venv" / "bin" / "python"
    os.symlink(elsewhere / "bin" / "python", python)
    assert str(elsewhere) not in sandbox.read_only_paths([str(python)], str(folder))
    assert "linked to" in sandbox.interpreter_problem([str(python)], str(folder))
    # A virtualenv of one of the host's interpreters (as setup makes it) is bound as before.
    os.unlink(python)
    os.symlink(shutil.which("node") or "/usr/bin/node", python)
    assert sandbox.interpreter_problem([str(python)], str(folder)) is None
    os.unlink(python)
    os.symlink(os.path.join(sandbox.sys.base_prefix, "bin", "python3"), python)
    assert sandbox.interpreter_problem([str(python)], str(folder)) is None
    assert sandbox.sys.base_prefix in sandbox.read_only_paths([str(python)], str(folder))


@pytest.mark.parametrize("flips_after", [1, 2, 3, 4, 5])
def test_a_link_flipped_while_it_is_checked_binds_nothing_of_the_host(tmp_path, monkeypatch,
                                                                      flips_after):
    # A writableFolder function rewrites its `.venv/bin/python` in a loop, between one of the
    # host's interpreters and a path two levels below a folder it must not see. Here the link
    # leads to the host's Python for the first looks at it, and elsewhere after: whenever it
    # flips, nothing outside the host's interpreters may be bound.
    folder, secret = tmp_path / "fn", tmp_path / "state"
    (folder / ".venv" / "bin").mkdir(parents=True)
    (secret / "x").mkdir(parents=True)
    python = folder / ".venv" / "bin" / "python"
    host = os.path.join(sandbox.sys.base_prefix, "bin", "python3")
    os.symlink(host, python)
    resolve = os.path.realpath
    looks = []

    def flipping(path, *args, **kwargs):
        if str(path) == str(python):
            looks.append(path)
            return resolve(host if len(looks) <= flips_after else str(secret / "x" / "y"))
        return resolve(path, *args, **kwargs)
    monkeypatch.setattr(sandbox.os.path, "realpath", flipping)
    bound = sandbox.read_only_paths([str(python)], str(folder))
    assert not [p for p in bound if p.startswith(str(secret))], bound


def test_the_setup_hash_does_not_read_a_huge_sparse_file(tmp_path):
    # A writableFolder function's sparse file of 1 TiB takes no disk; reading it would hold
    # the supervisor's loop for hours. Its size and time still count: a change is seen.
    huge = tmp_path / "huge"
    with open(huge, "wb") as fh:
        fh.truncate(1 << 40)
    started = time.monotonic()
    before = content_hash(str(tmp_path), set())
    assert time.monotonic() - started < 5
    with open(huge, "r+b") as fh:
        fh.truncate((1 << 40) + 1)
    assert content_hash(str(tmp_path), set()) != before


def test_a_dead_workers_secrets_are_removed_and_no_other_functions(monkeypatch, tmp_path):
    monkeypatch.setattr(secrets, "_base", lambda: str(tmp_path))
    dead = tmp_path / "sora-secrets-a-12-k3x9_q1z"            # function a, its worker pid 12
    other = tmp_path / "sora-secrets-a-12-345-p0o9i8u7"       # function a-12, pid 345
    dead.mkdir()
    other.mkdir()
    secrets.remove_leftovers("a", 12)
    assert not dead.exists() and other.exists()
