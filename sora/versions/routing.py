"""Which version a call runs: `NAME` or `NAME:QUALIFIER` -> the data path's key, per call.

Used by the gateways (Invoke API, function URLs) and the dispatcher (async events name their
function as the caller did, `NAME:QUALIFIER`, and are resolved when they run). A version is
looked up in the store (one stat of its version.json); an alias in its function's
aliases.json, stat'ed per call and re-read when it changed (sora.versions.aliases), so a moved
alias takes effect for the next call, and a weighted alias picks per call.
"""
from __future__ import annotations

import random

from .aliases import AliasStore
from .qualifier import LATEST, BadQualifier, data_key, kind
from .store import VersionError, VersionStore


class Resolver:
    def __init__(self, state_dir: str, draw=random.random):
        self.store = VersionStore(state_dir)
        self.state_dir = state_dir
        self.draw = draw
        self._aliases: dict[str, AliasStore] = {}

    def aliases(self, name: str) -> AliasStore:
        store = self._aliases.get(name)
        if store is None:
            store = self._aliases[name] = AliasStore(self.state_dir, name, self.store)
        return store

    def resolve(self, name: str, qualifier: str | None) -> tuple[str, str]:
        """(data path key, version) of one call to `name` (already a valid function name)
        with `qualifier` (None: $LATEST). VersionError 400 for a malformed qualifier, 404 for
        a version or alias that does not exist."""
        if qualifier is None or qualifier == LATEST:
            return name, LATEST
        try:
            what = kind(qualifier)
        except BadQualifier as exc:
            raise VersionError(400, "InvalidParameterValueException",
                               f"Qualifier: {exc}") from None
        if what == "alias":
            version = self.aliases(name).resolve(qualifier, self.draw)
            if version is None:
                raise VersionError(404, "ResourceNotFoundException",
                                   f"Function not found: {name}:{qualifier}")
        else:
            version = qualifier
        if not self.store.exists(name, version):
            raise VersionError(404, "ResourceNotFoundException",
                               f"Function not found: {name}:{qualifier}")
        return data_key(name, version), version


def split_name(raw: str) -> tuple[str, str | None]:
    """`NAME` or `NAME:QUALIFIER` as a path gives it -> (name, qualifier or None)."""
    name, sep, qualifier = raw.partition(":")
    return name, (qualifier if sep else None)
