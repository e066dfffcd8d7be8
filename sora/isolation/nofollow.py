"""Opening, as root, paths that a function can change, without following its links.

A function's folder, its setup's copy and home, and whatever setup leaves in them are the
function's (its setup runs as its uid, and rsync syncs what it made back into the folder,
symbolic links and all). A path into them, opened by name as root, goes wherever a link the
function planted points: the admin key, another function's secrets. So Sora opens such a path
one component at a time from a directory it trusts (a file descriptor), each with O_NOFOLLOW
(a link anywhere on the way is refused, not followed), and checks what it got on the opened
descriptor itself (a regular file, one link, the expected owner), so nothing can be swapped in
between the check and the use. The kernel's openat2(RESOLVE_NO_SYMLINKS) does the same walk in
one call, but Python has no binding for it; this walk costs one openat per component.
"""
from __future__ import annotations

import errno
import os
import stat

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a fifo planted in place of a file must not block the caller (the
# arbiter loop, a worker's start); what was opened is checked afterwards.
_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


class UnsafePath(OSError):
    """A path Sora refuses to open: what is wrong is in the message (never the content)."""


def _parts(relpath: str) -> list[str]:
    parts = [p for p in relpath.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePath(errno.EINVAL, f"expected a path without '..', got {relpath!r}")
    return parts


def _refusal(exc: OSError, dir_fd: int, name: str, so_far: str) -> OSError:
    """A clearer error than ELOOP/ENOTDIR when the component is a link or not a directory."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return exc
    where = os.path.join(so_far, name) if so_far else name
    if stat.S_ISLNK(st.st_mode):
        return UnsafePath(errno.ELOOP, f"{where!r} is a symbolic link (not followed)")
    if exc.errno == errno.ENOTDIR:
        return UnsafePath(errno.ENOTDIR, f"{where!r} is not a directory")
    return exc


def open_dir_beneath(root_fd: int, relpath: str) -> int:
    """A new descriptor of the directory `relpath` beneath `root_fd`, reached without
    following any link ("" or "." is `root_fd` itself, duplicated)."""
    fd = os.dup(root_fd)
    walked: list[str] = []
    try:
        for name in _parts(relpath):
            try:
                next_fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _refusal(exc, fd, name, "/".join(walked)) from None
            os.close(fd)
            fd = next_fd
            walked.append(name)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_beneath(root_fd: int, relpath: str, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """A descriptor of `relpath` beneath `root_fd` (opened with `flags`, plus O_NOFOLLOW and
    O_NONBLOCK), reached without following any link."""
    parts = _parts(relpath)
    if not parts:
        raise UnsafePath(errno.EISDIR, f"expected a file, got {relpath!r}")
    parent = open_dir_beneath(root_fd, "/".join(parts[:-1]))
    try:
        return os.open(parts[-1], flags | _FILE_FLAGS, mode, dir_fd=parent)
    except OSError as exc:
        raise _refusal(exc, parent, parts[-1], "/".join(parts[:-1])) from None
    finally:
        os.close(parent)


def check_regular(fd: int, *, owners: tuple[int, ...] | None = None,
                  single_link: bool = False) -> os.stat_result:
    """The opened file's stat, if it is a regular file (owned by one of `owners`, and with no
    other hard link where asked); UnsafePath otherwise."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(errno.EINVAL, f"expected a regular file, got {_kind(st.st_mode)}")
    if single_link and st.st_nlink != 1:
        raise UnsafePath(errno.EMLINK, f"expected a file with no other hard link, got one "
                                       f"with {st.st_nlink} links")
    if owners is not None and st.st_uid not in owners:
        raise UnsafePath(errno.EPERM, f"expected a file owned by uid "
                                      f"{' or '.join(map(str, owners))}, got uid {st.st_uid}")
    return st


def read_beneath(root: str | int, relpath: str, *, max_bytes: int,
                 owners: tuple[int, ...] | None = None, single_link: bool = False) -> bytes:
    """The content of the regular file `relpath` beneath `root` (a trusted directory: a path,
    opened following its own links, or a descriptor), reached without following any link.
    More than `max_bytes` is an error, not a truncation."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) \
        if isinstance(root, str) else os.dup(root)
    try:
        fd = open_beneath(root_fd, relpath)
    finally:
        os.close(root_fd)
    try:
        check_regular(fd, owners=owners, single_link=single_link)
        os.set_blocking(fd, True)
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise UnsafePath(errno.EFBIG, f"expected at most {max_bytes} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def create_beneath(root_fd: int, relpath: str, data: bytes, uid: int, mode: int = 0o644) -> None:
    """Create the file `relpath` (and the folders on its way) beneath `root_fd` with `data`,
    owned by `uid`; every step creates or opens without following a link, and the file must
    be new (O_EXCL: nothing left in its place is written through)."""
    *folders, name = relpath.split("/")
    fd = os.dup(root_fd)
    try:
        for folder in folders:
            try:
                os.mkdir(folder, 0o755, dir_fd=fd)
                made = True
            except FileExistsError:
                made = False
            next_fd = open_dir_beneath(fd, folder)
            os.close(fd)
            fd = next_fd
            if made:
                os.fchown(fd, uid, uid)
        file_fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, mode, dir_fd=fd)
        with os.fdopen(file_fd, "wb") as fh:
            fh.write(data)
            os.fchown(file_fd, uid, uid)
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a fifo"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "an unknown kind of file"
