"""Which version a call runs: `NAME` or `NAME:QUALIFIER` -> the data path's key, per call.

Used by the gateways (Invoke API, function URLs) and the dispatcher (async events name their
function as the caller did, `NAME:QUALIFIER`, and are resolved when they run). Versions and
aliases are rows of the store (sora.versions.store, .aliases); a Resolver keeps what it read
per process and function (sora.versions.changes): a function's version numbers and its
aliases are read again when this host changed them (the next call sees it) or, at most once
a second, when the store says they changed (another host's change). A version number the
cache does not hold is asked of the store at once (one indexed read), so a version another
host just published is found by its first call, unless another missing number was asked
within the second before (at most one such read per function per second: callers naming
numbers that do not exist cannot make every call a store query); the recheck finds it within
that second. While the store is down, a cache that has read nothing answers 503 at once for
a second after a failed read instead of waiting for a connection per call. A weighted alias
picks per call.
"""
from __future__ import annotations

import logging
import random
import time

from ..config import StoreConfig
from ..store import backend
from . import changes
from .aliases import AliasStore
from .qualifier import LATEST, BadQualifier, data_key, kind
from .store import VersionError, VersionStore


class _Numbers:
    """One function's published version numbers, cached (see the module docstring)."""

    def __init__(self, store: VersionStore, name: str, clock=time.monotonic):
        self.store, self.name, self.clock = store, name, clock
        self.fresh = changes.Freshness(store.function_dir(name), clock)
        self.numbers: frozenset[int] = frozenset()
        self.missed_at = float("-inf")   # when a number the cache lacked was last asked

    def has(self, version: str) -> bool:
        if self.fresh.stale() is not None:
            self.fresh.check_up()
            try:
                self.fresh.begin()
                self.numbers = frozenset(self.store.numbers(self.name))
                self.fresh.loaded_at(None)
            except backend.ERRORS:
                if not self.fresh.loaded:
                    self.fresh.failed()
                    raise
                self.fresh.postpone()   # the numbers read before serve (changes.py)
        if int(version) in self.numbers:
            return True
        # A number the cache lacks: maybe one another host just published, so the store is
        # asked, but at most once per RECHECK_S per function (a caller making numbers up,
        # on a function URL anyone may call, cost a store query per call); in between, the
        # numbers are read again by the recheck above within that second anyway.
        now = self.clock()
        if now - self.missed_at < changes.RECHECK_S:
            return False
        self.missed_at = now
        if not self.store.exists(self.name, version):
            return False
        self.numbers = self.numbers | {int(version)}
        return True


log = logging.getLogger("sora.versions")

# The call path's longest wait for a store connection: a down store costs a call this, at
# most once per OUTAGE_RECHECK_S per cache (sora.versions.changes), not the store's 5 s.
CALL_PATH_WAIT_MS = 1000


class Resolver:
    def __init__(self, state_dir: str, draw=random.random, store: StoreConfig | None = None):
        self.store = VersionStore(state_dir, store, busy_ms=CALL_PATH_WAIT_MS)
        self.state_dir = state_dir
        self.draw = draw
        self._aliases: dict[str, AliasStore] = {}
        self._numbers: dict[str, _Numbers] = {}

    def aliases(self, name: str) -> AliasStore:
        store = self._aliases.get(name)
        if store is None:
            store = self._aliases[name] = AliasStore(self.state_dir, name, self.store)
        return store

    def exists(self, name: str, version: str) -> bool:
        if version == LATEST:
            return True
        numbers = self._numbers.get(name)
        if numbers is None:
            numbers = self._numbers[name] = _Numbers(self.store, name)
        return numbers.has(version)

    def resolve(self, name: str, qualifier: str | None) -> tuple[str, str]:
        """(data path key, version) of one call to `name` (already a valid function name)
        with `qualifier` (None: $LATEST). VersionError 400 for a malformed qualifier, 404 for
        a version or alias that does not exist, 503 when the store cannot be read."""
        if qualifier is None or qualifier == LATEST:
            return name, LATEST
        try:
            what = kind(qualifier)
        except BadQualifier as exc:
            raise VersionError(400, "InvalidParameterValueException",
                               f"Qualifier: {exc}") from None
        try:
            if what == "alias":
                version = self.aliases(name).resolve(qualifier, self.draw)
                if version is None:
                    raise VersionError(404, "ResourceNotFoundException",
                                       f"Function not found: {name}:{qualifier}")
            else:
                version = qualifier
            if not self.exists(name, version):
                raise VersionError(404, "ResourceNotFoundException",
                                   f"Function not found: {name}:{qualifier}")
        except backend.ERRORS as exc:
            raise store_unavailable(exc) from None
        return data_key(name, version), version


STORE_ERROR_LOG_INTERVAL = 10.0
_last_logged = -STORE_ERROR_LOG_INTERVAL
_unlogged = 0


def store_unavailable(exc: Exception) -> VersionError:
    """A store error as the caller's answer, as the gateway answers its own (sora.gateway.app):
    503 Sora.StoreUnavailable when it cannot be reached, else 500 Sora.StoreError; the
    details (the store's URL, its password as ***) go to this host's log only."""
    # While the store is down every call by version or alias fails here: one line per
    # STORE_ERROR_LOG_INTERVAL, with how many calls it stands for, not one per call.
    global _last_logged, _unlogged
    now = time.monotonic()
    if now - _last_logged >= STORE_ERROR_LOG_INTERVAL:
        more = f" ({_unlogged} more since the last line)" if _unlogged else ""
        log.error("versions: the store failed: %s%s", exc, more)
        _last_logged, _unlogged = now, 0
    else:
        _unlogged += 1
    if isinstance(exc, backend.StoreUnavailable):
        return VersionError(503, "Sora.StoreUnavailable",
                            "The store did not answer in time; try again")
    return VersionError(500, "Sora.StoreError", "The store failed")


def split_name(raw: str) -> tuple[str, str | None]:
    """`NAME` or `NAME:QUALIFIER` as a path gives it -> (name, qualifier or None)."""
    name, sep, qualifier = raw.partition(":")
    return name, (qualifier if sep else None)
