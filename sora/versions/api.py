"""The Python API behind the Lambda management API's version and alias operations
(PublishVersion, ListVersionsByFunction, Create/Get/Update/Delete/ListAliases).

Every answer is a dict with Lambda's field names (FunctionConfiguration for a version,
AliasConfiguration for an alias), ready to be returned as JSON; every refusal is a
VersionError with Lambda's error type and HTTP status (`.status`, `.error_type`, `str()`).
Aliases and listings are read and written here, in the caller's process (a gateway's), in
the store (sora.versions.store: SQLite or the PostgreSQL database hosts share; an error of
the store is a 503 ServiceException whose message shows no password); publishing copies a
function's folder, which only the supervisor does (confined, without blocking its loop), so
`publish_version` asks it over the admin channel (op `publish`) and waits for the answer.
"""
from __future__ import annotations

import functools
import os
import uuid

from ..config import FunctionConfig, StoreConfig
from ..config_snapshot import function_from_entry
from ..runtimes.base import ACCOUNT
from .aliases import AliasStore
from ..store import backend
from .qualifier import LATEST, BadQualifier, check_alias_name
from .routing import store_unavailable
from .store import VersionError, VersionStore

REGION = "us-east-1"            # as the runtimes' ARNs (sora.runtimes.base.DEFAULT_REGION)
# The Lambda runtime name shown for each language (what CreateFunction maps back from).
RUNTIME_NAMES = {"nodejs": "nodejs20.x", "python": "python3.12", "provided": "provided.al2023"}
PUBLISH_TIMEOUT = 600.0


def function_arn(name: str, qualifier: str | None = None, region: str = REGION,
                 account: str = ACCOUNT) -> str:
    arn = f"arn:aws:lambda:{region}:{account}:function:{name}"
    return f"{arn}:{qualifier}" if qualifier else arn


def configuration(fn: FunctionConfig, record: dict | None = None, region: str = REGION,
                  account: str = ACCOUNT) -> dict:
    """Lambda's FunctionConfiguration of `fn` ($LATEST when `record` is None, else the
    published version whose version.json `record` is)."""
    version = record["Version"] if record else LATEST
    out = {
        "FunctionName": fn.name,
        "FunctionArn": function_arn(fn.name, version, region, account),
        "Runtime": RUNTIME_NAMES.get(fn.language, fn.language),
        "Role": f"arn:aws:iam::{account}:role/sora",
        "Handler": f"{os.path.splitext(fn.entrypoint)[0]}.{fn.handler}",
        "Description": record.get("Description", "") if record else "",
        "Timeout": int(fn.timeout) if float(fn.timeout).is_integer() else fn.timeout,
        "MemorySize": fn.memory,
        "Version": version,
        "Environment": {"Variables": dict(fn.env)},
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": ["x86_64"],
    }
    if record:
        out.update(CodeSha256=record["CodeSha256"], CodeSize=record.get("CodeSize", 0),
                   LastModified=record["LastModified"],
                   RevisionId=str(uuid.uuid5(uuid.NAMESPACE_URL, out["FunctionArn"] +
                                             record["CodeSha256"])))
    return out


def _store_errors(method):
    """A store error in `method` as a VersionError 503 (the management API's answer)."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except backend.ERRORS as exc:
            raise store_unavailable(exc) from None
    return wrapper


class VersionsApi:
    def __init__(self, state_dir: str, region: str = REGION, account: str = ACCOUNT,
                 store: StoreConfig | None = None):
        self.state_dir = state_dir
        self.store = VersionStore(state_dir, store)
        self.region, self.account = region, account

    # --- versions ---------------------------------------------------------------------------
    async def publish_version(self, name: str, description: str = "",
                              code_sha256: str | None = None,
                              timeout: float = PUBLISH_TIMEOUT) -> dict:
        """PublishVersion: the new version's FunctionConfiguration, or the newest version's
        when nothing changed since it. `code_sha256`: only if $LATEST's code has that hash
        (Lambda's CodeSha256 precondition; PreconditionFailedException otherwise)."""
        from ..control import admin   # the admin channel (sora.control.admin)
        answer = await admin.request_async(self.state_dir, "publish", {
            "function": name, "description": description, "codeSha256": code_sha256},
            timeout)
        return self._answer(answer)

    def publish_version_blocking(self, name: str, description: str = "",
                                 timeout: float = PUBLISH_TIMEOUT) -> dict:
        """The same, blocking (the CLI)."""
        from ..control import admin
        return self._answer(admin.request(self.state_dir, "publish", {
            "function": name, "description": description}, timeout))

    def _answer(self, answer: dict) -> dict:
        if "error" in answer:
            error = answer["error"]
            status = {"ResourceNotFoundException": 404, "ResourceConflictException": 409,
                      "PreconditionFailedException": 412, "ServiceException": 500,
                      "Sora.StoreError": 500, "Sora.StoreUnavailable": 503,
                      }.get(error.get("type"), 400)
            raise VersionError(status, error.get("type", "ServiceException"),
                               error.get("message", ""))
        if "FunctionName" in answer and "Version" in answer:
            # The supervisor's answer names the default region; the caller's ARNs name the
            # region it signed for, as every other answer of the management API does.
            answer["FunctionArn"] = function_arn(answer["FunctionName"], answer["Version"],
                                                 self.region, self.account)
        return answer

    @_store_errors
    def list_versions(self, latest: FunctionConfig) -> list[dict]:
        """ListVersionsByFunction's `Versions`: $LATEST first, then each published version."""
        out = [configuration(latest, None, self.region, self.account)]
        for record in self.store.records(latest.name):
            fn = function_from_entry(record["config"])
            out.append(configuration(fn, record, self.region, self.account))
        return out

    @_store_errors
    def get_version(self, name: str, version: str) -> dict:
        record = self.store.get(name, version)
        if record is None:
            raise VersionError(404, "ResourceNotFoundException",
                               f"Function not found: {function_arn(name, version)}")
        return configuration(function_from_entry(record["config"]), record, self.region,
                             self.account)

    @_store_errors
    def delete_function(self, name: str) -> None:
        """DeleteFunction (of the whole function): its versions and aliases go with it."""
        self.store.remove_function(name)

    # --- aliases ----------------------------------------------------------------------------
    def _aliases(self, name: str) -> AliasStore:
        return AliasStore(self.state_dir, name, self.store)

    def _alias_json(self, name: str, record: dict) -> dict:
        out = {"AliasArn": function_arn(name, record["Name"], self.region, self.account),
               "Name": record["Name"], "FunctionVersion": record["FunctionVersion"],
               "Description": record.get("Description", ""),
               "RevisionId": record["RevisionId"]}
        if record.get("RoutingConfig"):
            out["RoutingConfig"] = record["RoutingConfig"]
        if record.get("PreviousVersion"):
            # Sora's, beside Lambda's fields (the SDKs' parsers leave it out): the version
            # the alias named before its last move, which `sora rollback` goes back to.
            out["PreviousVersion"] = record["PreviousVersion"]
        return out

    @_store_errors
    def create_alias(self, name: str, alias: str, function_version: str,
                     description: str = "", routing_config: dict | None = None) -> dict:
        return self._alias_json(name, self._aliases(name).create(
            alias, function_version, description, _weights(routing_config)))

    @_store_errors
    def get_alias(self, name: str, alias: str) -> dict:
        _check_alias(alias)
        record = self._aliases(name).get(alias)
        if record is None:
            raise VersionError(404, "ResourceNotFoundException",
                               f"Alias not found: {function_arn(name, alias)}")
        return self._alias_json(name, record)

    @_store_errors
    def update_alias(self, name: str, alias: str, function_version: str | None = None,
                     description: str | None = None, routing_config: dict | None = None,
                     revision_id: str | None = None) -> dict:
        """`routing_config` None keeps the weights; {} or {"AdditionalVersionWeights": {}}
        removes them."""
        _check_alias(alias)
        weights = None if routing_config is None else _weights(routing_config)
        return self._alias_json(name, self._aliases(name).update(
            alias, function_version, description, weights, revision_id))

    @_store_errors
    def delete_alias(self, name: str, alias: str) -> None:
        _check_alias(alias)
        self._aliases(name).delete(alias)

    @_store_errors
    def list_aliases(self, name: str, function_version: str | None = None) -> list[dict]:
        return [self._alias_json(name, r) for r in self._aliases(name).list()
                if function_version is None or r["FunctionVersion"] == function_version]

    @_store_errors
    def previous_version(self, name: str, alias: str) -> str | None:
        """The version the alias named before its last move (`sora rollback`)."""
        record = self._aliases(name).get(alias)
        return record.get("PreviousVersion") if record else None


def _check_alias(alias: str) -> None:
    try:
        check_alias_name(alias)
    except BadQualifier as exc:
        raise VersionError(400, "InvalidParameterValueException", f"Name: {exc}") from None


def _weights(routing_config: dict | None) -> dict | None:
    if routing_config is None:
        return None
    if not isinstance(routing_config, dict):
        raise VersionError(400, "InvalidParameterValueException",
                           "RoutingConfig: expected {\"AdditionalVersionWeights\": {...}}")
    return routing_config.get("AdditionalVersionWeights") or {}
