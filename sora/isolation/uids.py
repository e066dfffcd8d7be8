"""The uid each sandboxed function runs as. Depends on nothing of Sora's, so the config (which
hands each function of a host a uid of its own) and the sandbox share one rule."""
from __future__ import annotations

import os
import zlib

UID_BASE, UID_RANGE = 61000, 4000


def hashed_uid(name: str) -> int:
    """A function's uid as its name alone gives it: stable across restarts, but two names can
    meet on one (among the 10 examples, two did)."""
    return UID_BASE + zlib.crc32(name.encode()) % UID_RANGE


def assign_uids(names: list[str]) -> dict[str, int]:
    """A uid of its own for each function of a host: its hashed uid, or where an earlier
    function (by name, so the order of `functionPaths` does not matter) took that, the next
    free one. Two functions with one uid could signal each other's processes and reach what
    the other's uid owns."""
    taken: dict[int, str] = {}
    uids = {}
    for name in sorted(names):
        uid = hashed_uid(name)
        while uid in taken:
            uid = UID_BASE + (uid - UID_BASE + 1) % UID_RANGE
        taken[uid] = name
        uids[name] = uid
    return uids


def sandbox_uid(function) -> int:
    """The uid (and gid) the sandbox of `function` (a FunctionConfig, or a bare name) runs as:
    its own unprivileged one when Sora runs as root (the host config's assignment, `sandboxUid`,
    or for a function read on its own, its hashed uid); Sora's own otherwise."""
    if os.geteuid() != 0:
        return os.geteuid()
    if isinstance(function, str):
        return hashed_uid(function)
    return function.sandboxUid or hashed_uid(function.name)
