"""A watched folder, as root sees it: every name in it is someone else's.

Whoever may drop files into a watched folder (and the function, when its trigger is
`writable`) can plant a symbolic link to a root-only file, a link to another folder, a fifo
that blocks whoever opens it, or swap a file for a link between two looks. So Sora opens the
folder once, without following a link (its path is the operator's; its last component, and
every component under the function's folder, are walked with the nofollow walk), keeps that
descriptor, and reaches everything in it from there, one component at a time, with O_NOFOLLOW
(sora/isolation/nofollow.py): a link, on the way or at the end, is refused, never followed; a
file is checked regular on its opened descriptor before a byte is read; opens are non-blocking
so a fifo cannot hang the watcher. Links, fifos, sockets and devices are reported as skipped
(the watcher logs each once and never fires for it).
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass

from ..isolation import nofollow, watched

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass(frozen=True)
class FileStat:
    """A regular file as lstat found it: what settling compares between two looks."""
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> "FileStat":
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@dataclass(frozen=True)
class Entry:
    """What is at a relative path now: kind 'file' (with its stat), 'dir', 'gone' (nothing, or
    not reachable without following a link), or 'other' (a link, fifo, socket, device: never
    read; `why` says what it is)."""
    kind: str
    stat: FileStat | None = None
    why: str = ""


@dataclass
class Scan:
    """Everything under the folder (or one of its subfolders)."""
    files: dict[str, FileStat]
    dirs: list[str]                     # relative paths of the subfolders walked ("" excluded)
    skipped: dict[str, str]             # relative path -> why it is not processed


class Changed(Exception):
    """The file changed while it was hashed (or between the look and the open): look again."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link (not followed)"),
                       (stat.S_ISFIFO, "a fifo"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


NOT_UTF8 = "a name that is not valid UTF-8 (an S3 key must be)"


def utf8(name: str) -> bool:
    """Whether a name read from the folder (os's surrogateescape decoding) is valid UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


MAX_KEY_BYTES = 1024     # S3's limit on an object key
TOO_LONG = f"a path longer than an S3 key may be ({MAX_KEY_BYTES} bytes)"


def too_long(relpath: str) -> bool:
    return len(relpath.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES


HARD_LINK = ("a hard link, not read while fs.protected_hardlinks is off (it could be "
             "another user's file the dropper cannot read: its size and MD5 would be told)")


def hardlinks_unsafe() -> bool:
    """Whether a hard link in the folder may be to a file its dropper cannot read: without
    fs.protected_hardlinks = 1 anyone may link any file they can see (sora.isolation.watched.
    hardlinks_problem). Asked only for a file with more than one link."""
    return watched.hardlinks_problem() is not None


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def open_folder(path: str, function_directory: str | None = None) -> int:
    """A descriptor of the watched folder `path` (absolute, normalised), reached without
    following a link the function or a file dropper could have planted: under the function's
    folder, every component below that folder is walked with O_NOFOLLOW (the function's setup
    can replace `inbox` with a link); elsewhere, the last component (the folder itself must not
    be a link). The rest of the path is the operator's, trusted as written."""
    if function_directory and _inside(path, function_directory) and path != function_directory:
        base, rel = function_directory, os.path.relpath(path, function_directory)
    else:
        base, rel = os.path.dirname(path) or "/", os.path.basename(path)
    return watched.open_folder(base, rel)


class WatchedFolder:
    """The folder's descriptor and the reads Sora makes beneath it; `close()` when done."""

    def __init__(self, path: str, fd: int):
        self.path = path
        self.fd = fd
        st = os.fstat(fd)
        self.identity = (st.st_dev, st.st_ino)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def still_there(self, function_directory: str | None = None) -> bool:
        """Whether `path` still leads (without links) to the folder this descriptor is of: a
        folder renamed away or replaced is watched no longer (the watcher starts again)."""
        try:
            fd = open_folder(self.path, function_directory)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return (st.st_dev, st.st_ino) == self.identity

    def entry(self, relpath: str) -> Entry:
        """What is at `relpath` now (lstat from its parent, reached without links)."""
        parent, name = os.path.split(relpath)
        try:
            dir_fd = nofollow.open_dir_beneath(self.fd, parent)
        except OSError:                  # the parent is gone, or is a link now
            return Entry("gone")
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return Entry("gone")
        except OSError as exc:
            return Entry("other", why=f"cannot be looked at ({exc.strerror})")
        finally:
            os.close(dir_fd)
        if stat.S_ISREG(st.st_mode):
            if st.st_nlink > 1 and hardlinks_unsafe():
                return Entry("other", why=HARD_LINK)
            return Entry("file", FileStat.of(st))
        if stat.S_ISDIR(st.st_mode):
            return Entry("dir")
        return Entry("other", why=_kind(st.st_mode))

    def open_dir(self, relpath: str) -> int:
        """A descriptor of the subfolder `relpath` (links refused): what a watch is put on."""
        return nofollow.open_dir_beneath(self.fd, relpath)

    def scan(self, recursive: bool, under: str = "") -> Scan:
        """The regular files (and with `recursive`, the subfolders, walked without following a
        link) beneath `under`; entries that vanish during the walk are left out."""
        result = Scan({}, [], {})
        todo = [under]
        while todo:
            folder = todo.pop()
            try:
                dir_fd = nofollow.open_dir_beneath(self.fd, folder)
            except OSError as exc:
                if exc.errno != errno.ENOENT and folder:
                    result.skipped[folder] = str(exc)
                continue
            if folder:
                result.dirs.append(folder)
            try:
                with os.scandir(dir_fd) as entries:
                    listed = list(entries)
                for item in listed:
                    rel = f"{folder}/{item.name}" if folder else item.name
                    if not utf8(item.name):
                        # An S3 key is UTF-8, and inotify's reports of such a name break
                        # watchfiles (sora.triggers.files): never fired, never opened.
                        result.skipped[rel] = NOT_UTF8
                        continue
                    if too_long(rel):
                        # Nor is a tree deeper than a key can name walked: a dropper's chain
                        # of 100,000 nested folders cost O(depth²) opens and memory per scan.
                        result.skipped[rel] = TOO_LONG
                        continue
                    try:
                        st = item.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and hardlinks_unsafe():
                        result.skipped[rel] = HARD_LINK
                    elif stat.S_ISREG(st.st_mode):
                        result.files[rel] = FileStat.of(st)
                    elif stat.S_ISDIR(st.st_mode):
                        if recursive:
                            todo.append(rel)
                    else:
                        result.skipped[rel] = _kind(st.st_mode)
            finally:
                os.close(dir_fd)
        return result

    def md5(self, relpath: str, expected: FileStat, on_read=None, stop=None) -> str:
        """The MD5 (hex) of the regular file `relpath`, opened without following a link,
        non-blocking (a fifo swapped in cannot hang us), checked regular on the descriptor.
        Changed if it is not the file `expected` describes (swapped, grown) before or while
        it is read; nofollow.UnsafePath if it is no regular file now; FileNotFoundError if it
        is gone. `stop` (a threading.Event) set: Changed at once (the watcher is stopping and
        a huge file must not hold its thread, or the service's exit, for an hour)."""
        fd = nofollow.open_beneath(self.fd, relpath)
        try:
            st = nofollow.check_regular(fd)
            if st.st_nlink > 1 and hardlinks_unsafe():
                raise nofollow.UnsafePath(errno.EMLINK, HARD_LINK)
            if FileStat.of(st) != expected:
                raise Changed(relpath)
            os.set_blocking(fd, True)
            digest = hashlib.md5(usedforsecurity=False)
            while chunk := os.read(fd, 1 << 20):
                digest.update(chunk)
                if stop is not None and stop.is_set():
                    raise Changed(relpath)
            if FileStat.of(os.fstat(fd)) != expected:
                raise Changed(relpath)
            if on_read is not None:   # on the descriptors just checked: never a path
                parent_fd = nofollow.open_dir_beneath(self.fd, os.path.dirname(relpath))
                try:
                    on_read(fd, os.fstat(parent_fd))
                finally:
                    os.close(parent_fd)
            return digest.hexdigest()
        finally:
            os.close(fd)
