"""A version's code carried through the store (PostgreSQL): a tar Sora makes from its own
root-owned copy, and the refusing extraction another host runs before it uses the version.

`pack` reads only the version's copy (`<stateDir>/versions/<NAME>/<N>/code`, made by the
confined rsync and owned by root), never the function's folder; links are stored as links,
owners as root, and each regular file's mtime in nanoseconds (a pax field), because the code
hash counts a large file by its size and mtime.

`unpack` treats the tar as hostile (whoever can write the store's table chose its bytes):
- every member goes through tarfile's `data` filter: absolute names, `..`, devices, fifos,
  set-id bits and group/other write are refused or cleared, owners are not restored (root's);
- hard links are refused (the copy never has any: rsync runs without `-H`), as are two
  members of one name;
- symbolic links are kept as links, as the publishing host's copy has them (a virtualenv
  links to /usr/bin/python3; inside the sandbox such a link resolves in the sandbox's view),
  but nothing is ever written through one: links are created last, after every file and
  folder, and a member whose path passes through a link's name is refused. So no member can
  land outside the destination, whatever the links say.
The caller extracts into a fresh staging folder, checks the code hash, then renames it into
place (sora.versions.store), so a version is whole or absent on every host.
"""
from __future__ import annotations

import io
import os
import stat
import tarfile

MTIME_NS = "SORA.mtime_ns"


class UnsafeTar(ValueError):
    """A tar that would write outside its folder, or holds what a version never has."""


def pack(code: str) -> bytes:
    """The gzip'd tar of the folder `code` (its content, names relative to it)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1,
                      format=tarfile.PAX_FORMAT) as tar:
        for root, dirs, files, root_fd in os.fwalk(code, follow_symlinks=False):
            dirs.sort()
            rel = os.path.relpath(root, code)
            for name in sorted(dirs + files):
                path = os.path.join(root, name)
                arcname = os.path.normpath(os.path.join(rel, name))
                info = tar.gettarinfo(path, arcname)
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                if info.isreg():
                    st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
                    info.pax_headers = {MTIME_NS: str(st.st_mtime_ns)}
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 dir_fd=root_fd)
                    with os.fdopen(fd, "rb") as fh:
                        tar.addfile(info, fh)
                elif info.isdir() or info.issym():
                    tar.addfile(info)
                # anything else (the copy has none: rsync --no-devices --no-specials) is left out
    return out.getvalue()


def unpack(data: bytes, dest: str, max_bytes: int | None = None) -> None:
    """Extract `data` (pack's tar) into the existing empty folder `dest`; UnsafeTar names
    the first member refused (and may leave `dest` half-filled: the caller removes it).
    `max_bytes` (the row's code_size: what the publishing host measured of its copy): a tar
    whose files add up to more is refused from its headers, before anything is written (a
    few KB of gzip can expand to gigabytes on every host)."""
    dest = os.path.realpath(dest)
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UnsafeTar(f"not a tar: {exc}") from None
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise UnsafeTar(f"a damaged tar: {exc}") from None
        links: dict[str, tarfile.TarInfo] = {}
        plain: list[tarfile.TarInfo] = []
        seen: set[str] = set()
        for member in members:
            name = os.path.normpath(member.name)
            if name in seen:
                raise UnsafeTar(f"{ascii(member.name)}: two members of one name")
            seen.add(name)
            if member.islnk():
                raise UnsafeTar(f"{ascii(member.name)}: a hard link (a version has none)")
            _check_name(member, dest)
            if member.issym():
                if member.mode & (stat.S_ISUID | stat.S_ISGID):
                    member.mode &= ~(stat.S_ISUID | stat.S_ISGID)
                links[name] = member
                continue
            try:
                plain.append(tarfile.data_filter(member, dest))
            except tarfile.FilterError as exc:
                raise UnsafeTar(f"{ascii(member.name)}: {exc}") from None
        total = sum(member.size for member in plain if member.isreg())
        if max_bytes is not None and total > max_bytes:
            raise UnsafeTar(f"its files hold {total} bytes; the version's code_size is "
                            f"{max_bytes} bytes")
        for member in [*plain, *links.values()]:
            parts = os.path.normpath(member.name).split(os.sep)
            for depth in range(1, len(parts)):
                if os.sep.join(parts[:depth]) in links:
                    raise UnsafeTar(f"{ascii(member.name)}: under the link "
                                    f"{ascii(os.sep.join(parts[:depth]))}")
        try:
            # No link exists on disk yet: nothing below can be written through one.
            tar.extractall(dest, members=plain, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise UnsafeTar(f"extraction refused: {exc}") from None
        for member in plain:
            mtime_ns = member.pax_headers.get(MTIME_NS)
            if member.isreg() and mtime_ns and mtime_ns.isdigit():
                os.utime(os.path.join(dest, member.name), ns=(int(mtime_ns), int(mtime_ns)),
                         follow_symlinks=False)
        for name, member in sorted(links.items()):
            path = os.path.join(dest, name)
            parent = os.path.dirname(path)
            os.makedirs(parent, mode=0o755, exist_ok=True)
            if os.path.realpath(parent) != parent or os.path.lexists(path):
                raise UnsafeTar(f"{ascii(member.name)}: its place is taken or not a folder")
            os.symlink(member.linkname, path)
    os.chmod(dest, 0o755)


def _check_name(member: tarfile.TarInfo, dest: str) -> None:
    """A member's name must be relative, without `..`, and inside `dest` (tarfile's filter
    would strip a leading `/` and extract it: refused here instead, pack never writes one);
    a link's target may be anything (see the module docstring)."""
    name = member.name
    if not name or os.path.isabs(name) or name.startswith(("/", os.sep)) or \
            ".." in name.split("/") or "\0" in name or "\0" in member.linkname:
        raise UnsafeTar(f"{ascii(name)}: a name outside the folder")
    target = os.path.normpath(os.path.join(dest, name))
    if os.path.commonpath([target, dest]) != dest or target == dest:
        raise UnsafeTar(f"{ascii(name)}: a name outside the folder")
