"""`sora deploy DIR`: a function folder onto a host through its Lambda management API.

The folder's sora.yaml gives the function's name and the settings Lambda's API carries
(Runtime, Handler, Timeout, MemorySize, Environment); its files go as a zip
(sora.cli.function_zip). A function the host does not have is created (CreateFunction);
one it has is updated: its code when the zip's SHA-256 differs from the host's CodeSha256
(the zip is deterministic, so an unchanged folder uploads nothing), its configuration when a
setting differs. `--publish` then publishes a version (PublishVersion, which returns the last
version when nothing changed since it, as Lambda does).
"""
from __future__ import annotations

import base64
import hashlib
import math
import os
import re
import sys
import time
from dataclasses import dataclass

import yaml

from ..config import (FUNCTION_SETTINGS, LAMBDA_EXTENSIONS, ConfigError, FunctionConfig, HttpTrigger,
                      load_function_config, load_host_config)
from .function_zip import FunctionZip, Limits, ZipRefused, build_zip
from .host import CliError

# CreateFunction requires an execution role; Sora has none, and ignores it.
PLACEHOLDER_ROLE = "arn:aws:iam::000000000000:role/sora"
# Lambda's bounds on what its API takes (botocore's model checks them before sending).
LAMBDA_MIN_MEMORY = 128
LAMBDA_MAX_TIMEOUT = 900
# The runtime sent when sora.yaml's `runtime` does not name a version: Node.js 20, the
# Python this CLI runs on (by default the host runs functions on the Python Sora runs on).
DEFAULT_RUNTIMES = {"nodejs": "nodejs20.x",
                    "python": f"python{sys.version_info.major}.{sys.version_info.minor}",
                    "provided": "provided.al2023"}
NODE_RUNTIME_RE = re.compile(r"^node(?:js)?-?(\d+)$")
NODE_VERSIONS = ("18", "20", "22")       # the nodejsN.x runtimes the management API takes
PYTHON_RUNTIME_RE = re.compile(r"^python(3\.\d+)$")
# The sora.yaml settings a CreateFunction / UpdateFunctionConfiguration carries; the others
# (setup, secrets, scaling, ...) take the host's defaults on a deployed function.
CARRIED_SETTINGS = frozenset({"name", "language", "entrypoint", "handler", "runtime",
                              "timeout", "memory", "env"})
UPDATE_POLL_SECONDS = 0.2
MB = 1 << 20
# What LastUpdateStatus / State say while the host is still switching to what was sent.
IN_PROGRESS = ("InProgress", "Pending")


def lambda_runtime(fn: FunctionConfig) -> str:
    """Lambda's Runtime for the function: the version its `runtime` names if it names one
    Lambda has (`node22`, `python3.12`), else the default for its language."""
    command = os.path.basename(fn.runtime or "")
    node = NODE_RUNTIME_RE.match(command)
    if fn.language == "nodejs" and node and node.group(1) in NODE_VERSIONS:
        return f"nodejs{node.group(1)}.x"
    python = PYTHON_RUNTIME_RE.match(command)
    if fn.language == "python" and python:
        return f"python{python.group(1)}"
    return DEFAULT_RUNTIMES[fn.language]


def lambda_handler_string(fn: FunctionConfig) -> str:
    """Lambda's Handler: the entrypoint's path without its extension, a dot, the export
    (`index.handler`, `src/app.handler`); for provided, the handler as it is (`_HANDLER`).
    A handler string names no extension, so the host finds the file as Lambda does (.js,
    then .mjs, then .cjs): an entrypoint another file would shadow is refused."""
    if fn.language == "provided":
        return fn.handler
    module = os.path.splitext(fn.entrypoint)[0]
    found = next((module + ext for ext in LAMBDA_EXTENSIONS[fn.language]
                  if os.path.isfile(os.path.join(fn.directory, module + ext))), None)
    if found not in (None, fn.entrypoint):
        raise CliError(f"{fn.source}: entrypoint {fn.entrypoint!r}: the host would load "
                       f"{found!r} for Lambda's handler {module}.{fn.handler} ({found} comes "
                       f"first, as on Lambda); rename one of them", 2)
    return f"{module}.{fn.handler}"


def lambda_settings(fn: FunctionConfig) -> dict:
    """The function's settings as CreateFunction / UpdateFunctionConfiguration take them."""
    if fn.language == "provided" and fn.entrypoint != "bootstrap":
        raise CliError(f"{fn.source}: entrypoint {fn.entrypoint!r}: Lambda's API runs a "
                       "provided function's `bootstrap`; name the executable bootstrap", 2)
    if fn.memory < LAMBDA_MIN_MEMORY:
        raise CliError(f"{fn.source}: memory {fn.memory}: Lambda's API takes at least "
                       f"{LAMBDA_MIN_MEMORY} MB", 2)
    return {"Runtime": lambda_runtime(fn), "Handler": lambda_handler_string(fn),
            # Lambda's Timeout is whole seconds: a fraction is rounded up, never cut short.
            "Timeout": max(1, min(LAMBDA_MAX_TIMEOUT, math.ceil(fn.timeout))),
            "MemorySize": fn.memory,
            "Environment": {"Variables": dict(fn.env)}}


def settings_differ(current: dict, wanted: dict) -> list[str]:
    """The settings (Lambda's names) in which the host's configuration differs from `wanted`."""
    differ = []
    for key, value in wanted.items():
        have = current.get(key)
        if key == "Environment":
            have = {"Variables": (have or {}).get("Variables") or {}}
        if have != value:
            differ.append(key)
    return differ


def code_sha256(data: bytes) -> str:
    """Lambda's CodeSha256: the zip's SHA-256, base64."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@dataclass
class DeployResult:
    name: str
    action: str                 # created | updated | unchanged
    changed: list[str]          # code, configuration
    code: FunctionZip
    version: str | None
    arn: str | None
    not_carried: list[str]

    def as_json(self) -> dict:
        return {"function": self.name, "action": self.action, "changed": self.changed,
                "codeSha256": code_sha256(self.code.data), "zipBytes": len(self.code.data),
                "files": self.code.files, "unzippedBytes": self.code.unzipped_bytes,
                "skippedLinks": list(self.code.skipped_links), "version": self.version,
                "functionArn": self.arn, "settingsNotCarried": self.not_carried}


def read_folder(folder: str, name: str | None) -> tuple[FunctionConfig, str, list[str]]:
    """The folder's sora.yaml, the name to deploy it as (--name, else its own), and the
    settings it gives that Lambda's API does not carry (but those set to their default)."""
    try:
        fn = load_function_config(folder)
        with open(fn.source, "rb") as fh:
            given = yaml.safe_load(fh) or {}
    except ConfigError as exc:
        raise CliError(f"configuration error\n{exc}", 2) from None
    return fn, name or fn.name, sorted(
        key for key in set(given) - CARRIED_SETTINGS if not _is_default(fn, key))


def _is_default(fn: FunctionConfig, key: str) -> bool:
    if key == "trigger":   # parsed into trigger objects: the default is the one http trigger
        return fn.trigger == (HttpTrigger(),)
    return key in FUNCTION_SETTINGS and hasattr(fn, key) and \
        getattr(fn, key) == FUNCTION_SETTINGS[key].default


def host_limits(config_file: str | None) -> Limits:
    """The host's limits on uploaded code, from its config when it is at hand (else
    Lambda's, the host's defaults): a folder over them is refused before it is sent."""
    if config_file is None:
        return Limits()
    try:
        managed = load_host_config(config_file, read_functions=False).managedFunctions
    except (ConfigError, OSError):
        return Limits()
    return Limits(managed.maxZipMB * MB, managed.maxUnzippedMB * MB, managed.maxFiles)


def deploy(client, folder: str, name: str | None, publish: bool, description: str | None,
           timeout: float, limits: Limits = Limits()) -> DeployResult:
    fn, name, not_carried = read_folder(folder, name)
    wanted = lambda_settings(fn)
    try:
        code = build_zip(folder, limits)
    except ZipRefused as exc:
        raise CliError(f"deploy: {exc}", 2) from None
    current = _configuration(client, name)
    extra = {"Description": description} if description is not None else {}
    if current is None:
        out = client.create_function(FunctionName=name, Role=PLACEHOLDER_ROLE,
                                     Code={"ZipFile": code.data}, Publish=publish,
                                     **wanted, **extra)
        _wait_updated(client, name, timeout)
        version = out.get("Version") if publish else None
        if publish and version in (None, "$LATEST"):
            version = client.publish_version(FunctionName=name, **extra)["Version"]
        arn = out.get("FunctionArn") or ""
        if out.get("Version") not in (None, "$LATEST"):   # published: the version's own ARN
            arn = arn.removesuffix(f":{out['Version']}")
        return DeployResult(name, "created", ["code", "configuration"], code, version,
                            arn or None, not_carried)
    changed = []
    if current.get("CodeSha256") != code_sha256(code.data):
        client.update_function_code(FunctionName=name, ZipFile=code.data)
        _wait_updated(client, name, timeout)
        changed.append("code")
    if settings_differ(current, wanted):
        client.update_function_configuration(FunctionName=name, **wanted)
        _wait_updated(client, name, timeout)
        changed.append("configuration")
    version = client.publish_version(FunctionName=name, **extra)["Version"] if publish \
        else None
    return DeployResult(name, "updated" if changed else "unchanged", changed, code, version,
                        current.get("FunctionArn"), not_carried)


def _configuration(client, name: str) -> dict | None:
    try:
        return client.get_function(FunctionName=name)["Configuration"]
    except client.exceptions.ResourceNotFoundException:
        return None


def _wait_updated(client, name: str, timeout: float) -> None:
    """Until the host says the change is live (State / LastUpdateStatus no longer pending, as
    Lambda's own waiters wait); a host that switches before it answers has nothing pending.
    A failed switch is the host's answer to the deploy, reported as an error."""
    deadline = time.monotonic() + timeout
    while True:
        config = client.get_function(FunctionName=name)["Configuration"]
        for field, reason in (("State", "StateReason"),
                              ("LastUpdateStatus", "LastUpdateStatusReason")):
            if config.get(field) == "Failed":
                raise CliError(f"deploy: {name} did not go live: "
                               f"{config.get(reason) or 'the host could not load it'}", 1)
        if config.get("State") not in IN_PROGRESS and \
                config.get("LastUpdateStatus") not in IN_PROGRESS:
            return
        if time.monotonic() >= deadline:
            raise CliError(f"deploy: {name} still updating after {timeout:.0f} s "
                           "(see `sora ls`)", 1)
        time.sleep(UPDATE_POLL_SECONDS)
