"""Zips an attacker would upload as a function's code (tests of issue 17's attacker's pass)."""
from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib


def make_zip(entries, compression=zipfile.ZIP_DEFLATED) -> bytes:
    """entries: (name or ZipInfo, data)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def unix_entry(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = mode << 16
    return info


def lying_count_zip(entries: int) -> bytes:
    """One real entry, then `entries` central directory records all pointing at it, under an
    end record that says the zip holds 1 entry (zipfile reads the central directory by its
    size, not by that count)."""
    name, data = b"a", b"x"
    crc = zlib.crc32(data)
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, 1, 1, len(name),
                        0) + name + data
    records = []
    for i in range(entries):
        entry = b"%x" % i
        records.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, crc, 1,
                                   1, len(entry), 0, 0, 0, 0, 0, 0) + entry)
    central = b"".join(records)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local), 0)
    return local + central + end


def lying_size_bomb(real_bytes: int) -> bytes:
    """One entry of `real_bytes` zeros whose headers say it holds 10 bytes."""
    blob = bytearray(make_zip([("bomb.txt", b"\0" * real_bytes)]))
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = blob.find(signature)
        blob[at + offset:at + offset + 4] = struct.pack("<L", 10)
    return bytes(blob)


SYMLINK = stat.S_IFLNK | 0o777
