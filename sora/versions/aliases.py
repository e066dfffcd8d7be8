"""Aliases of a function: rows of the store (`function_aliases`: one per alias, its JSON
document and a revision).

An alias names a version and, optionally, one other version with a weight
(`RoutingConfig.AdditionalVersionWeights`, 0.0 to 1.0, as Lambda): a call by the alias runs
the other version with that probability, picked at random per call (`pick`). Every change is
one store transaction under the function's lock (sora.versions.store.lock_function: on
PostgreSQL an advisory lock, so hosts sharing the database change a function's aliases and
versions one at a time; the version an alias names is checked in the same transaction), so
readers see the old aliases or the new ones, never half. Each change gives the row a new
random revision; a function's aliases' revision is `(COUNT(*), SUM(revision))`, one indexed
read.

Readers (a gateway process, the dispatcher) keep the function's aliases per process and read
them again when this host changed them (the marker file, stat'ed per call: the next call on
this host sees a move) or, at most once a second, when the store's revision differs (a move on
another host takes effect within a second) — sora.versions.changes. Each alias keeps the
version it named before its last move (`PreviousVersion`), which is what `sora rollback` goes
back to.

Records are in Lambda's shape, so the management API returns them as they are (with the
AliasArn added by the caller, which knows the region): Name, FunctionVersion, Description,
RoutingConfig, RevisionId.
"""
from __future__ import annotations

import json
import logging
import random
import uuid
from contextlib import contextmanager

from ..store import backend
from . import changes
from .qualifier import BadQualifier, LATEST, check_alias_name, is_version
from .store import VersionError, VersionStore, function_lock, lock_function

log = logging.getLogger("sora.versions")

MAX_ALIASES = 100   # per function (Lambda has no small limit; this bounds a read)


def _bad(message: str) -> VersionError:
    return VersionError(400, "InvalidParameterValueException", message)


def check_weights(weights, primary: str) -> dict[str, float]:
    """`AdditionalVersionWeights`: at most one other published version, weight 0.0..1.0."""
    if weights is None:
        return {}
    if not isinstance(weights, dict) or len(weights) > 1:
        raise _bad("RoutingConfig.AdditionalVersionWeights: expected at most one version "
                   f"with its weight, got {str(weights)[:200]}")
    out = {}
    for version, weight in weights.items():
        if not isinstance(version, str) or not is_version(version):
            raise _bad("RoutingConfig.AdditionalVersionWeights: expected a published version "
                       f"number (not $LATEST or an alias), got {ascii(str(version)[:80])}")
        if version == primary:
            raise _bad(f"RoutingConfig.AdditionalVersionWeights: expected a version other "
                       f"than the alias's FunctionVersion {primary}, got {version}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or \
                not 0.0 <= weight <= 1.0:
            raise _bad(f"RoutingConfig.AdditionalVersionWeights: expected a weight from 0.0 "
                       f"to 1.0 for version {version}, got {str(weight)[:40]}")
        out[version] = float(weight)
    return out


def pick(alias: dict, draw=random.random) -> str:
    """The version one call by `alias` runs: its additional version with that version's
    weight, else its FunctionVersion."""
    for version, weight in alias.get("RoutingConfig", {}).get(
            "AdditionalVersionWeights", {}).items():
        if draw() < weight:
            return version
    return alias["FunctionVersion"]


class AliasStore:
    def __init__(self, state_dir: str, name: str, versions: VersionStore | None = None):
        self.name = name
        self.versions = versions or VersionStore(state_dir)
        self.folder = self.versions.function_dir(name)
        self._fresh = changes.Freshness(self.folder)
        self._aliases: dict[str, dict] = {}

    @property
    def conn(self):
        return self.versions.conn

    # --- reading (cached per process; see the module docstring) -----------------------------
    def current(self) -> dict[str, dict]:
        """Every alias by name, read again if this host changed them or, at most once a
        second, if the store's revision says another host did. While the store cannot be
        read, what was read last (if anything was) serves (sora.versions.changes)."""
        why = self._fresh.stale()
        if why is None:
            return self._aliases
        self._fresh.check_up()
        try:
            if why == "recheck" and not self._fresh.mark(self._revision()):
                return self._aliases
            self._fresh.begin()
            aliases, revision = self._read()
        except backend.ERRORS as exc:
            if not self._fresh.loaded:
                self._fresh.failed()
                raise
            log.warning("aliases of %s: the store cannot be read (%s); the aliases read "
                        "before keep serving", self.name, exc)
            self._fresh.postpone()
            return self._aliases
        self._aliases = aliases
        self._fresh.loaded_at(revision)
        return self._aliases

    def _revision(self) -> tuple:
        row = self.conn.execute("SELECT COUNT(*), COALESCE(SUM(revision), 0) FROM "
                                "function_aliases WHERE function = ?", (self.name,)).fetchone()
        return (int(row[0]), int(row[1]))

    def _read(self) -> tuple[dict[str, dict], tuple]:
        """The aliases and their revision, from one statement (so they agree)."""
        out, count, total = {}, 0, 0
        for row in self.conn.execute(
                "SELECT name, document, revision FROM function_aliases WHERE function = ?",
                (self.name,)):
            count, total = count + 1, total + int(row[2])
            try:
                out[row[0]] = json.loads(row[1])
            except ValueError:
                continue
        return out, (count, total)

    def get(self, alias: str) -> dict | None:
        return self.current().get(alias)

    def list(self) -> list[dict]:
        current = self.current()
        return [current[name] for name in sorted(current)]

    def resolve(self, alias: str, draw=random.random) -> str | None:
        """The version a call by `alias` runs now (None: no such alias)."""
        record = self.get(alias)
        return pick(record, draw) if record is not None else None

    def protected(self) -> set[str]:
        """The versions some alias names (never pruned)."""
        out = set()
        for record in self.current().values():
            out.add(record["FunctionVersion"])
            out.update(record.get("RoutingConfig", {}).get("AdditionalVersionWeights", {}))
        return out

    # --- changing (one transaction under the function's lock) -------------------------------
    def create(self, alias: str, version: str, description: str = "",
               weights: dict | None = None) -> dict:
        self._check_name(alias)
        with self._changing():
            if self._row(alias) is not None:
                raise VersionError(409, "ResourceConflictException",
                                   f"Alias already exists: {self.name}:{alias}")
            count = self.conn.execute("SELECT COUNT(*) FROM function_aliases WHERE "
                                      "function = ?", (self.name,)).fetchone()[0]
            if count >= MAX_ALIASES:
                raise VersionError(400, "InvalidParameterValueException",
                                   f"expected at most {MAX_ALIASES} aliases per function")
            self._check_version(version)
            weights = check_weights(weights, version)
            self._check_versions(weights)
            record = self._record(alias, version, description, weights, None)
            self.conn.execute("INSERT INTO function_aliases (function, name, document, "
                              "revision) VALUES (?, ?, ?, ?)",
                              (self.name, alias, json.dumps(record), _revision()))
        return record

    def update(self, alias: str, version: str | None = None, description: str | None = None,
               weights: dict | None = None, revision_id: str | None = None) -> dict:
        """Move or change an alias; `weights` None keeps them, {} removes them. With
        `revision_id`, only if the alias is still at that revision (else 412 as Lambda's
        PreconditionFailedException)."""
        with self._changing():
            old = self._row(alias)
            if old is None:
                raise VersionError(404, "ResourceNotFoundException",
                                   f"Alias not found: {self.name}:{alias}")
            if revision_id is not None and revision_id != old["RevisionId"]:
                raise VersionError(412, "PreconditionFailedException", (
                    f"The RevisionId provided does not match the latest RevisionId for alias "
                    f"{self.name}:{alias}"))
            new_version = old["FunctionVersion"] if version is None else version
            self._check_version(new_version)
            if weights is None:
                weights = old.get("RoutingConfig", {}).get("AdditionalVersionWeights", {})
                weights = {v: w for v, w in weights.items() if v != new_version}
            weights = check_weights(weights, new_version)
            self._check_versions(weights)
            previous = old["FunctionVersion"] if new_version != old["FunctionVersion"] \
                else old.get("PreviousVersion")
            record = self._record(
                alias, new_version, old.get("Description", "") if description is None
                else description, weights, previous)
            self.conn.execute("UPDATE function_aliases SET document = ?, revision = ? "
                              "WHERE function = ? AND name = ?",
                              (json.dumps(record), _revision(), self.name, alias))
        return record

    def delete(self, alias: str) -> None:
        with self._changing():
            gone = self.conn.execute("DELETE FROM function_aliases WHERE function = ? AND "
                                     "name = ?", (self.name, alias)).rowcount
            if not gone:
                raise VersionError(404, "ResourceNotFoundException",
                                   f"Alias not found: {self.name}:{alias}")

    @contextmanager
    def _changing(self):
        """One change: this host's lock (the function's flock, as publishing and pruning
        take it), the store's transaction and function lock; then this host's readers are
        told (the marker) and this reader's cache is dropped."""
        with function_lock(self.folder):
            try:
                with self.conn.transaction():
                    lock_function(self.conn, self.name)
                    yield
                changes.touch(self.folder)
            finally:
                self._fresh.invalidate()

    def _row(self, alias: str) -> dict | None:
        row = self.conn.execute("SELECT document FROM function_aliases WHERE function = ? "
                                "AND name = ?", (self.name, alias)).fetchone()
        return json.loads(row[0]) if row else None

    def _check_name(self, alias: str) -> None:
        try:
            check_alias_name(alias)
        except BadQualifier as exc:
            raise _bad(f"Name: {exc}") from None

    def _check_version(self, version: str) -> None:
        if not isinstance(version, str) or not (version == LATEST or is_version(version)):
            raise _bad(f"FunctionVersion: expected $LATEST or a published version number, "
                       f"got {ascii(str(version)[:80])}")
        if not self.versions.exists(self.name, version):
            raise VersionError(404, "ResourceNotFoundException",
                               f"Function not found: {self.name}:{version}")

    def _check_versions(self, weights: dict[str, float]) -> None:
        for version in weights:
            self._check_version(version)

    def _record(self, alias: str, version: str, description: str, weights: dict[str, float],
                previous: str | None) -> dict:
        record = {"Name": alias, "FunctionVersion": version, "Description": description or "",
                  "RevisionId": str(uuid.uuid4())}
        if weights:
            record["RoutingConfig"] = {"AdditionalVersionWeights": weights}
        if previous is not None:
            record["PreviousVersion"] = previous
        return record


def _revision() -> int:
    """A changed row's revision: random, so the sum over a function's rows changes with any
    change (a counter could come back to an old sum after a deletion)."""
    return random.randint(1, 2**31 - 1)
