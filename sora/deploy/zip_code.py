"""A function's code as uploaded (`Code.ZipFile`): checked, then extracted, or refused whole.

The zip is the caller's, so it is read as hostile: an entry whose path escapes the folder
(absolute, `..`), a symbolic link, a device, fifo or socket, an encrypted entry, more entries
or more bytes than the limits allow are refused with the reason, and nothing is left behind.
The unzipped size is checked twice: the sizes the zip declares (before anything is written)
and the bytes actually written (a zip bomb's headers may lie). Entries are written with
O_EXCL|O_NOFOLLOW into a fresh temporary folder that only this code writes, which the caller
renames into place once it is complete (sora.deploy.store).
"""
from __future__ import annotations

import base64
import errno
import hashlib
import io
import os
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass

MB = 1 << 20
# Lambda's limits for a zip deployment package (the defaults of host-config.yaml
# `managedFunctions:`).
DEFAULT_MAX_ZIPPED = 50 * MB
DEFAULT_MAX_UNZIPPED = 250 * MB
DEFAULT_MAX_ENTRIES = 20_000
CHUNK = 1 << 16


class ZipRefused(Exception):
    """The zip cannot be a function's code: `error_type` is Lambda's error type for it and
    `status` its HTTP status."""

    def __init__(self, error_type: str, status: int, message: str):
        super().__init__(message)
        self.error_type = error_type
        self.status = status


def _invalid(message: str) -> ZipRefused:
    return ZipRefused("InvalidParameterValueException", 400, message)


@dataclass(frozen=True)
class ZipLimits:
    max_zipped: int = DEFAULT_MAX_ZIPPED
    max_unzipped: int = DEFAULT_MAX_UNZIPPED
    max_entries: int = DEFAULT_MAX_ENTRIES


@dataclass(frozen=True)
class ExtractedCode:
    folder: str         # the temporary folder holding the code; the caller renames or removes it
    code_size: int      # bytes of the zip (Lambda's CodeSize)
    code_sha256: str    # base64 SHA-256 of the zip (Lambda's CodeSha256)
    unzipped_size: int


def code_sha256(blob: bytes) -> str:
    return base64.b64encode(hashlib.sha256(blob).digest()).decode()


def check_zipped_size(size: int, limits: ZipLimits) -> None:
    if size > limits.max_zipped:
        raise ZipRefused("RequestTooLargeException", 413, (
            f"Code.ZipFile: the zip is {size} bytes; the limit is {limits.max_zipped} bytes "
            f"(host-config.yaml managedFunctions.maxZipMB)"))


def declared_entries(blob: bytes) -> int:
    """The entry count the zip's end record declares, read before zipfile parses the central
    directory: a 50 MB zip of a million empty entries would take gigabytes as ZipInfo objects.
    0 when there is no end record (zipfile then refuses the zip itself)."""
    try:
        end = zipfile._EndRecData(io.BytesIO(blob))   # (private, stable since Python 2)
        return int(end[zipfile._ECD_ENTRIES_TOTAL]) if end else 0
    except (AttributeError, OSError, IndexError, TypeError, ValueError, struct.error):
        return 0


def central_entries(blob: bytes, stop_after: int) -> int:
    """The entries the central directory really holds, counted record by record (as zipfile
    walks it, without making a ZipInfo of each), stopping once past `stop_after`. zipfile
    reads the central directory by its size, not by the end record's count: a zip whose end
    record says 1 entry but whose 50 MB central directory holds a million made the gateway
    parse them all (9 s, +300 MB) before the count was checked. 0 when the zip has no end
    record (zipfile then refuses it itself); a malformed record ends the count (zipfile
    refuses the zip when it reaches it)."""
    try:
        end = zipfile._EndRecData(io.BytesIO(blob))   # (private, stable since Python 2)
        if not end:
            return 0
        size_cd, offset_cd = int(end[zipfile._ECD_SIZE]), int(end[zipfile._ECD_OFFSET])
        concat = int(end[zipfile._ECD_LOCATION]) - size_cd - offset_cd
        if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
            concat -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
    except (AttributeError, OSError, IndexError, TypeError, ValueError, struct.error):
        return 0
    start = offset_cd + concat
    if start < 0:
        return 0
    count, total = 0, 0
    while total < size_cd and count <= stop_after:
        at = start + total
        if blob[at:at + 4] != zipfile.stringCentralDir or at + _CENTRAL_SIZE > len(blob):
            break
        names, extra, comment = struct.unpack_from("<HHH", blob, at + 28)
        total += _CENTRAL_SIZE + names + extra + comment
        count += 1
    return count


_CENTRAL_SIZE = 46   # a central directory record's fixed part (zipfile.sizeCentralDir)


def check_entry_count(count: int, limits: ZipLimits) -> None:
    if count > limits.max_entries:
        raise _invalid(f"Code.ZipFile: the zip has {count} entries; the limit is "
                       f"{limits.max_entries} (host-config.yaml managedFunctions.maxFiles)")


def entry_path(info: zipfile.ZipInfo) -> list[str]:
    """The entry's path as folder names below the code's folder, or ZipRefused if it is not
    one (absolute, `..`, a drive, NUL). Backslashes (zips made on Windows) separate folders."""
    name = info.filename
    shown = name if name.isprintable() else name.encode("unicode_escape").decode("ascii")
    if "\x00" in name:
        raise _invalid(f"Code.ZipFile: entry {shown!r} has a NUL character in its path")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise _invalid(f"Code.ZipFile: entry {shown!r} has an absolute path; every path must "
                       "stay inside the function's folder")
    parts = [part for part in unified.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _invalid(f"Code.ZipFile: entry {shown!r} escapes the function's folder ('..'); "
                       "every path must stay inside it")
    return parts


def entry_kind(info: zipfile.ZipInfo) -> str:
    """'file' or 'dir'; ZipRefused for a link, device, fifo or socket (by its Unix mode in
    the external attributes, where zip tools on Unix keep it)."""
    mode = info.external_attr >> 16
    if info.create_system == 3 and mode:   # made on Unix: the mode is meaningful
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise _invalid(f"Code.ZipFile: entry {info.filename!r} is a symbolic link; links "
                           "are refused (store the file itself)")
        if kind in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            raise _invalid(f"Code.ZipFile: entry {info.filename!r} is a device, fifo or "
                           "socket; only files and folders are accepted")
        if kind == stat.S_IFDIR:
            return "dir"
    return "dir" if info.filename.endswith(("/", "\\")) else "file"


def file_mode(info: zipfile.ZipInfo) -> int:
    """0o755 for a file executable in the zip (a `provided` function's bootstrap), else 0o644:
    readable by the function's sandbox uid, never set-uid, never writable by it."""
    mode = info.external_attr >> 16
    return 0o755 if info.create_system == 3 and mode & 0o111 else 0o644


def extract(blob: bytes, parent: str, limits: ZipLimits) -> ExtractedCode:
    """Check the zip and extract it into a new folder in `parent` (which must be Sora's, on
    the file system the code will live on). Raises ZipRefused with nothing left behind."""
    check_zipped_size(len(blob), limits)
    check_entry_count(declared_entries(blob), limits)
    if central_entries(blob, limits.max_entries) > limits.max_entries:
        raise _invalid(f"Code.ZipFile: the zip has more than {limits.max_entries} entries "
                       "(whatever its end record says); the limit is "
                       f"{limits.max_entries} (host-config.yaml managedFunctions.maxFiles)")
    try:
        archive = zipfile.ZipFile(io.BytesIO(blob))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise _invalid(f"Code.ZipFile: could not unzip the uploaded file ({exc}); expected a "
                       "zip archive, base64-encoded in the request") from None
    check_entry_count(len(infos), limits)
    plan = []
    for info in infos:
        parts = entry_path(info)
        kind = entry_kind(info)
        if info.flag_bits & 0x1:
            raise _invalid(f"Code.ZipFile: entry {info.filename!r} is encrypted")
        if parts:
            plan.append((info, parts, kind))
    declared = declared_size(infos)
    if declared > limits.max_unzipped:
        raise _too_large(declared, limits, "declares")
    folder = tempfile.mkdtemp(prefix=".upload-", dir=parent)
    try:
        written = _write_entries(archive, plan, folder, limits)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return ExtractedCode(folder, len(blob), code_sha256(blob), written)


def declared_size(infos: list[zipfile.ZipInfo]) -> int:
    """What the zip says it holds unzipped (checked first; the bytes written are counted too,
    headers may lie)."""
    return sum(info.file_size for info in infos)


def _too_large(size: int, limits: ZipLimits, how: str) -> ZipRefused:
    return _invalid(f"Code.ZipFile: the zip {how} {size} bytes unzipped; the limit is "
                    f"{limits.max_unzipped} bytes (host-config.yaml "
                    "managedFunctions.maxUnzippedMB)")


def _write_entries(archive: zipfile.ZipFile, plan, folder: str, limits: ZipLimits) -> int:
    os.chmod(folder, 0o755)
    written = 0
    for info, parts, kind in plan:
        target = os.path.join(folder, *parts)
        if kind == "dir":
            _make_dirs(folder, parts)
            continue
        _make_dirs(folder, parts[:-1])
        try:
            # O_EXCL: a second entry of the same path is refused rather than overwriting the
            # first; O_NOFOLLOW: nothing here is a link (none is ever made), kept as a guard.
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         file_mode(info))
        except OSError as exc:
            raise _unwritable(info.filename, exc) from None
        with os.fdopen(fd, "wb") as out:
            try:
                with archive.open(info) as source:
                    while chunk := source.read(CHUNK):
                        written += len(chunk)
                        if written > limits.max_unzipped:
                            raise _too_large(written, limits, "holds more than")
                        out.write(chunk)
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError,
                    ValueError, zlib.error) as exc:
                # A corrupt entry, an unknown compression method, a bad CRC; OSError (the
                # disk's) is Sora's and goes up as it is.
                raise _invalid(f"Code.ZipFile: entry {info.filename!r} could not be unzipped "
                               f"({exc})") from None
        os.chmod(target, file_mode(info))   # the umask may have narrowed it
    return written


def _unwritable(name: str, exc: OSError) -> Exception:
    """Why an entry could not be written, if the zip is the cause; else the OSError itself
    (the disk's: Sora's problem, not the caller's)."""
    if isinstance(exc, FileExistsError):
        return _invalid(f"Code.ZipFile: entry {name!r} appears twice (or is both a file and "
                        "a folder)")
    if isinstance(exc, (IsADirectoryError, NotADirectoryError)):
        return _invalid(f"Code.ZipFile: entry {name!r} is both a file and a folder")
    if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):
        return _invalid(f"Code.ZipFile: entry {name[:80]!r}… has a path too long for the file "
                        "system")
    return exc


def _make_dirs(folder: str, parts: list[str]) -> None:
    path = folder
    for part in parts:
        path = os.path.join(path, part)
        try:
            os.mkdir(path, 0o755)
            os.chmod(path, 0o755)
        except FileExistsError:
            if os.path.islink(path) or not os.path.isdir(path):
                raise _invalid(f"Code.ZipFile: {'/'.join(parts)} is both a file and a "
                               "folder in the zip") from None
        except OSError as exc:
            raise _unwritable("/".join(parts), exc) from None
