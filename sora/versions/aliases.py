"""Aliases of a function: `<stateDir>/versions/<NAME>/aliases.json`.

An alias names a version and, optionally, one other version with a weight
(`RoutingConfig.AdditionalVersionWeights`, 0.0 to 1.0, as Lambda): a call by the alias runs
the other version with that probability, picked at random per call (`pick`). Every change
rewrites the whole file and replaces it at once (os.replace), under the function's lock
(store.function_lock, shared with publishing and pruning), so readers see the old aliases or
the new ones, never half; each reader (a gateway process, the dispatcher) stats the file on
every call by alias and re-reads it when it changed, so a moved alias takes effect for the
next call. Each alias keeps the version it named before its last move (`PreviousVersion`),
which is what `sora rollback` goes back to.

Records are in Lambda's shape, so the management API returns them as they are (with the
AliasArn added by the caller, which knows the region): Name, FunctionVersion, Description,
RoutingConfig, RevisionId.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
import uuid

from .qualifier import BadQualifier, LATEST, check_alias_name, is_version
from .store import VersionError, VersionStore, function_lock

ALIASES_FILE = "aliases.json"
MAX_ALIASES = 100   # per function (Lambda has no small limit; this bounds the file)


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
        self.path = os.path.join(self.folder, ALIASES_FILE)
        self._seen: tuple | None = None   # the file's (inode, size, mtime) when last read
        self._aliases: dict[str, dict] = {}

    # --- reading (per call: one stat) -------------------------------------------------------
    def current(self) -> dict[str, dict]:
        """Every alias by name, re-read if the file changed since the last call."""
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            self._seen, self._aliases = None, {}
            return self._aliases
        seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        if seen != self._seen:
            self._aliases = self._read()
            self._seen = seen
        return self._aliases

    def _read(self) -> dict[str, dict]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
            return data.get("aliases", {}) if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def get(self, alias: str) -> dict | None:
        return self.current().get(alias)

    def list(self) -> list[dict]:
        return [self.current()[name] for name in sorted(self.current())]

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

    # --- changing (under the function's lock, replaced at once) ------------------------------
    def create(self, alias: str, version: str, description: str = "",
               weights: dict | None = None) -> dict:
        with function_lock(self.folder):
            aliases = self._read()
            self._check_name(alias)
            if alias in aliases:
                raise VersionError(409, "ResourceConflictException",
                                   f"Alias already exists: {self.name}:{alias}")
            if len(aliases) >= MAX_ALIASES:
                raise VersionError(400, "InvalidParameterValueException",
                                   f"expected at most {MAX_ALIASES} aliases per function")
            self._check_version(version)
            weights = check_weights(weights, version)
            self._check_versions(weights)
            aliases[alias] = self._record(alias, version, description, weights, None)
            self._write(aliases)
            return aliases[alias]

    def update(self, alias: str, version: str | None = None, description: str | None = None,
               weights: dict | None = None, revision_id: str | None = None) -> dict:
        """Move or change an alias; `weights` None keeps them, {} removes them. With
        `revision_id`, only if the alias is still at that revision (else 412 as Lambda's
        PreconditionFailedException)."""
        with function_lock(self.folder):
            aliases = self._read()
            old = aliases.get(alias)
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
            aliases[alias] = self._record(
                alias, new_version, old.get("Description", "") if description is None
                else description, weights, previous)
            self._write(aliases)
            return aliases[alias]

    def delete(self, alias: str) -> None:
        with function_lock(self.folder):
            aliases = self._read()
            if aliases.pop(alias, None) is None:
                raise VersionError(404, "ResourceNotFoundException",
                                   f"Alias not found: {self.name}:{alias}")
            self._write(aliases)

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

    def _write(self, aliases: dict[str, dict]) -> None:
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{ALIASES_FILE}.", dir=self.folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"aliases": aliases}, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass
            raise
        self._seen = None   # read again on the next call
