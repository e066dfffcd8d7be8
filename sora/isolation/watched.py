"""The folders a function's file triggers watch, in its sandbox (issue 18).

Each file trigger's folder (`FileTrigger.path`, absolute) is in the function's sandbox at the
same path: read-only, or writable with `writable: true`. Whoever can change the folder's path
must not be able to make Sora (root) bind something else there:

- a folder inside the function folder (`./inbox`) is the function's: its setup (synced back by
  root's rsync) may have replaced it, or a folder on its way, with a link to /etc or to another
  function's folder. Its trusted root is the function folder (the operator's path); everything
  below is walked with `nofollow`;
- a folder outside it is the operator's path: its parent folders are trusted (the host config
  and sora.yaml are), but its last component, and all that is dropped under it, are not.

The folder is opened with that walk and bubblewrap binds the opened descriptor (`--bind-fd`,
`--ro-bind-fd`), never the path, so what is mounted is what was checked: a link or anything but
a directory is refused (`UnsafePath`), and the instance does not start (the worker's start
checks every folder first: `problem`, a boot error naming the trigger). The command line holds a
slot per folder (`{sora-folder-fd:ROOT//RELPATH}`), filled in just before the process is spawned
(`passed_to`), as seccomp's is: a pre-started runtime's kind is its whole command line.

Which folders get a bind of their own (`binds`): every one, but those inside a
`writableFolder` function's folder, which are writable through the folder's bind anyway (a
read-only bind there would be no limit: the function can rename what holds it; and a bind at a
path its running instances can change is one whose destination they could redirect). With a
bind, each instance's start opens the folder again and mounts what it opened: a folder swapped
for a link after the worker's start stops the next instance (without one, a read-only function
folder's ./inbox swapped for a link to /etc started instances showing it, as the sandbox's own
/etc). Instances already running see a swap on the host (the mount goes with the renamed or
deleted folder) as a link that resolves inside their own sandbox only.

Outside folders are mounted at paths whose parents bubblewrap makes in the sandbox's own tmpfs,
so nothing of the host's lies on their way. A bind inside the function folder is made after the
folder's, at a path bubblewrap resolves through the folder's entries; the only writer of a
read-only function folder is root's rsync after a setup, and if that swapped in a link between
Sora's open and bubblewrap's mount, what gets mounted is the descriptor's folder, which rsync
has emptied and deleted: nothing.

The function's uid must be able to read (with `writable`, write) the folder and what is dropped
into it (`grant`): when Sora runs as root, a POSIX ACL for that uid on the folder and everything
in it, and the default ACL for what comes later, set by setfacl walking physically (`-P`) inside
a mount namespace that holds only the descriptor's folder (`sandbox.confined`, bound by
descriptor): a link swapped in during the walk leads nowhere else. An ACL entry is on an inode:
a hard link dropped there to a file the dropper cannot read would pass that file on, so the
host must refuse such links (fs.protected_hardlinks = 1, checked: `hardlinks_problem`). Unprivileged, the function
runs as Sora's own uid: nothing to grant. A published version gets no watched folder: triggers
fire `$LATEST`.
"""
from __future__ import annotations

import contextlib
import errno
import os
import pwd
import shutil
import stat
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from . import nofollow
from .uids import sandbox_uid

SLOT_PREFIX = "{sora-folder-fd:"
SLOT_SUFFIX = "}"
# Between a slot's trusted root and the part walked without links: os.path.normpath never
# leaves two slashes in a path.
SLOT_SEPARATOR = "//"
LATEST = "$LATEST"
FD_OPTIONS = ("--bind-fd", "--ro-bind-fd")


@dataclass(frozen=True)
class Watched:
    """A watched folder as the sandbox mounts it."""
    path: str        # where it is, and where it is mounted
    root: str        # the trusted folder it is reached from (opened following its own links)
    relpath: str     # walked from `root` without following any link ("." for root itself)
    writable: bool
    inside: bool     # in the function folder
    index: int       # the first file trigger (its place in `trigger`) that watches it

    @property
    def slot(self) -> str:
        return f"{SLOT_PREFIX}{self.root}{SLOT_SEPARATOR}{self.relpath}{SLOT_SUFFIX}"

    @property
    def field(self) -> str:
        return f"trigger[{self.index}].file.path"


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def folders(fn) -> list[Watched]:
    """The folders of `fn`'s file triggers, enabled or not (a trigger enabled by a reload
    needs no restart of the instances), each once (writable if any trigger on it is)."""
    if not fn.sandboxed or fn.version != LATEST:
        return []
    found: dict[str, Watched] = {}
    for trigger in fn.files:
        path = os.path.normpath(trigger.path)
        directory = os.path.normpath(fn.directory)
        inside = _under(path, directory)
        if inside:
            root, relpath = directory, os.path.relpath(path, directory)
            writable = trigger.writable or fn.writableFolder
        else:
            root, relpath = os.path.dirname(path), os.path.basename(path)
            writable = trigger.writable
        known = found.get(path)
        if known is not None:
            writable = writable or known.writable
        found[path] = Watched(path, root, relpath, writable, inside,
                              known.index if known else trigger.index)
    return list(found.values())


def binds(fn) -> list[tuple[str, str, str]]:
    """bubblewrap's options (kind, slot, destination) that mount `fn`'s watched folders which
    need a bind of their own (see the module's docstring), outside ones first."""
    out = []
    for folder in sorted(folders(fn), key=lambda w: (w.inside, w.path.count("/"))):
        if folder.inside and fn.writableFolder:
            continue   # through the function folder's own bind, writable
        out.append(("--bind-fd" if folder.writable else "--ro-bind-fd", folder.slot,
                    folder.path))
    return out


def open_folder(root: str, relpath: str) -> int:
    """A descriptor of the directory `relpath` beneath `root`, reached without following a
    link below `root`; UnsafePath (an OSError) when it is a link or not a directory."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return nofollow.open_dir_beneath(root_fd, relpath)
    finally:
        os.close(root_fd)


def _open(folder: Watched) -> int:
    try:
        return open_folder(folder.root, folder.relpath)
    except OSError as exc:
        raise nofollow.UnsafePath(exc.errno or errno.EINVAL, refusal(folder.path, exc)) \
            from None


def refusal(path: str, exc: OSError) -> str:
    """What is said when a watched folder cannot be mounted."""
    why = exc.strerror or str(exc)
    return (f"expected the watched folder {path} to be a directory reached without a symbolic "
            f"link (it is not mounted into the sandbox, and the instance does not start), got: "
            f"{why}")


def problem(fn) -> str | None:
    """Why one of `fn`'s watched folders cannot be mounted into its sandbox now (a config
    error naming the trigger), or None. The worker checks at its start so the function is
    reported with the reason rather than failing at every instance start."""
    for folder in folders(fn):
        try:
            os.close(_open(folder))
        except OSError as exc:
            return f"{folder.field}: {exc.strerror or exc}"
    return None


def _slot_of(arg: str) -> tuple[str, str] | None:
    if not (arg.startswith(SLOT_PREFIX) and arg.endswith(SLOT_SUFFIX)):
        return None
    root, sep, relpath = arg[len(SLOT_PREFIX):-len(SLOT_SUFFIX)].partition(SLOT_SEPARATOR)
    return (root, relpath) if sep else None


@contextlib.contextmanager
def passed_to(argv: list[str]) -> Iterator[tuple[list[str], tuple[int, ...]]]:
    """`argv` with each watched folder's slot replaced by a descriptor of the folder opened
    without following links, and those descriptors (to pass the child; closed here once it is
    spawned). UnsafePath, naming the folder, if one is a link or not a directory."""
    fds: list[int] = []
    out: list[str] = []
    options = True   # bubblewrap's own options, up to the `--` before the sandboxed command
    try:
        for arg in argv:
            # Only bubblewrap's own --bind-fd/--ro-bind-fd take a slot: what follows `--` is the
            # function's command, whose words (a managed function's entrypoint, say) must never
            # make root open a folder and hand the function its descriptor.
            slot = _slot_of(arg) if options and out and out[-1] in FD_OPTIONS else None
            if arg == "--":
                options = False
            if slot is None:
                out.append(arg)
                continue
            root, relpath = slot
            try:
                fd = open_folder(root, relpath)
            except OSError as exc:
                raise nofollow.UnsafePath(exc.errno or errno.EINVAL, refusal(
                    os.path.normpath(os.path.join(root, relpath)), exc)) from None
            fds.append(fd)
            out.append(str(fd))
        yield out, tuple(fds)
    finally:
        for fd in fds:
            os.close(fd)


PROTECTED_HARDLINKS = "/proc/sys/fs/protected_hardlinks"


def hardlinks_problem(path: str = PROTECTED_HARDLINKS) -> str | None:
    """Why granting the function's uid what is in a watched folder is unsafe on this host, or
    None. setfacl gives the uid an entry on each file's inode: a hard link dropped into the
    folder to a file the dropper cannot read (/etc/shadow) would give the function that file.
    The kernel refuses such links with fs.protected_hardlinks = 1 (a link only to a file one
    owns or may read and write), the default of every major distribution."""
    try:
        with open(path) as fh:
            value = fh.read().strip()
    except OSError as exc:
        value = f"unreadable ({exc.strerror})"
    if value == "1":
        return None
    return ("expected the sysctl fs.protected_hardlinks = 1 (sysctl -w "
            "fs.protected_hardlinks=1): without it a hard link dropped into a watched folder "
            "to a file its dropper cannot read would be given to the function by the folder's "
            f"ACL; got {value}")


def grant(fn, confined) -> str | None:
    """With Sora run as root, let `fn`'s uid read each watched folder and what is in it (and
    with `writable`, create, rename and delete there): an ACL entry for the uid, and the same
    as the default ACL, on the folder and everything in it (setfacl -R -P, run `confined` to the
    folder, bound by descriptor). Returns why it could not, or None."""
    watched = folders(fn)
    if not watched or os.geteuid() != 0:
        return None
    if shutil.which("setfacl") is None:
        return (f"{watched[0].field}: expected setfacl on PATH to let the function's uid read "
                "its watched folder (apt-get install acl)")
    if (reason := hardlinks_problem()) is not None:
        return f"{watched[0].field}: {reason}"
    uid = sandbox_uid(fn)
    for folder in watched:
        perms = "rwX" if folder.writable else "rX"
        try:
            fd = _open(folder)
        except OSError as exc:
            return f"{folder.field}: {exc.strerror or exc}"
        try:
            done = subprocess.run(
                confined(["setfacl", "-R", "-P", "-m", f"u:{uid}:{perms},d:u:{uid}:{perms}",
                          folder.path], [], bound_fds=[(fd, folder.path)]),
                stdin=subprocess.DEVNULL, capture_output=True, text=True, pass_fds=(fd,),
                start_new_session=True)
        finally:
            os.close(fd)
        if done.returncode != 0:
            return (f"{folder.field}: could not give the function's uid access to "
                    f"{folder.path}: {done.stderr.strip()}")
    return None


# POSIX ACLs as the kernel stores them in an extended attribute (linux/posix_acl_xattr.h): a
# version, then (tag, permissions, id) entries sorted by tag and id.
ACL_XATTR = "system.posix_acl_access"
ACL_VERSION = 2
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = \
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20
ACL_UNDEFINED_ID = 0xFFFFFFFF
_ACL_HEADER, _ACL_ENTRY = struct.Struct("<I"), struct.Struct("<HHI")


def _acl_entries(fd: int, mode: int) -> list[tuple[int, int, int]]:
    """The file's access ACL entries: its ACL's, or the three its mode stands for."""
    try:
        data = os.getxattr(fd, ACL_XATTR)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
            raise
        data = b""
    if len(data) >= _ACL_HEADER.size and \
            _ACL_HEADER.unpack_from(data)[0] == ACL_VERSION:
        return [_ACL_ENTRY.unpack_from(data, offset)
                for offset in range(_ACL_HEADER.size, len(data), _ACL_ENTRY.size)]
    return [(ACL_USER_OBJ, (mode >> 6) & 7, ACL_UNDEFINED_ID),
            (ACL_GROUP_OBJ, (mode >> 3) & 7, ACL_UNDEFINED_ID),
            (ACL_OTHER, mode & 7, ACL_UNDEFINED_ID)]


def may_create_in(uid: int, folder: os.stat_result) -> bool:
    """Whether `uid` may have put a file into `folder` itself, by the folder's mode bits (its
    owner, its group's members with group write, anyone with other write; root always). Its
    ACL is not read: a uid only an ACL entry lets in is told no (the file is then not granted,
    never granted wrongly)."""
    if uid == 0 or uid == folder.st_uid or folder.st_mode & 0o002:
        return True
    if not folder.st_mode & 0o020:
        return False
    try:
        user = pwd.getpwuid(uid)
        return folder.st_gid in os.getgrouplist(user.pw_name, user.pw_gid)
    except (KeyError, OSError):
        return False


def grant_file(fd: int, fn, writable: bool = False,
               folder: os.stat_result | None = None) -> bool:
    """Give `fn`'s uid read (and with `writable`, write) access to the regular file open as
    `fd` (opened without following a link: `nofollow.open_beneath`), by its ACL, as setfacl
    would (the mask recomputed). For files dropped after the worker's start whose own mode
    masks the folder's default ACL entry (a file created 0600 gets a mask of none): the
    trigger service can call it on the descriptor it hashes before it fires. A file with
    another hard link is left as it is (its other name may be a file the dropper could not
    read). Nor is a file whose owner could not have created it in `folder` (the stat of the
    folder holding it): someone allowed to rename files out of another folder could move in
    a file its owner keeps private (mode 0600, in a folder that dropper may write), and the
    function would be given it. Returns whether it changed anything; only as root, only a
    sandboxed function."""
    if not fn.sandboxed or os.geteuid() != 0:
        return False
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        return False
    if folder is not None and not may_create_in(st.st_uid, folder):
        return False
    uid, perms = sandbox_uid(fn), 6 if writable else 4
    existing = _acl_entries(fd, st.st_mode)
    current = next((p for tag, p, who in existing if tag == ACL_USER and who == uid), 0)
    mask = next((p for tag, p, _ in existing if tag == ACL_MASK), 0)
    if current & perms == perms and mask & perms == perms:
        return False
    entries = [e for e in existing if not (e[0] == ACL_USER and e[2] == uid)]
    entries.append((ACL_USER, perms | current, uid))
    mask = 0
    for tag, granted, _ in entries:
        if tag in (ACL_GROUP_OBJ, ACL_USER, ACL_GROUP):
            mask |= granted
    entries = [e for e in entries if e[0] != ACL_MASK] + [(ACL_MASK, mask, ACL_UNDEFINED_ID)]
    entries.sort(key=lambda e: (e[0], e[2] if e[0] in (ACL_USER, ACL_GROUP) else 0))
    os.setxattr(fd, ACL_XATTR, _ACL_HEADER.pack(ACL_VERSION)
                + b"".join(_ACL_ENTRY.pack(*e) for e in entries))
    return True
