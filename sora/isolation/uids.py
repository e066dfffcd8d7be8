"""The uid each sandboxed function runs as. Depends on nothing of Sora's, so the config's
validation (which refuses two functions with one uid) and the sandbox share one formula."""
from __future__ import annotations

import os
import zlib

UID_BASE, UID_RANGE = 61000, 4000


def sandbox_uid(function: str) -> int:
    """The uid (and gid) the function's sandbox runs as: its own unprivileged one, stable
    across restarts, when Sora runs as root; Sora's own otherwise. A hash of the name, so two
    names can meet on one uid (for 10 functions, ~1 % of hosts): `load_host_config` reports
    the second as broken rather than let two functions share a uid."""
    if os.geteuid() != 0:
        return os.geteuid()
    return UID_BASE + zlib.crc32(function.encode()) % UID_RANGE
