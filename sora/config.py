"""host-config.yaml and sora.yaml: one schema, validated at load, with clear errors.

Every setting is declared once below (name, validator, default, description), in the manner of
gunicorn's config.py. The declarations are the reference documentation (`docs/configuration.md`
is generated from them by `python -m sora.config --markdown`), so a setting cannot exist without
being documented and validated.

Every error names the file, the field and what was expected. A broken function folder is not
fatal for the host: `load_host_config` returns it in `HostConfig.broken` with its reason and the
other functions still load.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Callable

import psutil
import yaml

from .cluster.keys import KeysError, load_keys
from .isolation import nofollow
from .isolation.uids import assign_uids

FUNCTION_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HANDLER_RE = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*(\.[A-Za-z_$][A-Za-z0-9_$]*)*$")
# A folder or file name in a Node.js handler string's path (`src/app.handler`).
LAMBDA_PATH_PART_RE = re.compile(r"^[A-Za-z0-9_.@-]+$")
# The extensions Lambda tries for a handler string's file, in its order (aws-lambda-nodejs-
# runtime-interface-client's UserFunction.js: .js, then .mjs, then .cjs).
LAMBDA_EXTENSIONS = {"nodejs": (".js", ".mjs", ".cjs"), "python": (".py",)}
# For the error of a function that names no file: Lambda's handler string, and what it means.
LAMBDA_HANDLER_EXAMPLES = {
    "nodejs": ("index.handler", "the export handler of index.js, index.mjs or index.cjs"),
    "python": ("app.lambda_handler", "the function lambda_handler of app.py"),
}
FUNCTION_FILE = "sora.yaml"
# Functions created through the Lambda management API: <stateDir>/functions/<NAME>/ holds
# function.json (their settings, Sora-written) and code/ (the uploaded zip, extracted).
MANAGED_FUNCTIONS_DIR = "functions"
MANAGED_CONFIG_FILE = "function.json"
MANAGED_CODE_DIR = "code"
# A config file larger than this is refused (no real one comes near it).
MAX_CONFIG_BYTES = 1 << 20
# Each language and the file extensions its `entrypoint` may have (None: an executable file).
LANGUAGES: dict[str, tuple[str, ...] | None] = {
    "nodejs": (".js", ".cjs", ".mjs"),
    "python": (".py",),
    "provided": None,
}
# The language of a Lambda container image (`package: image`): its own entrypoint runs.
IMAGE_LANGUAGE = "image"
# What a `provided` function runs when it names no entrypoint, as on Lambda.
PROVIDED_DEFAULT_ENTRYPOINT = "bootstrap"
# Environment variables a function may see from the host even though the host's environment is
# otherwise kept out (the issue and Lambda both give the function a PATH and a HOME).
HOST_ENV_PASSTHROUGH = ("PATH", "HOME")


class ConfigError(Exception):
    """One or more problems in one config file; each names the field and what was expected."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))


class _Invalid(Exception):
    """A validator's complaint: what was expected (the field and file are added by the caller)."""


_MISSING = object()


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- validators: each returns the normalized value or raises _Invalid(expected) ---------------

def _int_range(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise _Invalid(f"an integer from {lo} to {hi}")
        return value
    return check


def _number_range(lo: float, hi: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo < value <= hi:
            raise _Invalid(f"a number of seconds greater than {lo:g} and at most {hi:g}")
        return float(value)
    return check


def _port(value: Any) -> int:
    return _int_range(1, 65535)(value)


def _nonempty_str(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("a non-empty string")
    return value


def _function_name(value: Any) -> str:
    if not isinstance(value, str) or not FUNCTION_NAME_RE.match(value):
        raise _Invalid("a name of lower-case letters, digits and dashes, starting and ending "
                       "with a letter or digit, at most 63 characters")
    return value


def _one_of(choices: tuple[str, ...], expected: str = "") -> Callable[[Any], str]:
    """A validator for one of `choices`; `expected` says what each means (default: lists them)."""
    def check(value: Any) -> str:
        if value not in choices:
            raise _Invalid(expected or "one of: " + ", ".join(choices))
        return value
    return check


_language = _one_of((*LANGUAGES, "image"), "one of: " + ", ".join(LANGUAGES) +
                   " (or image, with package: image)")


def _relative_file(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("a path to a file inside the function folder")
    norm = os.path.normpath(value)
    if os.path.isabs(value) or norm == ".." or norm.startswith(".." + os.sep):
        raise _Invalid("a path inside the function folder (not absolute, no '..')")
    return norm


def _handler(value: Any) -> str:
    # Checked against the language once the whole file is read (see _check_language).
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise _Invalid("a handler name without spaces, such as 'handler'")
    return value


def _runtime(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise _Invalid("an interpreter: a command name such as 'python3.12' or a path")
    return value


def _str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _Invalid("a list of shell commands (strings)")
    return list(value)


def _path_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise _Invalid("a non-empty list of folder paths")
    return list(value)


def _trigger_list(value: Any) -> list:
    """The `trigger` field's outline: `http`, one trigger map, or a list of them. Each item is
    checked, with its own field name, by `_triggers` once the function folder is known."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(item == "http" or isinstance(item, dict) for item in items):
        raise _Invalid("'http', {schedule: EXPR, ...}, {file: {path: FOLDER, ...}} or a list "
                       "of these")
    return list(items)


COLD_START_MODES = ("never", "always", "always-setup")


_cold_start = _one_of(COLD_START_MODES)


def _env(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Invalid("a map of variable names to values")
    out = {}
    for key, val in value.items():
        if not isinstance(key, str) or not ENV_NAME_RE.match(key):
            raise _Invalid(f"variable names of letters, digits and '_' (bad name {_show(key)})")
        if isinstance(val, (dict, list)) or val is None:
            raise _Invalid(f"a string, number or boolean for {key}")
        out[key] = str(val).lower() if isinstance(val, bool) else str(val)
    return out


@dataclass(frozen=True)
class SecretSpec:
    """Where one secret's value comes from (the value itself is read by the worker)."""
    name: str
    file: str | None     # a path, relative to the function folder or absolute
    env: str | None      # a variable of the host's environment
    asEnv: bool = False  # also offered as an environment variable of that name


def _secrets(value: Any) -> tuple[SecretSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise _Invalid("a map of secret names to {file: PATH} or {env: VARIABLE}, each "
                       "optionally with asEnv: true")
    out = []
    for name, spec in value.items():
        if not isinstance(name, str) or not ENV_NAME_RE.match(name):
            raise _Invalid(f"secret names of letters, digits and '_' (bad name {_show(name)})")
        if not isinstance(spec, dict) or set(spec) - {"file", "env", "asEnv"} or \
                (spec.get("file") is None) == (spec.get("env") is None) or \
                not isinstance(spec.get("file") or spec.get("env"), str) or \
                not isinstance(spec.get("asEnv", False), bool):
            raise _Invalid(f"{{file: PATH}} or {{env: VARIABLE}} (exactly one), optionally "
                           f"with asEnv: true, for {name}")
        out.append(SecretSpec(name, spec.get("file"), spec.get("env"), spec.get("asEnv", False)))
    return tuple(out)


def _mapping(value: Any) -> dict:
    if not isinstance(value, dict):
        raise _Invalid("a mapping of settings")
    return value


def _mapping_list(value: Any) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise _Invalid("a list of mappings")
    return value


_isolation = _one_of(("sandbox", "container", "none"), "'sandbox' (bubblewrap: read-only "
                     "system and folder, private /tmp and /proc, its own uid), 'container' (a "
                     "container of `image` in the local Docker engine) or 'none'")
_package = _one_of(("zip", "image"), "'zip' (the function's code is its folder) or 'image' (a "
                   "Lambda container image: the image's ENTRYPOINT and CMD run)")
# A Docker image reference, NAME[:TAG][@DIGEST], NAME being [DOMAIN[:PORT]/]PATH as the
# engine's reference grammar has it (lower-case path components).
_IMAGE_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?" \
                r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?/)?"
IMAGE_RE = re.compile(rf"^{_IMAGE_DOMAIN}{_IMAGE_COMPONENT}(?:/{_IMAGE_COMPONENT})*"
                      r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$")
# Where a container's own mounts are (sora.containers): a taskRoot may not be one of them,
# nor a folder the kernel or the engine provides.
TASK_ROOT_RESERVED = ("/tmp", "/run", "/opt/sora", "/proc", "/sys", "/dev", "/etc")
DEFAULT_TASK_ROOT = "/var/task"


def _image(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 255 or not IMAGE_RE.match(value):
        raise _Invalid("an image name NAME[:TAG] as `docker images` lists it, such as "
                       "'my-function:1' (lower-case name)")
    return value


def _task_root(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\n" in value:
        raise _Invalid("an absolute path inside the container, such as '/var/task'")
    norm = os.path.normpath(value)
    if norm == "/" or ".." in value.split("/") or \
            any(norm == r or norm.startswith(r + "/") for r in TASK_ROOT_RESERVED):
        raise _Invalid("an absolute folder inside the container other than /, no '..', "
                       "outside " + ", ".join(TASK_ROOT_RESERVED))
    return norm


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("true or false")
    return value


_auth_mode = _one_of(("apiKey", "none"), "'apiKey' (callers need a key with an invoke "
                     "scope) or 'none' (its function URL is public)")


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _Invalid("a file or folder path")
    return value


STORE_URL_RE = re.compile(r"^postgres(ql)?://", re.IGNORECASE)


def display_url(url: str) -> str:
    """`url` with the password of its user part and of a `password=` query parameter replaced
    by `***` (what every log line and error shows of a store URL)."""
    # Up to the authority's last "@": a password with an unencoded "@" is hidden whole.
    shown = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/@?#:]*):[^/?#]*@", r"\1:***@", url)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", shown, flags=re.IGNORECASE)


def _store_setting(value: Any) -> Any:
    """`store:` is checked by `_store` (a value is never echoed: it may hold a password)."""
    return value


@dataclass(frozen=True)
class Setting:
    name: str
    validate: Callable[[Any], Any]
    default: Any
    doc: str


def _settings(*items: Setting) -> dict[str, Setting]:
    return {s.name: s for s in items}


REQUIRED = _MISSING

SERVER_SETTINGS = _settings(
    Setting("httpPort", _port, None, "Port for plain HTTP. Optional if `httpsPort` is set."),
    Setting("httpsPort", _port, None, "Port for HTTPS (TLS 1.2 minimum). Needs `sslCertPath` "
            "and `sslKeyPath`."),
    Setting("sslCertPath", _path, None, "PEM certificate (chain) for HTTPS, relative to the "
            "config file's folder."),
    Setting("sslKeyPath", _path, None, "PEM private key for HTTPS, relative to the config "
            "file's folder."),
    Setting("bind", _nonempty_str, "0.0.0.0", "Address both listeners bind to."),
    Setting("gatewayWorkers", _int_range(1, 64), None, "gunicorn worker processes per listener. "
            "Default: half the CPU cores, at least 1 (the workers, runtimes and recorder "
            "need the other half)."),
    Setting("maxBodyBytes", _int_range(1, 1 << 30), 6 * 1024 * 1024, "Largest request body "
            "accepted; a larger one gets 413. Default 6 MiB, Lambda's synchronous payload limit."),
    Setting("gracefulTimeout", _number_range(0, 3600), 30.0, "Seconds a stop waits for "
            "in-flight invocations before processes are killed."),
    Setting("headerTimeout", _number_range(0, 3600), 10.0, "Seconds a new connection has to "
            "send its first request's headers; a slower one is closed (slowloris)."),
    Setting("bodyTimeout", _number_range(0, 3600), 30.0, "Seconds a request body may stall "
            "(no bytes arriving) before the request is refused with 408. A body that ends "
            "before its length, or stalls, is never invoked nor stored."),
    Setting("maxEventBytes", _int_range(1, 1 << 30), 256 * 1024, "Largest asynchronous event "
            "stored (the Invoke API's body, or a function URL's event as JSON); a larger one "
            "gets 413 `RequestEntityTooLargeException` and nothing is stored. Default 256 KiB, "
            "Lambda's limit for `Event` invocations."),
    Setting("errorDetail", _one_of(("full", "message", "none"), "one of: full (errorType, "
            "errorMessage and the stack trace), message (errorType and errorMessage), none "
            "(a plain `Internal Server Error`)"), "message",
            "What a function URL caller sees of a failure: `message` gives JSON `errorType` "
            "and `errorMessage`, host paths (the function's folder, Sora's, the state dir, "
            "the config's) replaced and the reasons of a function that cannot start left out; "
            "`none` gives Lambda function URLs' plain text `Internal Server Error` (502; other "
            "5xx their reason phrase); `full` adds the stack trace and leaves everything as "
            "the function and the host wrote it (for development: `examples/` sets it). The "
            "Invoke API keeps Lambda's error payload whatever this says. Logs and `/healthz` "
            "keep every detail."),
    Setting("dashboard", _bool, True, "The web dashboard at `/ui/` (server-rendered pages; "
            "on a host with API keys, a login with an admin key). `false` leaves its routes "
            "out: `/ui/` is then a 404."),
    Setting("metrics", _bool, True, "`GET /metrics` in the Prometheus text format (an admin "
            "key or one with scope `metrics`; open on a host without keys). `false` turns it "
            "off: the route answers 404 and nothing is counted."),
    Setting("docker", _mapping, {}, "The Docker engine that `isolation: container` functions "
            "run in (below)."),
)

DOCKER_SETTINGS = _settings(
    Setting("socket", _path, "/var/run/docker.sock", "The Docker engine's Unix socket "
            "(relative to the config file's folder, or absolute). Only Sora uses it: no "
            "function ever sees it. A containerized function whose worker finds no engine "
            "answering there is reported broken with the reason; the others serve. Not used "
            "(no engine needed) when no function has `isolation: container`."),
)

HOST_SETTINGS = _settings(
    Setting("functionPaths", _path_list, REQUIRED, "Folders that each hold a `sora.yaml`, "
            "relative to the config file's folder."),
    Setting("server", _mapping, REQUIRED, "Listener settings (below). A joined host "
            "(`cluster.controlPlane`) binds no port and may leave it out."),
    Setting("stateDir", _path, "./.sora", "Folder for sockets, logs, the setup cache and the "
            "store (`sora.db`), relative to the config file's folder."),
    Setting("records", _mapping, {}, "Retention of invocation records (below)."),
    Setting("logs", _mapping, {}, "Size of the functions' log files (below)."),
    Setting("minFreeDiskMB", _int_range(0, 1 << 30), 100, "Free space (MB) the state dir's "
            "file system must keep. Below it (checked at most once a second) asynchronous "
            "events get 503 `Sora.LowDisk` with Retry-After, and function log files and the "
            "records store stop being written (each says so once in the host's log) until "
            "space is back; synchronous calls keep running. 0 turns this off."),
    Setting("limits", _mapping, {}, "Host-wide limits that autoscaling never exceeds (below)."),
    Setting("auth", _mapping, {}, "API keys callers must present (below). Without keys, every "
            "route is open (a host for local development only)."),
    Setting("cluster", _mapping, {}, "Running with other hosts (below): the main host "
            "`listen`s for joins, a joined host names its `controlPlane`. Without it the host "
            "stands alone."),
    Setting("managedFunctions", _mapping, {}, "Functions created through the Lambda "
            "management API (`CreateFunction`, below): limits on their uploaded code."),
    Setting("versions", _mapping, {}, "Published versions of the functions (below)."),
    Setting("store", _store_setting, "sqlite", "Where the shared state lives: invocation "
            "records and log lines, the event queue and dead letters, triggers' state, "
            "versions and aliases. `sqlite` (default): files in `stateDir` (`sora.db`, "
            "`queue.db`), nothing to install, one host. A mapping (below) names a PostgreSQL "
            "database that several hosts share."),
    Setting("prestartedRuntimes", _int_range(0, 64), 2, "Runtime processes of each kind "
            "(Node.js, by interpreter) kept started and ready to load any function, so a cold "
            "start skips the interpreter's own start-up. 0 turns this off."),
)

AUTH_SETTINGS = _settings(
    Setting("apiKeys", _mapping_list, [], "The keys, each `{name, scopes, key | keyFile | "
            "keyEnv}`: `name` is what logs show (never the key); `scopes` a list of "
            "`invoke` (every function), `invoke:<function>`, `metrics` (`GET /metrics` only) "
            "and `admin` (the records, logs, dead-letter and health-detail routes, /metrics, "
            "and every function); the key itself given "
            "inline (`key`), in a file (`keyFile`, relative to this file) or in a host "
            "environment variable (`keyEnv`). Callers send it as `Authorization: Bearer <key>` "
            "or `X-Api-Key: <key>`, or sign with AWS Signature Version 4 as the AWS SDKs and "
            "CLI do, with the key's `name` as the access key id and the key as the secret "
            "access key (`sora keys` prints both)."),
)

TCP_ENDPOINT_RE = re.compile(r"^tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$")
HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]+|[A-Za-z0-9_.-]+)$")


def _tcp_endpoint(value: Any) -> str:
    match = TCP_ENDPOINT_RE.match(value) if isinstance(value, str) else None
    # The port after it is the records port (cluster.listen's port + 1): both must exist.
    if not match or not 1 <= int(match.group(2)) <= 65534:
        raise _Invalid("a ZeroMQ tcp endpoint tcp://ADDRESS:PORT (PORT from 1 to 65534)")
    return value


def _host_address(value: Any) -> str:
    if not isinstance(value, str) or not HOST_RE.match(value):
        raise _Invalid("a host name or IP address (no scheme, no port)")
    return value


def _host_name(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", value):
        raise _Invalid("a host name of letters, digits, '.', '_' and '-', at most 63 characters")
    return value


CLUSTER_SETTINGS = _settings(
    Setting("listen", _tcp_endpoint, None, "On the main host: where other hosts join "
            "(`tcp://ADDRESS:PORT`, CURVE). Invocation records of joined hosts arrive on the "
            "next port (PORT + 1). Needs `keys`."),
    Setting("controlPlane", _tcp_endpoint, None, "On a joined host: the main host's "
            "`cluster.listen` as this host reaches it (`tcp://HOST:PORT`). Needs `keys` and "
            "`advertise`."),
    Setting("controlPlaneKey", _host_name, None, "On a joined host: the name of the main "
            "host's certificate in `keys`'s allow-list (`allowed/NAME.key`, as given to `sora "
            "keys add --name`). Default: the one certificate there other than this host's."),
    Setting("advertise", _host_address, None, "The address other hosts reach this host's "
            "workers at (a host name or IP, no port)."),
    Setting("keys", _path, None, "This host's CURVE keys folder, made by `sora keys init` "
            "(relative to the config file's folder); every tcp socket between hosts uses it."),
    Setting("name", _host_name, None, "This host's name in the cluster (`sora ls`, "
            "`/healthz`); unique among the hosts. Default: the machine's host name."),
)

MANAGED_SETTINGS = _settings(
    Setting("maxZipMB", _int_range(1, 1024), 50, "Largest zip (`Code.ZipFile`) accepted, in "
            "MB (Lambda's limit: 50); a larger one gets 413 `RequestTooLargeException`. The "
            "management API's request body limit follows (the zip base64-encoded), without "
            "raising `server.maxBodyBytes` for function calls."),
    Setting("maxUnzippedMB", _int_range(1, 10240), 250, "Largest unzipped code, in MB "
            "(Lambda's limit: 250), checked against the sizes the zip declares and again "
            "against the bytes written; past it the zip is refused with "
            "`InvalidParameterValueException` and nothing is written."),
    Setting("maxFiles", _int_range(1, 1_000_000), 20_000, "Most entries (files and folders) "
            "a zip may hold."),
)

# `invoke:<function>` names a function by the one function-name pattern.
API_KEY_SCOPE_RE = re.compile(r"^(admin|metrics|invoke|invoke:" +
                              FUNCTION_NAME_RE.pattern[1:-1] + r")$")
MIN_API_KEY_LENGTH = 16

LIMITS_SETTINGS = _settings(
    Setting("maxInstances", _int_range(1, 100000), None, "Runtime instances of all functions "
            "together. Default: 16 per CPU core."),
    Setting("maxMemoryMB", _int_range(64, 1 << 30), None, "Memory of all instances together, "
            "counting each at its function's `memory`. Default: three quarters of the host's "
            "memory."),
)

FUNCTION_SETTINGS = _settings(
    Setting("name", _function_name, REQUIRED, "Function name, used in URLs: lower-case letters, "
            "digits and dashes, at most 63 characters."),
    Setting("language", _language, None, "Runtime language: `nodejs`, `python`, or "
            "`provided` (any language, through the AWS Lambda Runtime API). Required, except "
            "with `package: image` (then it is `image`: the image's own entrypoint runs)."),
    Setting("entrypoint", _relative_file, None, "File holding the handler, relative to the "
            "function folder: `.js`, `.cjs` or `.mjs` for nodejs and `.py` for python "
            "(optional when `handler` names the file, as on Lambda); for provided, the "
            "executable to run (default `bootstrap`; it may be built by `setup`)."),
    Setting("handler", _handler, "handler", "For nodejs and python, Lambda's handler "
            "string: the file's path relative to the function folder without its extension, "
            "then the function's name (`index.handler`, `src/app.handler`, Python's "
            "`app.lambda_handler`); the file is found as Lambda finds it (`.js`, `.mjs`, then "
            "`.cjs`; `.py`). With `entrypoint` set, just the name (`handler`; for nodejs, "
            "dots reach into nested exports). For provided it is passed as-is in `_HANDLER`. "
            "With `package: image`, optional: it replaces the image's `CMD` (the handler "
            "string its runtime interface client loads); without it the image's `CMD` runs."),
    Setting("runtime", _runtime, None, "Interpreter for nodejs or python: a command looked up "
            "on PATH (`python3.12`, `node`) or a path, relative to the function folder (such "
            "as a virtualenv made by `setup`: `.venv/bin/python`; when sandboxed, it must lead "
            "into the folder or to one of the host's interpreters) or absolute. Default: the "
            "Python Sora runs on (its base interpreter, never Sora's own virtualenv), or "
            "`$SORA_NODE`, else `node` on PATH. Not used by provided. With `isolation: "
            "container` it names the interpreter inside the image: a command on the image's "
            "PATH, an absolute path in the image, or a path relative to the function folder "
            "(mounted at `taskRoot`); default `node` or `python3`."),
    Setting("setup", _str_list, [], "Shell commands run in the function folder before it "
            "serves (e.g. `npm install`). Skipped when the folder is unchanged since the last "
            "successful setup. Setup may not change `sora.yaml` (read-only in its sandbox; "
            "one that changes it anyway fails, and the function with it)."),
    Setting("setupTimeout", _number_range(0, 24 * 3600), 600.0, "Seconds each setup command "
            "may run before it is killed and the function is marked failed."),
    Setting("trigger", _trigger_list, ["http"], "How the function is invoked: `http` (its "
            "function URL), and/or schedules and watched folders, as a list: `[http, "
            "{schedule: 'rate(5 minutes)'}, {file: {path: ./inbox}}]`. Without `http` the "
            "function URL answers 404 and the Invoke API still reaches the function. Every "
            "key is described in \"Triggers\" below."),
    Setting("timeout", _number_range(0, 900), 30.0, "Seconds an invocation may run; past it "
            "the caller gets 504 `Sora.Timeout` and the instance is replaced."),
    Setting("memory", _int_range(64, 10240), 256, "Memory in MB; reported to the function as "
            "`memoryLimitInMB` and used as the runtime's heap limit. With `isolation: "
            "container`, also the container's memory limit (no swap)."),
    Setting("env", _env, {}, "Environment variables for the function. The host's environment "
            "does not reach the function, except `PATH` and `HOME`."),
    Setting("secrets", _secrets, (), "Secrets for this function only: `NAME: {file: PATH}` "
            "(relative to the function folder, or absolute; a regular file of at most 1 MiB, "
            "reached without symbolic links) or `NAME: {env: VARIABLE}` (the "
            "host's environment), read when its worker starts. Each is a file `NAME` in the "
            "folder named by `$SORA_SECRETS_DIR` (in memory, readable by the function only), "
            "and with `asEnv: true` also the variable `NAME`. Their values are replaced by "
            "`****` in its logs and never stored or shown by the APIs."),
    Setting("instances", _int_range(1, 256), None, "Shorthand for a fixed pool: sets both "
            "`minInstances` and `maxInstances` (not with either of them)."),
    Setting("minInstances", _int_range(0, 256), 1, "Instances kept running even when idle "
            "(per worker process). Default 1, so the first call is warm and a function whose "
            "code cannot load is reported when the host starts; 0 scales an idle function to "
            "zero, and its next call starts an instance (a cold start, from a pre-started "
            "runtime where one is ready)."),
    Setting("maxInstances", _int_range(1, 1024), None, "Most instances the autoscaler runs "
            "(per worker process); each runs one invocation at a time. Default: 4 per CPU "
            "core, and no more than half the host's memory holds at `memory` MB each."),
    Setting("concurrency", _int_range(1, 100000), None, "Hard cap on this function's "
            "invocations running at once, over all its workers (Lambda's reserved "
            "concurrency). Calls beyond it wait in the queue (`maxQueued`); past that they "
            "get 429 with Retry-After. At least `minInstances` x `workers`; default: "
            "`maxInstances` x `workers`."),
    Setting("idleTimeout", _number_range(0, 24 * 3600), 300.0, "Seconds an instance may stay "
            "idle before the autoscaler stops it (never below `minInstances`)."),
    Setting("workers", _int_range(1, 64), 1, "Worker processes for this function on this "
            "host; each client sends a call to the one with the most free credits (more workers spread the Python "
            "side of a busy function over more cores). Workers on other hosts join the same "
            "way."),
    Setting("maxQueued", _int_range(0, 100000), 1000, "Invocations that may wait for a free "
            "instance; past it callers get 429 with Retry-After."),
    Setting("eventInvoke", _mapping, {}, "Asynchronous (`Event`) invocations: retries, event "
            "age and concurrency (below)."),
    Setting("isolation", _isolation, "sandbox", "`sandbox` (default) runs each instance and "
            "each `setup` command in a bubblewrap sandbox: the system and the function folder "
            "read-only (writable for `setup`; its `sora.yaml` always read-only), a private "
            "`/tmp` of `tmpSize` MB, its own `/proc` "
            "and pid namespace, no other folder of the host, as an unprivileged uid of its own "
            "(a user namespace when Sora does not run as root). `none` is the explicit opt-out, "
            "logged at each worker's start: it runs as the user Sora runs as. `container` runs "
            "each instance and each `setup` command in a container of `image` through the "
            "Docker engine at `server.docker.socket`: read-only root file system, a private "
            "`/tmp` of `tmpSize` MB, the function folder read-only at `taskRoot`, no "
            "capabilities, no new privileges, the function's own uid, `memory` as its "
            "limit."),
    Setting("image", _image, None, "With `isolation: container` (required there) or `package: "
            "image`: the image, `NAME[:TAG]`, as the local Docker engine lists it (`docker "
            "images`; Sora pulls nothing). Checked when the function's worker starts: a "
            "missing image or engine reports the function broken, with the reason."),
    Setting("package", _package, "zip", "`zip` (default): the function's code is its folder. "
            "`image`: a Lambda container image (Lambda's package type `Image`): the image's "
            "`ENTRYPOINT` and `CMD` run, a runtime interface client talking to the Runtime "
            "API Sora serves; implies `isolation: container`, `language` may be left out, "
            "`handler` replaces `CMD`, `entrypoint` and `runtime` are not used."),
    Setting("taskRoot", _task_root, DEFAULT_TASK_ROOT, "With `isolation: container`, where the "
            "function folder is mounted (read-only) in the container, and "
            "`LAMBDA_TASK_ROOT` (Lambda's `/var/task` by default)."),
    Setting("writableFolder", _bool, False, "With `isolation: sandbox`, `true` lets its "
            "instances write their function folder (when Sora runs as root, by giving the "
            "function's uid write access with a POSIX ACL; files it makes are that uid's). Its "
            "`sora.yaml` stays read-only. Not with `isolation: container`."),
    Setting("network", _bool, True, "With `isolation: sandbox`, `false` gives the instance "
            "a network namespace of its own (loopback only). With `isolation: container`, "
            "`false` is the engine's network mode `none` (loopback only) and `true` the "
            "host's network (Sora's engine needs no bridge network; setup always has the "
            "host's)."),
    Setting("tmpSize", _int_range(1, 10240), 512, "With `isolation: sandbox` or `container`, "
            "the size of its private `/tmp` in MB (Lambda's ephemeral storage default: "
            "512)."),
    Setting("auth", _auth_mode, "apiKey", "Who may call the function's URL when the host has "
            "API keys: `apiKey` (default: a key with an invoke scope for it) or `none` (public, "
            "like a Lambda function URL with auth type NONE). The Invoke API always needs a "
            "key."),
    Setting("coldStart", _cold_start, "never", "Cold-start simulation, to test a function's "
            "cold path: `always` tears each instance down after its invocation, so every "
            "invocation runs on a fresh one (its record says cold); `always-setup` also runs "
            "`setup` again (ignoring its cache) before each fresh instance. Default `never`."),
)

EVENT_INVOKE_SETTINGS = _settings(
    Setting("maximumRetryAttempts", _int_range(0, 10), 2, "Retries after a failed attempt "
            "(error, timeout, crash), as Lambda's `MaximumRetryAttempts`; then the event goes "
            "to the dead-letter list."),
    Setting("maximumEventAgeInSeconds", _number_range(0, 7 * 24 * 3600), 21600.0, "An event "
            "not run successfully this long after it was accepted goes to the dead-letter "
            "list, as Lambda's `MaximumEventAgeInSeconds` (default 6 hours)."),
    Setting("retryDelaySeconds", _number_range(0, 3600), 1.0, "Wait before the first retry; "
            "it doubles for each further one (at most 5 minutes)."),
    Setting("maxConcurrency", _int_range(1, 1024), None, "Events of this function run at "
            "once. Default: the function's `concurrency` (at most 1024)."),
    Setting("maxQueuedEvents", _int_range(1, 10_000_000), 100_000, "Events of this function "
            "stored at once (queued, running or dead-lettered); past it an event gets 429 "
            "`TooManyRequestsException` with Retry-After and is not stored."),
    Setting("maxQueuedMB", _int_range(1, 1 << 20), 256, "Bytes (MB) of this function's stored "
            "events' payloads, counted as `maxQueuedEvents` counts them; past it an event "
            "gets 429 with Retry-After and is not stored."),
)


RECORDS_SETTINGS = _settings(
    Setting("maxPerFunction", _int_range(1, 10_000_000), 10_000, "Invocation records (with "
            "their log lines) kept per function; older ones are pruned."),
    Setting("maxAgeHours", _number_range(0, 24 * 3650), 168.0, "Records older than this are "
            "pruned (default 7 days)."),
    Setting("maxLogBytesPerInvocation", _int_range(1024, 1 << 30), 1 << 20, "Log bytes stored "
            "with one invocation's record; past it one line `[sora: ... not stored ...]` "
            "ends its stored lines (the function's log file still has them all, within its "
            "own caps). Lines printed outside any invocation share one such allowance between "
            "two invocations. Default 1 MiB."),
    Setting("maxStoreMB", _int_range(16, 1 << 30), 1024, "Size of the records store "
            "(`sora.db` with its write-ahead log); past it the oldest records and log lines "
            "are pruned first, and the log is checkpointed and truncated so it stays within "
            "an eighth of this (at most 64 MB)."),
)

STORE_SETTINGS = _settings(
    Setting("url", _nonempty_str, None, "The database, `postgresql://USER:PASSWORD@HOST:PORT/"
            "DBNAME` (libpq's URL; `?sslmode=require` and other parameters as libpq takes "
            "them). Logs and errors show it with the password as `***`; no function ever sees "
            "it. Give either `url` or `urlEnv`."),
    Setting("urlEnv", _nonempty_str, None, "The name of a host environment variable holding "
            "the URL (a Kubernetes Secret mapped into the environment), read at start."),
    Setting("poolSize", _int_range(1, 100), 4, "Connections each Sora process keeps open "
            "to the database at most (a pool, opened on first use): the gateways' workers, "
            "the recorder, the dispatcher and the trigger service each have their own."),
)

VERSIONS_SETTINGS = _settings(
    Setting("keep", _int_range(1, 100000), 10, "Published versions kept per function "
            "(`<stateDir>/versions/<name>/`); a publish past it removes the oldest, except "
            "the versions an alias names."),
)

LOGS_SETTINGS = _settings(
    Setting("maxFileMB", _int_range(1, 1 << 20), 32, "Size (MB) at which each function's log "
            "file `<stateDir>/logs/<name>.log` is rotated to `<name>.log.1` (the older ones "
            "move up by one)."),
    Setting("keepFiles", _int_range(1, 1000), 3, "Rotated log files kept per function beside "
            "the current one; the oldest is deleted. A function's logs take at most "
            "(`keepFiles` + 1) x `maxFileMB`."),
)


def _validate_mapping(data: Any, settings: dict[str, Setting], prefix: str,
                      problems: list[str]) -> dict[str, Any]:
    """Validate a mapping against its settings, appending readable problems; return values."""
    if not isinstance(data, dict):
        problems.append(f"{prefix or 'top level'}: expected a mapping of settings, "
                        f"got {_show(data)}")
        return {}
    values: dict[str, Any] = {}
    for key in data:
        if key not in settings:
            guess = difflib.get_close_matches(str(key), list(settings), n=1, cutoff=0.6)
            hint = f"; did you mean '{guess[0]}'?" if guess else \
                f"; known fields: {', '.join(settings)}"
            problems.append(f"{prefix}{key}: unknown field{hint}")
    for name, setting in settings.items():
        if name not in data or data[name] is None and setting.default is not REQUIRED:
            if setting.default is REQUIRED:
                problems.append(f"{prefix}{name}: required field is missing "
                                f"({setting.doc.split('.')[0].lower()})")
            else:
                values[name] = setting.default
            continue
        try:
            values[name] = setting.validate(data[name])
        except _Invalid as exc:
            problems.append(f"{prefix}{name}: expected {exc}, got {_show(data[name])}")
    return values


def _read_yaml(path: str, in_function_folder: bool = False) -> Any:
    return _parse_yaml(path, _read_bytes(path, in_function_folder))


def _read_bytes(path: str, in_function_folder: bool = False) -> bytes:
    """The file's bytes, at most MAX_CONFIG_BYTES. A function's sora.yaml sits in a folder its
    setup can change: it is read without following a link (one planted there would have Sora,
    as root, take any file for the function's config and quote it back in errors)."""
    try:
        if in_function_folder:
            return nofollow.read_beneath(os.path.dirname(path), os.path.basename(path),
                                         max_bytes=MAX_CONFIG_BYTES)
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(path, ["file not found"]) from None
    except nofollow.UnsafePath as exc:
        raise ConfigError(path, [f"expected a regular file of at most {MAX_CONFIG_BYTES} "
                                 f"bytes, not followed through a link ({exc.strerror or exc})"]
                          ) from None
    except OSError as exc:
        raise ConfigError(path, [f"unreadable ({exc.strerror})"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(path, [f"expected a config file of at most {MAX_CONFIG_BYTES} bytes"])
    return raw


def _parse_yaml(path: str, raw: bytes) -> Any:
    try:
        return yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [f"not UTF-8 text ({exc.reason})"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, [f"{where}invalid YAML: {problem}"]) from None


@dataclass(frozen=True)
class EventInvokeConfig:
    maximumRetryAttempts: int = 2
    maximumEventAgeInSeconds: float = 21600.0
    retryDelaySeconds: float = 1.0
    # Set by load_function_config: its default is the function's `concurrency` (the Setting's).
    maxConcurrency: int = EVENT_INVOKE_SETTINGS["maxConcurrency"].default
    maxQueuedEvents: int = EVENT_INVOKE_SETTINGS["maxQueuedEvents"].default
    maxQueuedMB: int = EVENT_INVOKE_SETTINGS["maxQueuedMB"].default


# --- triggers (`trigger:`): http, schedules, watched folders -----------------------------------

FILE_EVENTS = ("created", "modified", "deleted")
OVERLAP_MODES = ("forbid", "allow")
MISSED_MODES = ("latest", "skip")
MAX_DEBOUNCE_MS = 60_000


@dataclass(frozen=True)
class HttpTrigger:
    """The function URL (`/functions/NAME`)."""
    kind: str = "http"
    index: int = 0


@dataclass(frozen=True)
class ScheduleTrigger:
    """`{schedule: EXPR, ...}`: fired by the trigger service (sora.triggers.schedule)."""
    expression: str                 # as written: rate(...), cron(...), at(...), a 5-field line
    index: int                      # position in the function's `trigger` list (0-based)
    timezone: str = "UTC"           # IANA name, checked with zoneinfo at load
    input: Any = None               # JSON value sent verbatim; None: the Scheduled Event
    enabled: bool = True
    overlap: str = "forbid"         # forbid | allow
    missed: str = "latest"          # latest | skip
    kind: str = "schedule"

    @property
    def key(self) -> str:
        """Stable identity of its persisted state (last firing, rate anchor): a change of
        expression or timezone starts afresh, a move in the list does not."""
        return f"schedule:{self.expression}@{self.timezone}"


@dataclass(frozen=True)
class FileTrigger:
    """`{file: {path: FOLDER, ...}}`: a watched folder (sora.triggers.files)."""
    path: str                       # absolute, normalised, NOT resolved through links
    index: int
    events: tuple[str, ...] = ("created",)
    pattern: str | None = None      # fnmatch on the file's name, e.g. "*.csv"
    recursive: bool = False
    debounceMs: int = 200
    bucket: str | None = None       # the S3 event's bucket name; default the folder's name
    writable: bool = False          # mount the folder writable into the function's sandbox
    enabled: bool = True
    kind: str = "file"

    @property
    def key(self) -> str:
        return f"file:{self.path}|{self.pattern or '*'}|{int(self.recursive)}"

    @property
    def bucket_name(self) -> str:
        return self.bucket or os.path.basename(self.path.rstrip(os.sep)) or "root"


Trigger = HttpTrigger | ScheduleTrigger | FileTrigger
TRIGGER_CLASSES = {"http": HttpTrigger, "schedule": ScheduleTrigger, "file": FileTrigger}


def trigger_from_dict(entry: dict | str) -> Trigger:
    """A trigger from its `dataclasses.asdict` form (the snapshot, MEMBERS): `kind` says which.
    A joined host older than triggers sends the string "http"."""
    if entry == "http":
        return HttpTrigger()
    entry = dict(entry)
    cls = TRIGGER_CLASSES[entry["kind"]]
    if cls is FileTrigger:
        entry["events"] = tuple(entry["events"])
    return cls(**entry)


def _triggers(directory: str, items: list, problems: list[str]) -> tuple[Trigger, ...]:
    """Each item of `trigger`, validated with its own field name (`trigger[1].schedule`)."""
    out: list[Trigger] = []
    for index, item in enumerate(items):
        where = f"trigger[{index}]"
        before = len(problems)
        if item == "http":
            trigger: Trigger | None = HttpTrigger(index=index)
        elif "schedule" in item and "file" not in item:
            trigger = _schedule_trigger(item, index, where, problems)
        elif "file" in item and "schedule" not in item:
            trigger = _file_trigger(directory, item, index, where, problems)
        else:
            problems.append(f"{where}: expected 'http', {{schedule: EXPR, ...}} or {{file: "
                            f"{{path: FOLDER, ...}}}}, got {_show(item)}")
            continue
        if len(problems) > before or trigger is None:
            continue
        twin = next((t for t in out if t.kind == trigger.kind and
                     getattr(t, "key", None) == getattr(trigger, "key", None)), None)
        if twin is not None:
            problems.append(f"{where}: expected each trigger once, got the same as "
                            f"trigger[{twin.index}]")
            continue
        out.append(trigger)
    return tuple(out)


def _unknown_keys(item: dict, known: tuple[str, ...], where: str, problems: list[str]) -> bool:
    unknown = [str(k) for k in item if k not in known]
    for key in unknown:
        guess = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        hint = f"did you mean '{guess[0]}'?" if guess else f"known fields: {', '.join(known)}"
        problems.append(f"{where}.{key}: unknown field; {hint}")
    return bool(unknown)


def _checked(where: str, value: Any, check: Callable[[Any], Any], problems: list[str]) -> Any:
    try:
        return check(value)
    except _Invalid as exc:
        problems.append(f"{where}: expected {exc}, got {_show(value)}")
        return _MISSING


def _expression(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("a schedule expression: rate(...), cron(...), at(...) or a 5-field "
                       "cron line")
    return value.strip()


def _timezone(value: Any) -> str:
    from .triggers import schedule   # the trigger package imports config: only when used
    try:
        schedule.zone(value)
    except ValueError:
        raise _Invalid("an IANA time zone name such as 'UTC' or 'Europe/Paris'") from None
    return value


def _json_value(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise _Invalid("a JSON value (YAML dates and the like quoted as strings)") from None
    return value


def _file_events(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(v in FILE_EVENTS for v in value):
        raise _Invalid("a non-empty list of " + ", ".join(FILE_EVENTS))
    return tuple(dict.fromkeys(value))


def _file_pattern(value: Any) -> str | None:
    if not isinstance(value, str) or not value or "/" in value:
        raise _Invalid("a file-name pattern without '/', such as '*.csv'")
    return value


def _bucket(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip() or "/" in value:
        raise _Invalid("a bucket name (no '/')")
    return value


SCHEDULE_TRIGGER_SETTINGS = _settings(
    Setting("schedule", _expression, REQUIRED, "When it fires: `rate(N unit)` (minute(s), "
            "hour(s), day(s); `second(s)` is Sora's extension for development; singular only "
            "with 1, as EventBridge), `cron(min hour day-of-month month day-of-week year)` "
            "(EventBridge's 6 fields), `at(yyyy-mm-ddThh:mm:ss)` (once), or a plain 5-field "
            "cron line (`*/5 * * * *`). See \"Schedule expressions\" below."),
    Setting("timezone", _timezone, "UTC", "IANA time zone the cron line or `at()` time is "
            "read in (`Europe/Paris`). A local time skipped by a daylight-saving change does "
            "not fire; one that repeats fires once, at its first occurrence. `rate()` ignores it."),
    Setting("input", _json_value, None, "JSON sent to the function instead of EventBridge's "
            "Scheduled Event, verbatim (as EventBridge's constant input)."),
    Setting("enabled", _bool, True, "`false`: the schedule does nothing (it is still "
            "validated, and shown)."),
    Setting("overlap", _one_of(OVERLAP_MODES), "forbid", "`forbid`: a firing while the "
            "previous firing's run is still queued or running is skipped (and recorded as "
            "skipped); `allow`: every firing is queued."),
    Setting("missed", _one_of(MISSED_MODES), "latest", "After the host was down: `latest` "
            "runs the most recent missed time once; `skip` runs none. A time is never fired "
            "twice, restart or not."),
)

FILE_TRIGGER_SETTINGS = _settings(
    Setting("path", _nonempty_str, REQUIRED, "The folder watched: relative to the function "
            "folder, or absolute. It must exist, and may not be inside Sora's `stateDir` nor "
            "inside another function's folder (nor hold them). One inside the function folder "
            "must be reached without a symbolic link. It is mounted into the function's "
            "sandbox at the same path, read-only unless `writable`."),
    Setting("events", _file_events, ["created"], "Which changes fire: any of `created`, "
            "`modified` (both sent as S3's `ObjectCreated:Put`) and `deleted` "
            "(`ObjectRemoved:Delete`). A file renamed into the folder is created."),
    Setting("pattern", _file_pattern, None, "Only files whose name (not path) matches this "
            "shell pattern (`*.csv`). Default: every file."),
    Setting("recursive", _bool, False, "Also watch the subfolders; the event's key is then "
            "the path relative to the watched folder (`2026/12/report.csv`)."),
    Setting("debounceMs", _int_range(0, MAX_DEBOUNCE_MS), 200, "Milliseconds a file must "
            "stay unchanged before its change fires: a file still being written fires once, "
            "when complete (0 to 60000)."),
    Setting("bucket", _bucket, None, "The event's `s3.bucket.name` (and its ARN). Default: "
            "the folder's name."),
    Setting("writable", _bool, False, "Mount the folder writable into the function's "
            "sandbox, so it can move or delete the files it processed."),
    Setting("enabled", _bool, None, "`false`: the watcher does nothing. May also sit beside "
            "`file:` (`{file: {...}, enabled: false}`); default true."),
)


def _schedule_trigger(item: dict, index: int, where: str,
                      problems: list[str]) -> ScheduleTrigger | None:
    from .triggers import schedule
    before = len(problems)
    values = _validate_mapping(item, SCHEDULE_TRIGGER_SETTINGS, f"{where}.", problems)
    if len(problems) > before:
        return None
    try:
        schedule.parse(values["schedule"], values["timezone"], anchor=0.0)
    except ValueError as exc:   # its message says what was expected and what it got
        problems.append(f"{where}.schedule: {exc}")
        return None
    return ScheduleTrigger(expression=values.pop("schedule"), index=index, **values)


def _file_trigger(directory: str, item: dict, index: int, where: str,
                  problems: list[str]) -> FileTrigger | None:
    if _unknown_keys(item, ("file", "enabled"), where, problems):
        return None
    spec = item["file"]
    if isinstance(spec, str):
        spec = {"path": spec}
    if not isinstance(spec, dict):
        problems.append(f"{where}.file: expected {{path: FOLDER, events, pattern, recursive, "
                        f"debounceMs, bucket, writable}}, got {_show(spec)}")
        return None
    where_file = f"{where}.file"
    before = len(problems)
    values = _validate_mapping(spec, FILE_TRIGGER_SETTINGS, f"{where_file}.", problems)
    outer = _checked(f"{where}.enabled", item["enabled"], _bool, problems) \
        if "enabled" in item else None
    if len(problems) > before:
        return None
    if outer is not None and values["enabled"] is not None and outer != values["enabled"]:
        problems.append(f"{where_file}.enabled: expected the same value as {where}.enabled "
                        f"(given twice), got {_show(values['enabled'])}")
        return None
    enabled = next((v for v in (values.pop("enabled"), outer) if v is not None), True)
    path = watched_path(directory, values.pop("path"))
    problem = _watchable(directory, path)
    if problem:
        problems.append(f"{where_file}.path: expected an existing folder ({problem}), got "
                        f"{_show(spec['path'])}")
        return None
    values["events"] = tuple(values["events"])   # the default is the Setting's list
    return FileTrigger(path=path, index=index, enabled=enabled, **values)


def watched_path(directory: str, path: str) -> str:
    """A file trigger's folder: relative ones joined to the function folder; normalised, not
    resolved through links (the watcher and the sandbox walk it without following any)."""
    return os.path.normpath(os.path.join(directory, os.path.expanduser(path)))


def _watchable(directory: str, path: str) -> str | None:
    """Why `path` cannot be watched, or None. A folder inside the function folder is reached
    from it without following a link (setup, or the function with writableFolder, could have
    put one there); one elsewhere is the operator's, checked as named."""
    top = directory.rstrip(os.sep) + os.sep
    if path == directory or path.startswith(top):
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.close(nofollow.open_dir_beneath(fd, os.path.relpath(path, directory)))
            finally:
                os.close(fd)
        except OSError as exc:
            return f"reached without a link from the function folder: {exc.strerror or exc}"
        return None
    if not os.path.isdir(path):
        return "not found" if not os.path.lexists(path) else "not a folder"
    return None


@dataclass(frozen=True)
class FunctionConfig:
    name: str
    directory: str
    language: str
    entrypoint: str
    handler: str
    runtime: str | None
    setup: list[str]
    setupTimeout: float
    trigger: tuple[Trigger, ...]
    timeout: float
    memory: int
    env: dict[str, str]
    secrets: tuple[SecretSpec, ...]
    minInstances: int
    maxInstances: int
    concurrency: int
    idleTimeout: float
    workers: int
    maxQueued: int
    eventInvoke: EventInvokeConfig = field(default_factory=EventInvokeConfig)
    coldStart: str = "never"
    auth: str = "apiKey"
    isolation: str = "sandbox"
    writableFolder: bool = False
    network: bool = True
    tmpSize: int = 512
    image: str | None = None   # isolation: container, package: image
    package: str = "zip"
    taskRoot: str = DEFAULT_TASK_ROOT
    # SHA-256 of the sora.yaml bytes this config was read from: the operator's file as it was
    # before any setup ran, which setup is checked against (setup must not change it).
    sourceDigest: str = ""
    # The uid its sandbox runs as when Sora is root, one of its own on this host
    # (`isolation.uids.assign_uids`, by load_host_config); 0: its name's hashed uid.
    sandboxUid: int = 0
    # "$LATEST" (the folder as it is), or the number of a published version whose config
    # this is (sora.versions.store: `directory` is then the version's own copy).
    version: str = "$LATEST"

    # Created through the Lambda management API (sora.deploy): its settings are the
    # function.json beside its code folder, which Sora wrote, not a sora.yaml in the folder.
    managed: bool = False

    @property
    def source(self) -> str:
        if self.managed:
            return os.path.join(os.path.dirname(self.directory), MANAGED_CONFIG_FILE)
        return os.path.join(self.directory, FUNCTION_FILE)

    @property
    def http(self) -> bool:
        """Reachable by its function URL (an `http` trigger); the Invoke API reaches it anyway."""
        return any(t.kind == "http" for t in self.trigger)

    @property
    def schedules(self) -> tuple[ScheduleTrigger, ...]:
        """Its schedule triggers, enabled or not (callers check `.enabled`)."""
        return tuple(t for t in self.trigger if isinstance(t, ScheduleTrigger))

    @property
    def files(self) -> tuple[FileTrigger, ...]:
        """Its file triggers, enabled or not (callers check `.enabled`)."""
        return tuple(t for t in self.trigger if isinstance(t, FileTrigger))

    @property
    def data_dirs(self) -> tuple[str, ...]:
        """Its file triggers' folders inside its own folder, relative to it: what is dropped
        there is data, not code, so it neither makes a reload replace the function nor setup
        run again (sora.supervisor.reload_plan.fingerprint, sora.setup.run.content_hash)."""
        inside = (os.path.relpath(t.path, self.directory) for t in self.files)
        return tuple(sorted({r for r in inside if r != "." and not r.startswith("..")}))

    @property
    def entrypoint_path(self) -> str:
        return os.path.join(self.directory, self.entrypoint)

    @property
    def sandboxed(self) -> bool:
        """In a bubblewrap sandbox (isolation: sandbox)."""
        return self.isolation == "sandbox"

    @property
    def containerized(self) -> bool:
        """In containers of `image` through the Docker engine (isolation: container)."""
        return self.isolation == "container"


@dataclass(frozen=True)
class BrokenFunction:
    """A function folder that could not be loaded: reported and skipped, the others serve."""
    name: str          # its declared name where readable, else the folder's name
    directory: str
    reason: str


@dataclass(frozen=True)
class DockerConfig:
    socket: str = DOCKER_SETTINGS["socket"].default


@dataclass(frozen=True)
class ServerConfig:
    httpPort: int | None
    httpsPort: int | None
    sslCertPath: str | None
    sslKeyPath: str | None
    bind: str
    gatewayWorkers: int
    maxBodyBytes: int
    gracefulTimeout: float
    headerTimeout: float = 10.0
    bodyTimeout: float = 30.0
    maxEventBytes: int = SERVER_SETTINGS["maxEventBytes"].default
    errorDetail: str = SERVER_SETTINGS["errorDetail"].default
    dashboard: bool = SERVER_SETTINGS["dashboard"].default
    metrics: bool = SERVER_SETTINGS["metrics"].default
    docker: DockerConfig = field(default_factory=DockerConfig)


@dataclass(frozen=True)
class RecordsConfig:
    maxPerFunction: int = 10_000
    maxAgeHours: float = 168.0
    maxLogBytesPerInvocation: int = RECORDS_SETTINGS["maxLogBytesPerInvocation"].default
    maxStoreMB: int = RECORDS_SETTINGS["maxStoreMB"].default


@dataclass(frozen=True)
class StoreConfig:
    """host-config.yaml `store:`. `url` (PostgreSQL) holds the password: never in a repr, so
    never in a log line or a traceback; what is shown is `display_url`."""
    kind: str = "sqlite"                       # sqlite | postgresql
    url: str | None = field(default=None, repr=False)
    poolSize: int = STORE_SETTINGS["poolSize"].default
    urlEnv: str | None = None                  # the variable the URL was read from, if any

    @property
    def display_url(self) -> str:
        """The URL with its password (and any `password=` parameter) as `***`; for SQLite,
        `sqlite` (the files' paths are shown by whoever opens them)."""
        return display_url(self.url) if self.url else self.kind

    def __repr__(self) -> str:
        return f"StoreConfig(kind={self.kind!r}, url={self.display_url!r}, " \
            f"poolSize={self.poolSize}, urlEnv={self.urlEnv!r})"


def _store(data: Any, problems: list[str], environ=os.environ) -> StoreConfig:
    """host-config.yaml `store:` as a StoreConfig; a PostgreSQL URL is checked for its shape
    here (reaching the database is the store's first connection's business), and never echoed
    with its password."""
    if data == "sqlite":
        return StoreConfig()
    if not isinstance(data, dict):
        if isinstance(data, str) and STORE_URL_RE.match(data):
            problems.append("store: expected `sqlite` or a mapping {url: postgresql://...}, "
                            f"got a URL string {display_url(data)!r} (put it under `url:`)")
        else:
            problems.append("store: expected `sqlite` or a mapping {url: postgresql://..., "
                            f"poolSize: N}}, got {_show(data)}")
        return StoreConfig()
    before = len(problems)
    url_value = data.get("url")
    # The generic validator echoes a bad value: a URL string is checked here instead.
    values = _validate_mapping({k: v for k, v in data.items() if k != "url"} |
                               ({"url": None} if "url" in data else {}),
                               STORE_SETTINGS, "store.", problems)
    if len(problems) > before:
        return StoreConfig()
    if url_value is not None and values["urlEnv"] is not None:
        problems.append("store: expected either url or urlEnv, got both")
        return StoreConfig()
    if url_value is None and values["urlEnv"] is None:
        problems.append("store: expected url (postgresql://USER:PASSWORD@HOST:PORT/DBNAME) or "
                        "urlEnv (the environment variable holding it)")
        return StoreConfig()
    where = "store.url"
    if values["urlEnv"] is not None:
        where = f"store.urlEnv ({values['urlEnv']})"
        url_value = environ.get(values["urlEnv"])
        if not url_value:
            problems.append(f"{where}: expected the environment variable to hold a "
                            "postgresql:// URL, got it unset or empty")
            return StoreConfig()
    if not isinstance(url_value, str) or not STORE_URL_RE.match(url_value) or \
            any(c.isspace() for c in url_value):
        shown = display_url(url_value) if isinstance(url_value, str) else \
            type(url_value).__name__
        problems.append(f"{where}: expected a postgresql:// URL "
                        f"(postgresql://USER:PASSWORD@HOST:PORT/DBNAME), got {shown!r}")
        return StoreConfig()
    return StoreConfig(kind="postgresql", url=url_value, poolSize=values["poolSize"],
                       urlEnv=values["urlEnv"])


@dataclass(frozen=True)
class VersionsConfig:
    keep: int = VERSIONS_SETTINGS["keep"].default


@dataclass(frozen=True)
class LogsConfig:
    maxFileMB: int = LOGS_SETTINGS["maxFileMB"].default
    keepFiles: int = LOGS_SETTINGS["keepFiles"].default


@dataclass(frozen=True)
class ApiKey:
    """One caller's key. A key sent as it is (`Authorization: Bearer`, `X-Api-Key`) is
    compared by its SHA-256 `digest`, in constant time; `secret` is the key itself, which
    checking an AWS Signature Version 4 needs (sora.gateway.sigv4: the name is the access key
    id, the key the secret access key). Never in a repr, so never in a log or a traceback."""
    name: str
    digest: bytes
    scopes: tuple[str, ...]
    secret: str = field(default="", repr=False, compare=False)

    def allows(self, scope: str, function: str | None = None) -> bool:
        if "admin" in self.scopes:
            return True
        if scope == "invoke":
            return "invoke" in self.scopes or f"invoke:{function}" in self.scopes
        if scope == "metrics":   # GET /metrics: a scraper's key needs nothing else
            return "metrics" in self.scopes
        return False


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class ManagedFunctionsConfig:
    maxZipMB: int = MANAGED_SETTINGS["maxZipMB"].default
    maxUnzippedMB: int = MANAGED_SETTINGS["maxUnzippedMB"].default
    maxFiles: int = MANAGED_SETTINGS["maxFiles"].default


@dataclass(frozen=True)
class LimitsConfig:
    maxInstances: int
    maxMemoryMB: int


@dataclass(frozen=True)
class ClusterConfig:
    """host-config.yaml `cluster:`; `keys` is an absolute path, checked at load."""
    name: str
    keys: str | None = None
    listen: str | None = None
    controlPlane: str | None = None
    controlPlaneKey: bytes | None = None   # z85 public key of the main host (joined hosts)
    advertise: str | None = None

    @property
    def records_listen(self) -> str | None:
        """Where the main host's recorder takes joined hosts' records: `listen`'s port + 1."""
        return records_endpoint_of(self.listen) if self.listen else None

    @property
    def records_endpoint(self) -> str | None:
        """Where a joined host sends its records: `controlPlane`'s port + 1."""
        return records_endpoint_of(self.controlPlane) if self.controlPlane else None


def records_endpoint_of(endpoint: str) -> str:
    """The records endpoint beside a cluster endpoint: the same address, the port + 1."""
    address, port = endpoint.rsplit(":", 1)
    return f"{address}:{int(port) + 1}"


@dataclass(frozen=True)
class HostConfig:
    path: str
    server: ServerConfig
    stateDir: str
    records: RecordsConfig = field(default_factory=RecordsConfig)
    logs: LogsConfig = field(default_factory=LogsConfig)
    versions: VersionsConfig = field(default_factory=VersionsConfig)
    minFreeDiskMB: int = HOST_SETTINGS["minFreeDiskMB"].default
    limits: LimitsConfig = field(default_factory=lambda: default_limits({}))
    prestartedRuntimes: int = 2
    apiKeys: tuple[ApiKey, ...] = ()
    cluster: ClusterConfig = field(default_factory=lambda: ClusterConfig(name=default_host_name()))
    functions: list[FunctionConfig] = field(default_factory=list)
    broken: list[BrokenFunction] = field(default_factory=list)
    managedFunctions: ManagedFunctionsConfig = field(default_factory=ManagedFunctionsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)

    def function(self, name: str) -> FunctionConfig | None:
        return next((f for f in self.functions if f.name == name), None)

    def knows(self, name: str) -> bool:
        """A function of this host, serving or broken."""
        return self.function(name) is not None or any(b.name == name for b in self.broken)


def load_function_config(directory: str) -> FunctionConfig:
    """Load and validate one function folder's sora.yaml; raise ConfigError if broken."""
    directory = os.path.abspath(directory)
    path = os.path.join(directory, FUNCTION_FILE)
    if not os.path.isdir(directory):
        raise ConfigError(path, ["function folder does not exist"])
    if os.path.islink(path):
        # It is bound read-only over itself in the function's sandbox, and checked unchanged
        # after setup without following links: a link would be neither.
        raise ConfigError(path, [f"expected a regular file, got a link to "
                                 f"{os.readlink(path)} (copy the file into the folder)"])
    raw = _read_bytes(path, in_function_folder=True)   # once: the digest is of what is validated
    return function_from_data(directory, path, _parse_yaml(path, raw), source_digest(raw))


def function_from_data(directory: str, path: str, data: Any, digest: str,
                       managed: bool = False) -> FunctionConfig:
    """A function's settings (a sora.yaml's, or a managed function's function.json `config`)
    validated by the one set of rules; raise ConfigError naming `path` if broken."""
    problems: list[str] = []
    values = _validate_mapping(data, FUNCTION_SETTINGS, "", problems)
    event_values = _validate_mapping(values.get("eventInvoke") or {}, EVENT_INVOKE_SETTINGS,
                                     "eventInvoke.", problems)
    if not problems:
        _check_package(data, values, problems)
    if not problems and values["language"] != IMAGE_LANGUAGE:
        _check_language(directory, values, problems)
    if not problems:
        _resolve_scaling(data, values, problems)
    if "trigger" in values:
        values["trigger"] = _triggers(directory, values["trigger"], problems)
    if not problems:
        _check_container(values, problems)
    if problems:
        raise ConfigError(path, problems)
    if event_values["maxConcurrency"] is None:
        event_values["maxConcurrency"] = min(values["concurrency"], 1024)
    values["eventInvoke"] = EventInvokeConfig(**event_values)
    return FunctionConfig(directory=directory, sourceDigest=digest, managed=managed, **values)


def managed_functions_dir(state_dir: str) -> str:
    """Where functions created through the Lambda management API live (sora.deploy.store)."""
    return os.path.join(state_dir, MANAGED_FUNCTIONS_DIR)


def load_managed_function(folder: str) -> FunctionConfig:
    """A function created through the management API: `<folder>/function.json` (written by
    Sora, in the state dir no function reaches) holds its settings under `config`, validated
    as a sora.yaml is; its code is `<folder>/code/`. Raise ConfigError if broken."""
    folder = os.path.abspath(folder)
    path = os.path.join(folder, MANAGED_CONFIG_FILE)
    code = os.path.join(folder, MANAGED_CODE_DIR)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(path, [f"unreadable ({exc.strerror})"]) from None
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(path, [f"invalid JSON: {exc}"]) from None
    data = document.get("config") if isinstance(document, dict) else None
    if not isinstance(data, dict):
        raise ConfigError(path, ["config: expected a mapping of the function's settings"])
    if data.get("name") != os.path.basename(folder):
        raise ConfigError(path, [f"name: expected the folder's name "
                                 f"{os.path.basename(folder)!r}, got {_show(data.get('name'))}"])
    if not os.path.isdir(code) or os.path.islink(code):
        raise ConfigError(path, [f"expected the function's code in the folder {code}"])
    digest = source_digest(json.dumps(data, sort_keys=True).encode())
    return function_from_data(code, path, data, digest, managed=True)


def source_digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def default_max_instances(memory_mb: int) -> int:
    """4 per core (most functions wait on I/O more than they compute), and no more than half
    the host's memory holds."""
    by_memory = int(psutil.virtual_memory().total / (1 << 20) / 2 // memory_mb)
    return max(1, min(4 * (os.cpu_count() or 1), by_memory))


def _resolve_scaling(data: dict, values: dict[str, Any], problems: list[str]) -> None:
    """minInstances / maxInstances / concurrency, from `instances` or their own fields."""
    fixed = values.pop("instances")
    if fixed is not None:
        for name in ("minInstances", "maxInstances"):
            if data.get(name) is not None:
                problems.append(f"{name}: expected no {name} beside instances (instances: "
                                f"{fixed} sets both), got {_show(data[name])}")
        values["minInstances"] = values["maxInstances"] = fixed
    if values["maxInstances"] is None:
        values["maxInstances"] = max(values["minInstances"],
                                     default_max_instances(values["memory"]))
    elif values["maxInstances"] < values["minInstances"]:
        problems.append(f"maxInstances: expected at least minInstances "
                        f"({values['minInstances']}), got {values['maxInstances']}")
    if values["concurrency"] is None:
        values["concurrency"] = values["maxInstances"] * values["workers"]
    elif values["concurrency"] < values["minInstances"] * values["workers"]:
        # Instances kept idle could all run at once: the cap must leave room for them.
        problems.append(f"concurrency: expected at least minInstances x workers "
                        f"({values['minInstances'] * values['workers']}), got "
                        f"{values['concurrency']}")


def _check_package(data: dict, values: dict[str, Any], problems: list[str]) -> None:
    """`package` and what follows from it: a Lambda container image (`package: image`) is
    run by its own entrypoint, in a container; a zip (the folder) needs its language."""
    given = {name for name, value in data.items() if value is not None}
    if values["package"] == "zip":
        if values["language"] is None:
            problems.append("language: required field is missing ("
                            + FUNCTION_SETTINGS["language"].doc.split(".")[0].lower()
                            + ", unless package is image)")
        elif values["language"] == IMAGE_LANGUAGE:
            problems.append(f"language: expected one of: {', '.join(LANGUAGES)} with package: "
                            f"zip (the default; a Lambda container image takes package: "
                            f"image), got 'image'")
        return
    if values["language"] not in (None, IMAGE_LANGUAGE):
        problems.append(f"language: expected no language with package: image (the image's "
                        f"ENTRYPOINT runs, as for Lambda's Image package type), got "
                        f"{_show(values['language'])}")
    for name in ("entrypoint", "runtime"):
        if name in given:
            problems.append(f"{name}: expected no {name} with package: image (the image's "
                            f"ENTRYPOINT and CMD run; `handler` replaces CMD), got "
                            f"{_show(data[name])}")
    if "isolation" in given and values["isolation"] != "container":
        problems.append(f"isolation: expected 'container' (or none given) with package: "
                        f"image, got {_show(values['isolation'])}")
    values["language"] = IMAGE_LANGUAGE
    values["isolation"] = "container"
    values["entrypoint"] = ""
    # Without `handler` the image's CMD runs: "" says so to the image runtime.
    values["handler"] = values["handler"] if "handler" in given else ""


def _check_container(values: dict[str, Any], problems: list[str]) -> None:
    """The settings that only `isolation: container` takes, and those it cannot take yet."""
    if values["isolation"] != "container":
        for name, default in (("image", None), ("taskRoot", DEFAULT_TASK_ROOT)):
            if values[name] != default:
                problems.append(f"{name}: expected no {name} unless isolation is container "
                                f"(it is {values['isolation']!r}), got {_show(values[name])}")
        return
    if values["image"] is None:
        problems.append("image: required field is missing with isolation: container (the "
                        "image the function runs in, NAME[:TAG], from `docker images`)")
    if values["language"] == "provided":
        problems.append("isolation: expected 'sandbox' or 'none' for language provided "
                        "(containers run nodejs and python functions, and Lambda container "
                        "images with package: image), got 'container'")
    if values["writableFolder"]:
        problems.append("writableFolder: expected false with isolation: container (the "
                        "engine binds a folder by its path, following links, as root: a "
                        "folder the function can write could be made to point anywhere), "
                        "got true")
    for trigger in values["trigger"]:
        if isinstance(trigger, FileTrigger):
            problems.append(f"trigger[{trigger.index}].file: expected no file trigger with "
                            f"isolation: container (the engine binds a watched folder by its "
                            f"path, following links, as root: a folder the function could "
                            f"replace cannot be bound safely), got {_show(trigger.path)}")


def _check_language(directory: str, values: dict[str, Any], problems: list[str]) -> None:
    """The checks that depend on the language: entrypoint, handler and runtime."""
    language = values["language"]
    extensions = LANGUAGES[language]
    if extensions is None:  # provided: the executable may be built by setup, checked at start
        values["entrypoint"] = values["entrypoint"] or PROVIDED_DEFAULT_ENTRYPOINT
        if values["runtime"] is not None:
            problems.append(f"runtime: expected no runtime for language provided (it runs "
                            f"its entrypoint), got {_show(values['runtime'])}")
        return
    lambda_form = lambda_handler(language, values["handler"])
    if values["entrypoint"] is None and lambda_form is not None:
        _resolve_lambda_handler(directory, values, lambda_form, problems)
        return
    entrypoint = values["entrypoint"]
    if entrypoint is None:
        example = LAMBDA_HANDLER_EXAMPLES[language]
        problems.append(f"entrypoint: required field is missing for language {language} "
                        f"(a {', '.join(extensions)} file), unless handler names the file "
                        f"as Lambda's handler string does, such as {example[0]!r} "
                        f"({example[1]}); got handler {_show(values['handler'])}")
        return
    if lambda_form is not None and os.path.normpath(lambda_form[0]) == \
            os.path.splitext(entrypoint)[0]:
        # Both given, and the handler names the entrypoint's file as Lambda writes it
        # (`entrypoint: index.mjs` with `handler: index.handler`): it means that file's export.
        values["handler"] = lambda_form[1]
    if not os.path.isfile(os.path.join(directory, entrypoint)):
        problems.append(f"entrypoint: expected an existing file in {directory}, "
                        f"got {_show(entrypoint)} (not found)")
    elif not entrypoint.endswith(extensions):
        problems.append(f"entrypoint: expected a {', '.join(extensions)} file for language "
                        f"{language}, got {_show(entrypoint)}")
    if not HANDLER_RE.match(values["handler"]):
        problems.append(f"handler: expected the name of a function in the entrypoint, such as "
                        f"'handler' (dots reach into nested exports), got "
                        f"{_show(values['handler'])}")


def lambda_handler(language: str, handler: str) -> tuple[str, str] | None:
    """(the module's path without its extension, the export) of a handler written as Lambda
    writes it, or None if `handler` is not of that form. The split is Lambda's own for each
    language: for Node.js at the first dot after the last `/` (`src/app.handler`; what
    follows may reach into nested exports, `index.api.get`), for Python at the last dot, the
    module being a path or a dotted name (`app.lambda_handler`, `pkg.app.handler`)."""
    if language == "python":
        module, dot, export = handler.rpartition(".")
        parts = module.replace("/", ".").split(".")
        if not dot or not export.isidentifier() or not all(p.isidentifier() for p in parts):
            return None
        return "/".join(parts), export
    if language == "nodejs":
        folder, slash, base = handler.rpartition("/")
        module, dot, export = base.partition(".")
        if not dot or not module or not HANDLER_RE.match(export) or \
                not all(LAMBDA_PATH_PART_RE.match(p) for p in folder.split("/") if slash):
            return None
        return folder + slash + module, export
    return None


def _resolve_lambda_handler(directory: str, values: dict[str, Any],
                            lambda_form: tuple[str, str], problems: list[str]) -> None:
    """`handler: index.handler` without `entrypoint`: the file is found as Lambda finds it,
    trying each of the language's extensions in Lambda's order (.js, .mjs, .cjs; .py)."""
    module, export = lambda_form
    extensions = LAMBDA_EXTENSIONS[values["language"]]
    try:
        module = _relative_file(module)
    except _Invalid as exc:
        problems.append(f"handler: expected {exc}, got {_show(values['handler'])}")
        return
    found = next((module + ext for ext in extensions
                  if os.path.isfile(os.path.join(directory, module + ext))), None)
    if found is None:
        files = [module + ext for ext in extensions]
        files = ", ".join(files[:-1]) + " or " + files[-1] if len(files) > 1 else files[0]
        problems.append(f"handler: expected the file {files} in {directory} (handler "
                        f"{values['handler']!r} names it), got none (not found)")
        return
    values["entrypoint"], values["handler"] = found, export


def _resolve(base: str, path: str) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


def default_gateway_workers() -> int:
    """Half the cores: every invocation also runs through a worker and a runtime,
    which need CPU too. With as many gateway processes as cores, they compete with the rest of
    the path, and each gets smaller batches (measured on 2 cores: one gateway process serves
    ~7 % more than two)."""
    return max(1, (os.cpu_count() or 1) // 2)


def load_host_config(path: str, read_functions: bool = True) -> HostConfig:
    """Load host-config.yaml and every function it lists.

    Raises ConfigError for problems in the host config itself; broken function folders are
    returned in `broken` so the host can serve the rest. With `read_functions=False` no
    function folder is read (`functions` and `broken` are empty): the supervisor's children
    take the functions from the supervisor's snapshot instead (`sora.config_snapshot`), never
    from folders that setup or a function may have written since.
    """
    path = os.path.abspath(path)
    base = os.path.dirname(path)
    data = _read_yaml(path)
    problems: list[str] = []
    # A joined host (cluster.controlPlane) binds no port: it may leave `server:` out.
    joining = isinstance(data, dict) and isinstance(data.get("cluster"), dict) and \
        bool(data["cluster"].get("controlPlane"))
    if joining and data.get("server") is None:
        data = {**data, "server": {}}
    values = _validate_mapping(data, HOST_SETTINGS, "", problems)
    server_values = _validate_mapping(values.get("server", {}), SERVER_SETTINGS, "server.",
                                      problems) if "server" in values else {}
    records_values = _validate_mapping(values.get("records") or {}, RECORDS_SETTINGS,
                                       "records.", problems)
    logs_values = _validate_mapping(values.get("logs") or {}, LOGS_SETTINGS, "logs.", problems)
    managed_values = _validate_mapping(values.get("managedFunctions") or {}, MANAGED_SETTINGS,
                                       "managedFunctions.", problems)
    versions_values = _validate_mapping(values.get("versions") or {}, VERSIONS_SETTINGS,
                                        "versions.", problems)
    limits = default_limits(_validate_mapping(values.get("limits") or {}, LIMITS_SETTINGS,
                                              "limits.", problems))
    auth_values = _validate_mapping(values.get("auth") or {}, AUTH_SETTINGS, "auth.", problems)
    api_keys = _api_keys(base, auth_values.get("apiKeys") or [], problems)
    cluster = _cluster(base, values.get("cluster") or {}, problems)
    store = _store(values.get("store"), problems)
    docker_values = _validate_mapping(server_values.get("docker") or {}, DOCKER_SETTINGS,
                                      "server.docker.", problems) if server_values else {}
    if docker_values:
        docker_values["socket"] = _resolve(base, docker_values["socket"])
        server_values["docker"] = DockerConfig(**docker_values)
    if server_values and not problems:
        if server_values["httpPort"] is None and server_values["httpsPort"] is None and \
                not joining:
            problems.append("server: expected at least one of httpPort and httpsPort")
        if server_values["httpsPort"] is not None:
            for key in ("sslCertPath", "sslKeyPath"):
                if server_values[key] is None:
                    problems.append(f"server.{key}: required when httpsPort is set (expected a "
                                    "PEM file path)")
                else:
                    server_values[key] = _resolve(base, server_values[key])
                    if not os.path.isfile(server_values[key]):
                        problems.append(f"server.{key}: expected an existing PEM file, got "
                                        f"{server_values[key]} (not found)")
        if server_values["httpPort"] is not None and \
                server_values["httpPort"] == server_values["httpsPort"]:
            problems.append("server.httpsPort: expected a port other than httpPort")
        if server_values["gatewayWorkers"] is None:
            server_values["gatewayWorkers"] = default_gateway_workers()
    if not problems:
        # ZeroMQ's ipc sockets live in <stateDir>/run/; a Unix socket path has at most 107 bytes.
        state_dir = _resolve(base, values["stateDir"])
        # The longest is a worker's data endpoint, w-<pid>.sock (pids reach 4194304).
        longest_suffix = os.path.join("", "run", "w-4194304.sock")
        room = 107 - len(os.sep + longest_suffix)
        if len(state_dir.encode()) > room:
            problems.append(f"stateDir: expected a folder whose path is at most {room} "
                            f"characters long (sockets are made in it), got {state_dir}")
    if problems:
        raise ConfigError(path, problems)

    # Sora's own files, which no sandboxed function may have in its folder (nor another
    # function's folder).
    protected = [("stateDir", _resolve(base, values["stateDir"])), ("host config", path)]
    if server_values.get("sslKeyPath"):
        protected.append(("server.sslKeyPath", server_values["sslKeyPath"]))
    if cluster.keys:
        protected.append(("cluster.keys", cluster.keys))
    if isinstance(server_values.get("docker"), DockerConfig):
        # In a function's folder it would be bound into that function's containers.
        protected.append(("server.docker.socket", server_values["docker"].socket))
    protected += [(f"auth.apiKeys[{i}].keyFile", _resolve(base, entry["keyFile"]))
                  for i, entry in enumerate(auth_values.get("apiKeys") or [])
                  if isinstance(entry.get("keyFile"), str)]
    functions: list[FunctionConfig] = []
    broken: list[BrokenFunction] = []
    seen: dict[str, str] = {}
    for entry in values["functionPaths"] if read_functions else ():
        directory = _resolve(base, entry)
        try:
            fn = load_function_config(directory)
        except ConfigError as exc:
            broken.append(BrokenFunction(_declared_name(directory), directory, str(exc)))
            continue
        if fn.name in seen:
            broken.append(BrokenFunction(fn.name, directory, (
                f"{fn.source}: name: expected a name unique on this host, got {fn.name!r} "
                f"(already used by {seen[fn.name]})")))
            continue
        seen[fn.name] = fn.source
        functions.append(fn)
    if read_functions:
        _load_managed_functions(_resolve(base, values["stateDir"]), functions, broken, seen)
    for fn in list(functions):
        others = [(f"functionPaths ({other.name})", other.directory) for other in functions
                  if other is not fn]
        if (fn.sandboxed or fn.containerized) and \
                (inside := _own_files_inside(fn.directory, protected + others)):
            what, where = inside
            functions.remove(fn)
            broken.append(BrokenFunction(fn.name, fn.directory, (
                f"{path}: {what}: expected a path outside the function folder {fn.directory} "
                f"(its {'container' if fn.containerized else 'sandbox'} would show it to the "
                f"function), got {where}")))
    for fn in list(functions):
        problem = _watched_folder_problem(fn, protected, functions)
        if problem:
            functions.remove(fn)
            broken.append(BrokenFunction(fn.name, fn.directory, problem))
    for fn in list(functions):
        # The store's URL (its password) is never a function's, not even by its own config.
        taken = [spec.name for spec in fn.secrets if store.urlEnv and spec.env == store.urlEnv]
        if taken:
            functions.remove(fn)
            broken.append(BrokenFunction(fn.name, fn.directory, (
                f"{fn.source}: secrets.{taken[0]}.env: expected a variable other than "
                f"{store.urlEnv}, the store's URL (host-config.yaml store.urlEnv), which no "
                "function is given")))
    uids = assign_uids([fn.name for fn in functions])
    functions = [dataclasses.replace(fn, sandboxUid=uids[fn.name]) for fn in functions]
    _check_limits(path, limits, functions)
    return HostConfig(path=path, server=ServerConfig(**server_values),
                      stateDir=_resolve(base, values["stateDir"]),
                      records=RecordsConfig(**records_values), logs=LogsConfig(**logs_values),
                      versions=VersionsConfig(**versions_values),
                      minFreeDiskMB=values["minFreeDiskMB"], limits=limits,
                      prestartedRuntimes=values["prestartedRuntimes"], apiKeys=api_keys,
                      cluster=cluster,
                      functions=functions, broken=broken,
                      managedFunctions=ManagedFunctionsConfig(**managed_values),
                      store=store)


def _load_managed_functions(state_dir: str, functions: list[FunctionConfig],
                            broken: list[BrokenFunction], seen: dict[str, str]) -> None:
    """The functions created through the management API, after the functionPaths ones: a name
    a functionPaths function already has is reported broken (the API refuses to create one,
    but a sora.yaml may take the name later)."""
    root = managed_functions_dir(state_dir)
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return
    for name in names:
        # Dot names are the store's own: uploads being extracted, replaced or deleted code.
        if name.startswith(".") or not FUNCTION_NAME_RE.match(name):
            continue
        folder = os.path.join(root, name)
        try:
            fn = load_managed_function(folder)
        except ConfigError as exc:
            broken.append(BrokenFunction(name, os.path.join(folder, MANAGED_CODE_DIR), str(exc)))
            continue
        if fn.name in seen:
            broken.append(BrokenFunction(fn.name, fn.directory, (
                f"{fn.source}: name: expected a name unique on this host, got {fn.name!r} "
                f"(already used by {seen[fn.name]}; delete the function created through the "
                f"API, or rename the functionPaths one)")))
            continue
        seen[fn.name] = fn.source
        functions.append(fn)


def _watched_folder_problem(fn: FunctionConfig, protected: list[tuple[str, str]],
                            functions: list[FunctionConfig]) -> str | None:
    """Why a file trigger's folder may not be watched, or None. Only the host config knows
    the state dir and every function: a watched folder inside the state dir or another
    function's folder would hand this function their files (mounted into its sandbox, and
    sent as events); one holding them would too, and would fire on Sora's own writes."""
    others = [(f"functionPaths ({other.name})", other.directory) for other in functions
              if other is not fn]
    state_dir = dict(protected)["stateDir"]
    for trigger in fn.files:
        where = f"{fn.source}: trigger[{trigger.index}].file.path"
        for what, folder in [("stateDir", state_dir)] + others:
            if _own_files_inside(folder, [(what, trigger.path)]):
                return (f"{where}: expected a folder outside {what} {folder}, got "
                        f"{trigger.path}")
        inside = _own_files_inside(trigger.path, protected + others)
        if inside:
            return (f"{where}: expected a folder that holds none of Sora's files nor another "
                    f"function's folder, got {trigger.path} (holds {inside[0]}: {inside[1]})")
    return None


def _own_files_inside(directory: str, protected: list[tuple[str, str]]) -> tuple[str, str] | None:
    """The first of Sora's own paths (what names it, path) inside `directory`, if any."""
    top = os.path.realpath(directory)
    for what, where in protected:
        real = os.path.realpath(where)
        if real == top or real.startswith(top.rstrip(os.sep) + os.sep):
            return what, where
    return None


def _api_keys(base: str, entries: list[dict], problems: list[str]) -> tuple[ApiKey, ...]:
    """Each `auth.apiKeys` entry, its key read and hashed; problems name the entry by index."""
    keys = []
    names = set()
    for i, entry in enumerate(entries):
        where = f"auth.apiKeys[{i}]"
        unknown = set(entry) - {"name", "scopes", "key", "keyFile", "keyEnv"}
        if unknown:
            problems.append(f"{where}.{sorted(unknown)[0]}: unknown field; known fields: "
                            "name, scopes, key, keyFile, keyEnv")
            continue
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip() or name in names:
            problems.append(f"{where}.name: expected a name unique among the keys, got "
                            f"{_show(name)}")
            continue
        names.add(name)
        scopes = entry.get("scopes")
        if not isinstance(scopes, list) or not scopes or not all(
                isinstance(sc, str) and API_KEY_SCOPE_RE.match(sc) for sc in scopes):
            problems.append(f"{where}.scopes: expected a non-empty list of 'admin', "
                            f"'metrics', 'invoke' or 'invoke:<function name>', got "
                            f"{_show(scopes)}")
            continue
        sources = [k for k in ("key", "keyFile", "keyEnv") if entry.get(k) is not None]
        if len(sources) != 1:
            problems.append(f"{where}: expected exactly one of key, keyFile and keyEnv, got "
                            f"{', '.join(sources) or 'none'}")
            continue
        source = sources[0]
        value = entry[source]
        if not isinstance(value, str) or not value:
            problems.append(f"{where}.{source}: expected a non-empty string")
            continue
        if source == "keyFile":
            path = _resolve(base, value)
            try:
                with open(path, encoding="utf-8") as fh:
                    key = fh.read().strip()
            except OSError as exc:
                problems.append(f"{where}.keyFile: expected a readable file holding the key, "
                                f"got {path} ({exc.strerror})")
                continue
        elif source == "keyEnv":
            key = os.environ.get(value, "")
            if not key:
                problems.append(f"{where}.keyEnv: expected the name of a set environment "
                                f"variable holding the key, got {value!r} (not set)")
                continue
        else:
            key = value
        if len(key) < MIN_API_KEY_LENGTH or any(c.isspace() for c in key):
            problems.append(f"{where}.{source}: expected a key of at least "
                            f"{MIN_API_KEY_LENGTH} characters without spaces (the value is not "
                            "shown)")
            continue
        keys.append(ApiKey(name, key_digest(key), tuple(scopes), key))
    return tuple(keys)


def default_host_name() -> str:
    """This machine's name, cut to what `cluster.name` accepts."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname() or "host")[:63]
    return name if name[:1].isalnum() else "host-" + name[:58]


def _cluster(base: str, data: dict, problems: list[str]) -> ClusterConfig:
    """host-config.yaml `cluster:`, with the rules that tie its fields together; the keys
    folder is checked now, so a host that cannot talk to the others does not start."""
    before = len(problems)
    values = _validate_mapping(data, CLUSTER_SETTINGS, "cluster.", problems)
    if len(problems) > before:
        return ClusterConfig(name=default_host_name())
    name = values["name"] or default_host_name()
    listen, control, keys = values["listen"], values["controlPlane"], values["keys"]
    for field_name, value in (("listen", listen), ("controlPlane", control)):
        if value and not keys:
            problems.append(f"cluster.keys: required when cluster.{field_name} is set (expected "
                            "a keys folder made by `sora keys init`: every tcp socket between "
                            "hosts uses CURVE)")
    if listen and control:
        problems.append("cluster.controlPlane: expected either listen (the main host) or "
                        "controlPlane (a joined host), got both")
    if control and not values["advertise"]:
        problems.append("cluster.advertise: required when cluster.controlPlane is set "
                        "(expected the host name or IP other hosts reach this host's workers at)")
    if values["controlPlaneKey"] and not control:
        problems.append("cluster.controlPlaneKey: expected only with cluster.controlPlane")
    server_key = None
    if keys and len(problems) == before:
        keys = _resolve(base, keys)
        try:
            ring = load_keys(keys)
            if control:
                server_key = _control_plane_key(ring, values["controlPlaneKey"], problems)
        except KeysError as exc:
            problems.append(f"cluster.keys: {exc}")
    return ClusterConfig(name=name, keys=keys, listen=listen, controlPlane=control,
                         controlPlaneKey=server_key, advertise=values["advertise"])


def _control_plane_key(ring, name: str | None, problems: list[str]) -> bytes | None:
    allowed = ring.allowed_keys()
    if name:
        if name not in allowed:
            problems.append(f"cluster.controlPlaneKey: expected the name of a certificate in "
                            f"{ring.allowed_dir} (known: {', '.join(allowed) or 'none'}), "
                            f"got {name!r}")
            return None
        return allowed[name]
    others = {n: k for n, k in allowed.items() if k != ring.public}
    if len(others) == 1:
        return next(iter(others.values()))
    problems.append("cluster.controlPlaneKey: required when the allow-list does not hold "
                    "exactly one other host's certificate (expected the name of the main host's, "
                    f"one of: {', '.join(others) or 'none: add it with `sora keys add`'})")
    return None


def default_limits(values: dict[str, Any]) -> LimitsConfig:
    total_mb = int(psutil.virtual_memory().total / (1 << 20))
    return LimitsConfig(
        maxInstances=values.get("maxInstances") or 16 * (os.cpu_count() or 1),
        maxMemoryMB=values.get("maxMemoryMB") or total_mb * 3 // 4)


def _check_limits(path: str, limits: LimitsConfig, functions: list[FunctionConfig]) -> None:
    """The instances kept even when idle must fit the host-wide limits, or scaling could not
    keep them."""
    problems = []
    kept = sum(f.minInstances * f.workers for f in functions)
    memory = sum(f.minInstances * f.workers * f.memory for f in functions)
    if kept > limits.maxInstances:
        problems.append(f"limits.maxInstances: expected at least {kept} (the functions' "
                        f"minInstances x workers add up to that), got {limits.maxInstances}")
    if memory > limits.maxMemoryMB:
        problems.append(f"limits.maxMemoryMB: expected at least {memory} (the functions' "
                        f"minInstances x workers x memory add up to that), got "
                        f"{limits.maxMemoryMB}")
    if problems:
        raise ConfigError(path, problems)


def _declared_name(directory: str) -> str:
    """Best-effort name of a broken function, so health can report it under its own name."""
    try:
        data = _read_yaml(os.path.join(directory, FUNCTION_FILE), in_function_folder=True)
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            return data["name"]
    except (OSError, ConfigError):
        pass
    return os.path.basename(directory.rstrip(os.sep)) or directory


def settings_markdown() -> str:
    """The configuration reference, generated from the declarations above."""
    out = []
    for title, settings in (("host-config.yaml", HOST_SETTINGS),
                            ("host-config.yaml `server:`", SERVER_SETTINGS),
                            ("host-config.yaml `server.docker:`", DOCKER_SETTINGS),
                            ("host-config.yaml `records:`", RECORDS_SETTINGS),
                            ("host-config.yaml `logs:`", LOGS_SETTINGS),
                            ("host-config.yaml `versions:`", VERSIONS_SETTINGS),
                            ("host-config.yaml `store:` (PostgreSQL)", STORE_SETTINGS),
                            ("host-config.yaml `limits:`", LIMITS_SETTINGS),
                            ("host-config.yaml `auth:`", AUTH_SETTINGS),
                            ("host-config.yaml `cluster:`", CLUSTER_SETTINGS),
                            ("host-config.yaml `managedFunctions:`", MANAGED_SETTINGS),
                            ("sora.yaml", FUNCTION_SETTINGS),
                            ("sora.yaml `eventInvoke:`", EVENT_INVOKE_SETTINGS),
                            ("sora.yaml `trigger:` — a schedule (`- schedule: EXPR`)",
                             SCHEDULE_TRIGGER_SETTINGS),
                            ("sora.yaml `trigger:` — a watched folder (`- file: {...}`)",
                             FILE_TRIGGER_SETTINGS)):
        out += [f"## {title}", "", "| field | default | description |", "|---|---|---|"]
        for s in settings.values():
            default = "required" if s.default is REQUIRED else (
                "—" if s.default is None else f"`{s.default!r}`")
            # A `|` would end the cell even inside backticks (GitHub tables): escaped.
            doc = s.doc.replace("|", "\\|")
            out.append(f"| `{s.name}` | {default} | {doc} |")
        out.append("")
    out.append(TRIGGERS_MARKDOWN)
    return "\n".join(out)


TRIGGERS_MARKDOWN = """## Triggers

`trigger` is `http` (the default: the function URL), or a list of triggers, in any order:

```yaml
trigger:
  - http                                  # its function URL (leave it out: no URL, 404)
  - schedule: cron(0 9 ? * MON-FRI *)     # weekdays at 09:00, Paris time
    timezone: Europe/Paris
  - schedule: rate(5 minutes)
    input: {job: poll}                    # sent instead of the Scheduled Event
    overlap: allow
  - file: {path: ./inbox, pattern: "*.csv", events: [created, modified]}
```

Errors name the item: `trigger[1].schedule`, `trigger[2].file.path`. `sora validate` prints
each schedule's next three fire times. Every firing is an asynchronous event of the function
(retries, `maximumEventAge`, the dead-letter list and replay apply); a schedule sends
EventBridge's Scheduled Event (`detail-type` "Scheduled Event", `source` "aws.events",
`time` the due time in UTC, `resources` `[arn:aws:events:REGION:000000000000:rule/NAME-schedule-INDEX]`),
a watched folder S3's event notification (`Records[0].s3.object.key` the file's path relative
to the folder, URL-encoded as S3 encodes keys: `urllib.parse.unquote_plus` gives it back).
A function without `http` is still reached by the Invoke API.

### Schedule expressions

| form | meaning |
|---|---|
| `rate(1 minute)`, `rate(5 minutes)`, `rate(1 hour)`, `rate(2 days)` | every N units, counted from when the schedule was first seen (kept across restarts). The unit is singular only with 1, as EventBridge. |
| `rate(10 seconds)` | Sora's extension for development: EventBridge's rates start at 1 minute. |
| `cron(0 12 * * ? *)` | EventBridge's six fields: minute, hour, day-of-month, month, day-of-week, year. `?` in exactly one of the two day fields. Day-of-week is 1-7 = SUN-SAT (or `SUN`..`SAT`); months 1-12 or `JAN`..`DEC`. `L`: the month's last day (day-of-month) or `6L` its last Friday; `L` alone in day-of-week is Saturday. `15W`: the weekday nearest the 15th, within the month; `LW`: the month's last weekday. `2#1`: the first Monday. Year: `*`, `2027`, `2027-2029`, `2027/2`, lists (1970-2199). |
| `at(2026-12-01T09:00:00)` | once, at that local time in `timezone`; a time in the past never fires (`sora validate` shows no next time). |
| `*/5 * * * *` | a plain 5-field Unix cron line (minute hour day-of-month month day-of-week; 0 or 7 = Sunday; with both day fields restricted, either matches, as cron). |

Cron lines are matched by [cronsim](https://pypi.org/project/cronsim/) on the local wall clock
of `timezone`. **Daylight saving:** a local time that does not exist (the hour skipped in
spring: 02:30 on Europe/Paris's last Sunday of March) does not fire that day; a local time
that happens twice (the hour repeated in autumn) fires once, at its first occurrence — a
`*/20 * * * *` schedule fires at 02:00, 02:20, 02:40 (summer time) and next at 03:00 (winter
time). `rate()` is a fixed period of real time, unaffected.
"""


if __name__ == "__main__":  # pragma: no cover - documentation generator
    import sys
    if sys.argv[1:] == ["--markdown"]:
        print(settings_markdown())
