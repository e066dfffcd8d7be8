"""A function folder as the zip `sora deploy` uploads (Lambda's `Code.ZipFile`).

The zip is what the folder holds, as Lambda's are complete (node_modules included when the
folder has them), less what is never the function's: `.git`, `.sora` (Sora's own state beside a
function) and `__pycache__` (the interpreter remakes it). It is deterministic: entries in sorted
order, every timestamp the zip epoch, modes reduced to 0755/0644; so the same folder gives the
same bytes and the same CodeSha256, and a deploy of an unchanged folder changes nothing.

Nothing is followed out of the folder: files are opened with O_NOFOLLOW and checked to be
regular files after opening, and a symbolic link is refused (the host refuses links in a zip;
a link would also name something outside what is uploaded), except those npm makes in
`node_modules/.bin/` for its command-line tools, which a function never loads and which are
left out. Sizes are checked against the host's limits before anything is uploaded: the unzipped
total while walking (so a folder of gigabytes is refused before it is compressed), the zip's
own size once made.
"""
from __future__ import annotations

import io
import os
import stat
import zipfile
from dataclasses import dataclass

# Lambda's limits for a zip uploaded directly, which Sora's management API keeps by default.
MAX_ZIPPED_BYTES = 50 * 1024 * 1024
MAX_UNZIPPED_BYTES = 250 * 1024 * 1024
MAX_ENTRIES = 20_000                     # files and folders (managedFunctions.maxFiles)

EXCLUDED_NAMES = frozenset({".git", ".sora", "__pycache__"})
# npm's command-line shims: links to scripts elsewhere in node_modules, never loaded by code.
SKIPPED_LINK_FOLDER = "node_modules/.bin"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
COMPRESS_LEVEL = 6
READ_CHUNK = 1 << 20


class ZipRefused(Exception):
    """The folder cannot be uploaded as it is; the message says which path and why."""


@dataclass(frozen=True)
class FunctionZip:
    data: bytes
    files: int
    unzipped_bytes: int
    skipped_links: tuple[str, ...]


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def _walk(root: str) -> tuple[list[str], list[str], list[str]]:
    """(directories, files, skipped links), relative '/'-separated paths in sorted order.
    Raises ZipRefused at the first link or special file."""
    directories, files, skipped = [], [], []
    for current, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(current, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        # os.walk lists a link to a folder among dirnames and does not enter it (followlinks
        # false): each name is looked at with lstat here, so it is refused, not left out.
        for name in sorted(dirnames + filenames):
            if name in EXCLUDED_NAMES:       # whatever it is (a worktree's .git is a file)
                continue
            path = os.path.join(current, name)
            rel = rel_dir + name
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                if rel_dir.rstrip("/") == SKIPPED_LINK_FOLDER:
                    skipped.append(rel)
                    continue
                raise ZipRefused(f"{rel}: a symbolic link (to {os.readlink(path)}); the host "
                                 "refuses links in a function's zip: copy what it names into "
                                 "the folder")
            if stat.S_ISDIR(info.st_mode):
                directories.append(rel + "/")
            elif stat.S_ISREG(info.st_mode):
                files.append(rel)
            else:
                raise ZipRefused(f"{rel}: not a regular file or folder (a socket, FIFO or "
                                 "device); only files and folders can be uploaded")
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_NAMES and
                             not os.path.islink(os.path.join(current, d)))
    directories.sort()
    files.sort()
    return directories, files, skipped


def _entry(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
    info.create_system = 3                    # Unix: the mode below is read as Unix mode bits
    info.external_attr = mode << 16
    if not name.endswith("/"):
        info.compress_type = zipfile.ZIP_DEFLATED
    return info


def _read_regular(path: str, rel: str) -> tuple[bytes, bool]:
    """The file's bytes and whether it is executable, read without following a link that
    replaced it since the walk."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise ZipRefused(f"{rel}: cannot read it ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ZipRefused(f"{rel}: changed into something other than a file while "
                             "being zipped")
        return fh.read(), bool(info.st_mode & 0o111)


@dataclass(frozen=True)
class Limits:
    """The host's limits on uploaded code (host-config.yaml `managedFunctions:`)."""
    max_zipped: int = MAX_ZIPPED_BYTES
    max_unzipped: int = MAX_UNZIPPED_BYTES
    max_entries: int = MAX_ENTRIES


def build_zip(folder: str, limits: Limits = Limits()) -> FunctionZip:
    """The folder's deterministic zip; ZipRefused if it holds a link, a special file, or more
    than the limits allow."""
    max_zipped, max_unzipped = limits.max_zipped, limits.max_unzipped
    root = os.path.abspath(folder)
    if not os.path.isdir(root):
        raise ZipRefused(f"{folder}: not a folder")
    directories, files, skipped = _walk(root)
    if len(directories) + len(files) > limits.max_entries:
        raise ZipRefused(f"{folder}: {len(directories) + len(files)} files and folders, more "
                         f"than the host's limit of {limits.max_entries}")
    total = 0
    for rel in files:
        total += os.lstat(os.path.join(root, rel)).st_size
        if total > max_unzipped:
            raise ZipRefused(f"{folder}: more than the host's limit of {_mb(max_unzipped)} "
                             f"unzipped (reached at {rel}); leave out what the function does "
                             "not need")
    buffer = io.BytesIO()
    unzipped = 0
    with zipfile.ZipFile(buffer, "w", compresslevel=COMPRESS_LEVEL) as archive:
        for rel in directories:
            archive.writestr(_entry(rel, stat.S_IFDIR | 0o755), b"")
        for rel in files:
            data, executable = _read_regular(os.path.join(root, rel), rel)
            unzipped += len(data)
            if unzipped > max_unzipped:      # grew since it was measured
                raise ZipRefused(f"{folder}: more than the host's limit of "
                                 f"{_mb(max_unzipped)} unzipped")
            archive.writestr(_entry(rel, stat.S_IFREG | (0o755 if executable else 0o644)),
                             data)
            if buffer.tell() > max_zipped:
                raise ZipRefused(f"{folder}: its zip is more than the host's limit of "
                                 f"{_mb(max_zipped)} (reached at {rel})")
    data = buffer.getvalue()
    if len(data) > max_zipped:
        raise ZipRefused(f"{folder}: its zip is {_mb(len(data))}, more than the host's limit "
                         f"of {_mb(max_zipped)}")
    return FunctionZip(data, len(files), unzipped, tuple(skipped))
