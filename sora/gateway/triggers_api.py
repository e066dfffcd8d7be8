"""Seeing and firing a function's triggers.

    GET  /api/functions/{name}/triggers              each trigger: its schedule and next three
                                                     fire times, or what it watches; its last
                                                     firing and that run's status
    POST /api/functions/{name}/triggers/{index}/fire body optional {"key": "a/b.csv"} (a file
                                                     trigger): enqueue a firing now; 202
                                                     {"requestIds": [...]}

A key for the function (`invoke:NAME`), for every function (`invoke`) or `admin` may call them:
firing a trigger is invoking its function. The trigger service (sora.triggers.service) is asked
over its control socket (sora.triggers.control) and given SERVICE_WAIT to answer; when it does
not, the GET answers from the config (`"service": "down"`) and a firing is refused with 503.

The service checks a file trigger's key against the folder itself (it must name an existing
file inside it, found without following a link); the gateway refuses a key that could not be
one (absolute, `..`, NUL) before it asks, so such a key never reaches the service.
"""
from __future__ import annotations

import json
import re
import time

import falcon
import orjson

from ..config import FUNCTION_NAME_RE, FunctionConfig, HostConfig
from ..function_table import FunctionTable
from ..triggers import control, listing
from .errors import SoraError
from .records_api import Store
from .requests import read_body

SERVICE_WAIT = 2.0      # the GET and a firing: the service answers in milliseconds
HEALTH_WAIT = 1.0       # /healthz, which probes call: kept short
MAX_FIRE_BODY = 64 << 10
MAX_KEY_LENGTH = 1024   # S3's limit on an object key
INDEX_RE = re.compile(r"^[0-9]{1,4}$")


class ServiceDown(Exception):
    """The trigger service did not answer in time (not running, restarting, or a joined host,
    which has none)."""


class TriggerService:
    """The gateway's way to the trigger service's control socket."""

    def __init__(self, state_dir: str):
        self.state_dir = state_dir

    async def ask(self, op: str, body: dict, wait: float = SERVICE_WAIT) -> dict:
        """The service's answer to `op`, or ServiceDown. No socket file means no service: then
        nothing waits (ZeroMQ would wait the whole `wait` for a socket that never appears)."""
        try:
            answer = await control.request_async(self.state_dir, op, body, timeout=wait)
        except (control.TriggersUnavailable, OSError, ValueError):
            raise ServiceDown() from None
        if not isinstance(answer, dict):
            raise ServiceDown()
        return answer


def _bad(message: str) -> SoraError:
    return SoraError(400, "InvalidParameterValueException", message)


def _not_found(name: str) -> SoraError:
    return SoraError(404, "ResourceNotFoundException", f"Function not found: {name}")


def _json(resp, value, status: int | None = None) -> None:
    if status is not None:
        resp.status = status
    resp.content_type = "application/json"
    resp.data = json.dumps(value).encode()


# The service's error types (sora.triggers.service) and the status each is answered with.
ERROR_STATUS = {"ResourceNotFoundException": 404, "ResourceConflictException": 409,
                "TooManyRequestsException": 429, "StoreUnavailable": 503,
                "InvalidRequest": 400}


def refused_by_service(answer: dict) -> SoraError | None:
    """The service's refusal of a firing (`{"error": MESSAGE, "errorType": TYPE}`) as the
    gateway's error, passed on as it is; None when the answer is no refusal."""
    if "error" not in answer:
        return None
    error_type = str(answer.get("errorType") or "InvalidParameterValueException")
    message = str(answer.get("error") or "The trigger service refused the firing")
    headers = {"Retry-After": "1"} if error_type in ("TooManyRequestsException",
                                                     "StoreUnavailable") else None
    return SoraError(ERROR_STATUS.get(error_type, 400), error_type, message, headers)


def key_problem(key) -> str | None:
    """Why `key` cannot name a file inside the watched folder, or None. Only its text: the
    service then looks for the file without following links."""
    if not isinstance(key, str) or not key:
        return "expected a non-empty string"
    if len(key) > MAX_KEY_LENGTH:
        return f"expected at most {MAX_KEY_LENGTH} characters"
    if "\x00" in key:
        return "expected no NUL character"
    if key.startswith("/"):
        return "expected a path relative to the watched folder, not an absolute one"
    if ".." in key.split("/"):
        return "expected a path inside the watched folder, without '..'"
    return None


def described(fn: FunctionConfig | None) -> str:
    """A function's triggers in one line, for an error naming them: `0 (http), 1 (schedule)`."""
    if fn is None:
        return "none known"
    return ", ".join(f"{t.index} ({t.kind})" for t in fn.trigger) or "none"


class _TriggerRoute:
    # Firing a trigger is invoking its function: a key for the function may (sora.gateway.auth).
    auth_scope = "invoke"

    def __init__(self, store: Store, config: HostConfig, functions: FunctionTable,
                 service: TriggerService):
        self.store = store
        self.config = config
        self.functions = functions
        self.service = service

    async def function(self, name: str) -> FunctionConfig | None:
        """The function's config (None for a broken one: known, no config), or 404."""
        if not FUNCTION_NAME_RE.match(name) or not await self.functions.known(name):
            raise _not_found(name)
        return self.functions.get(name)


class TriggersResource(_TriggerRoute):
    async def on_get(self, req, resp, name: str) -> None:
        fn = await self.function(name)
        now = time.time()
        try:
            answer = await self.service.ask("status", {"function": name})
        except ServiceDown:
            answer = None
        if answer is None:
            entries = listing.configured(fn, self.store.queue, now) if fn else []
            service = "down"
        else:
            reported = (answer.get("functions") or {}).get(name) or []
            why = listing.ELSEWHERE if self.functions.is_remote(name) else listing.NOT_REPORTED
            entries = (listing.merged(fn, reported, self.store.queue, now, why) if fn
                       else reported)
            service = "up"
        listing.with_run_status(entries, self.store.queue, self.store.conn)
        _json(resp, {"function": name, "service": service, "triggers": entries})


class TriggerFireResource(_TriggerRoute):
    async def on_post(self, req, resp, name: str, index: str) -> None:
        fn = await self.function(name)
        if not INDEX_RE.match(index):   # int() would take " 1", "+1", "1_0", "١"
            raise _bad(f"index: expected the trigger's position in the function's `trigger` "
                       f"list (an integer), got {index!r}")
        number = int(index)
        body = await read_body(req, MAX_FIRE_BODY, self.config.server.bodyTimeout)
        request = {"function": name, "index": number}
        fields = self.fields_of(body)
        trigger = next((t for t in fn.trigger if t.index == number), None) if fn else None
        if fn is not None and trigger is None:
            raise SoraError(404, "ResourceNotFoundException",
                            f"Function {name} has no trigger {number}; its triggers: "
                            f"{described(fn)}")
        if trigger is not None and trigger.kind == "http":
            raise _bad(f"trigger {number} of {name} is http: call its function URL "
                       f"(/functions/{name}) to run it")
        if "key" in fields:
            if trigger is not None and trigger.kind != "file":
                raise _bad(f"key: only a file trigger takes a key; trigger {number} of {name} "
                           f"is a {trigger.kind}")
            problem = key_problem(fields["key"])
            if problem:
                raise _bad(f"key: {problem}, got {str(fields['key'])[:200]!r}")
            request["key"] = fields["key"]
        try:
            answer = await self.service.ask("fire", request)
        except ServiceDown:
            raise SoraError(503, "Sora.TriggerServiceUnavailable",
                            f"The trigger service did not answer within {SERVICE_WAIT:.0f}s (it "
                            f"is not running, or restarting): the firing may not have been "
                            f"stored; GET /api/functions/{name}/triggers shows the last one",
                            {"Retry-After": "1"}) from None
        refusal = refused_by_service(answer)
        if refusal is not None:
            raise refusal
        ids = answer.get("requestIds")
        if not isinstance(ids, list):
            raise SoraError(502, "Sora.TriggerServiceError",
                            "The trigger service's answer had no requestIds")
        _json(resp, {"requestIds": ids}, falcon.HTTP_202)

    @staticmethod
    def fields_of(body: bytes) -> dict:
        if not body.strip():
            return {}
        try:
            fields = orjson.loads(body)   # depth-limited: no RecursionError
        except orjson.JSONDecodeError:
            fields = None
        if not isinstance(fields, dict) or set(fields) - {"key"}:
            raise _bad('body: expected {"key": "<path inside the watched folder>"} (a file '
                       'trigger) or no body')
        return fields
