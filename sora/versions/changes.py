"""When a process's cached versions and aliases of a function must be read again.

The store is the truth (rows in sora.db or PostgreSQL); the call path keeps what it read per
process and asks the store again only when:
- this host changed the function (a publish, a prune, an alias moved, a deletion): every such
  change replaces the function's marker file `<stateDir>/versions/.changed/<NAME>` (a new
  inode; beside the function's folder, so it outlives the function's deletion), and readers
  stat it per call, so a change takes effect for the next call on the
  host that made it, in every process of that host (gateways, the dispatcher);
- or a second (`RECHECK_S`) passed since the last check: then the reader asks the store's
  cheap revision of what it caches, and re-reads only if that differs. So a change made on
  another host sharing the database takes effect within a second.
While the store cannot be read (a PostgreSQL restart), a reader that has read once keeps
serving what it read and asks again every OUTAGE_RECHECK_S: calls by alias and version go on,
and the store's outage costs one short wait per cache that often.
"""
from __future__ import annotations

import os
import time

MARKERS = ".changed"
RECHECK_S = 1.0
# While the store cannot be read, what was read last keeps serving, and the store is asked
# again after this (a call never waits on a down store more than once per this, per cache).
OUTAGE_RECHECK_S = 5.0


def marker_path(function_dir: str) -> str:
    root, name = os.path.split(function_dir)
    return os.path.join(root, MARKERS, name)


def touch(function_dir: str) -> None:
    """Tell this host's readers the function changed (a fresh file replaces the marker)."""
    path = marker_path(function_dir)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    temporary = f"{path}.{os.getpid()}.{time.monotonic_ns()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.close(fd)
    os.replace(temporary, path)


def stamp(function_dir: str) -> tuple | None:
    try:
        st = os.stat(marker_path(function_dir))
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_ino, st.st_mtime_ns)


class Freshness:
    """One cached read: `stale()` says whether to ask the store (the marker moved, or the
    recheck interval passed); `checked(revision)` after asking says whether the store's
    revision differs from the cached one (then re-read)."""

    def __init__(self, function_dir: str, clock=time.monotonic):
        self.function_dir = function_dir
        self.clock = clock
        self._stamp: tuple | None = None
        self._checked = float("-inf")
        self.revision = None
        self.loaded = False
        self._failed_until = float("-inf")

    def stale(self) -> str | None:
        """None: the cache holds; "local": this host changed it (re-read); "recheck": ask
        the store's revision."""
        if not self.loaded:
            return "local"
        current = stamp(self.function_dir)
        if current != self._stamp:
            return "local"
        if self.clock() - self._checked >= RECHECK_S:
            return "recheck"
        return None

    def mark(self, revision) -> bool:
        """After a recheck: True if the store's `revision` differs from what is cached."""
        self._checked = self.clock()
        return revision != self.revision

    def loaded_at(self, revision) -> None:
        """After a full read (take the marker's stamp before reading: see `begin`)."""
        self.revision = revision
        self._checked = self.clock()
        self.loaded = True

    def begin(self) -> None:
        """Before a full read: the marker as it is now (a change during the read moves it
        again, so the next call reads once more)."""
        self._stamp = stamp(self.function_dir)

    def postpone(self) -> None:
        """The store could not be read: keep what is cached, ask again in OUTAGE_RECHECK_S
        (even if the marker moved meanwhile)."""
        self._checked = self.clock() + OUTAGE_RECHECK_S - RECHECK_S
        self._stamp = stamp(self.function_dir)

    def failed(self) -> None:
        """A read failed with nothing cached to serve: `check_up` refuses at once, without
        asking the store, for RECHECK_S (on the call path a down store otherwise cost every
        call its wait for a connection)."""
        self._failed_until = self.clock() + RECHECK_S

    def check_up(self) -> None:
        """Raise StoreUnavailable if a read failed with nothing cached less than RECHECK_S
        ago."""
        if not self.loaded and self.clock() < self._failed_until:
            from ..store.backend import StoreUnavailable
            raise StoreUnavailable("the store could not be read a moment ago")

    def invalidate(self) -> None:
        self.loaded = False
