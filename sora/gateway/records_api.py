"""The management APIs over the store, as JSON: records, logs, functions, dead letters.

    GET  /api/functions                      each function's state, instances and event counts
    GET  /api/functions/{name}/invocations   ?status=&since=&limit=&cursor=
    GET  /api/invocations/{request_id}       the record with its log lines; for an event not
                                             yet done, its place in the queue
    GET  /api/functions/{name}/logs          ?requestId=&after=&limit=; &follow=true streams
                                             NDJSON, one log line per line, as they arrive
    GET  /api/functions/{name}/dlq           ?limit=&cursor=: dead-lettered events, each with
                                             its payload and every attempt's error
    POST /api/functions/{name}/dlq/replay    body {"requestIds": [...]} or none (all): queue
                                             them again, as if just accepted
    DELETE /api/functions/{name}/dlq         ?requestId= (repeatable) or all: discard them

The store is read through one connection per part per gateway process (sora.store.backend:
SQLite's WAL lets reads never wait for the writers; PostgreSQL's pool lends one per query);
these routes are not on the invocation path.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import time

import orjson

from ..config import HostConfig, StoreConfig
from ..function_table import FunctionTable
from ..store import queue, records
from ..store import backend
from ..messaging.client import InvocationClient, BrokerTimeout
from .errors import SoraError
from .log_follow import new_lines
from .requests import read_body, request_id_of

MAX_LIMIT = 1000


class Store:
    """The gateway process's connection to the store, opened on first use (after fork)."""

    def __init__(self, state_dir: str, config: StoreConfig | None = None):
        self.state_dir = state_dir
        self.config = config or StoreConfig()
        self._conn = self._queue = None
        self._pid = -1

    def _open(self) -> None:
        if self._pid != os.getpid():
            self._conn = backend.connect(self.config, self.state_dir, "records")
            self._queue = backend.connect(self.config, self.state_dir, "queue")
            self._pid = os.getpid()

    @property
    def conn(self):
        """The records store (SQLite: sora.db)."""
        self._open()
        return self._conn

    @property
    def queue(self):
        """The event queue (SQLite: queue.db)."""
        self._open()
        return self._queue


def _bad(message: str) -> SoraError:
    return SoraError(400, "InvalidParameterValueException", message)


def _int_param(req, name: str, default: int | None, lo: int = 0, hi: int | None = None):
    value = req.get_param(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise _bad(f"{name}: expected an integer, got {value!r}") from None
    if number < lo or (hi is not None and number > hi):
        raise _bad(f"{name}: expected an integer from {lo} to {hi}, got {number}")
    return number


def _since(req) -> float | None:
    value = req.get_param("since")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(f"since: expected epoch seconds or an ISO 8601 time, got {value!r}") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.timezone.utc)
    return stamp.timestamp()


def _json(resp, value) -> None:
    resp.content_type = "application/json"
    resp.data = json.dumps(value).encode()


class _FunctionRoute:
    def __init__(self, store: Store, config: HostConfig, functions: FunctionTable | None = None):
        self.store = store
        self.config = config
        # This host's functions and those joined hosts serve (their records come here).
        self.functions = functions if functions is not None else FunctionTable(config)

    async def check_function(self, name: str) -> None:
        if not await self.functions.known(name):
            raise SoraError(404, "ResourceNotFoundException", f"Function not found: {name}")


class InvocationListResource(_FunctionRoute):
    async def on_get(self, req, resp, name: str) -> None:
        await self.check_function(name)
        status = req.get_param("status")
        if status is not None and status not in records.STATUSES:
            raise _bad(f"status: expected one of {', '.join(records.STATUSES)}, got {status!r}")
        items, cursor = records.list_invocations(
            self.store.conn, name, status=status, since=_since(req),
            limit=_int_param(req, "limit", 50, 1, MAX_LIMIT),
            cursor=_int_param(req, "cursor", None, 1))
        _json(resp, {"invocations": items, "nextCursor": cursor})


class InvocationResource:
    def __init__(self, store: Store):
        self.store = store

    async def on_get(self, req, resp, request_id: str) -> None:
        item = records.get_invocation(self.store.conn, request_id)
        event = queue.find_event(self.store.queue, request_id)
        if item is None and event is None:
            raise SoraError(404, "ResourceNotFoundException",
                            f"No invocation record {request_id}: it has not finished, it never "
                            "ran (refused before it reached the function: a 4xx, or a 429 or "
                            "503 with Retry-After), or it was pruned")
        if item is None:
            # An event that has not run yet, or only failed so far: its place in the queue.
            shown = {k: event[k] for k in ("trigger", "triggerIndex") if k in event}
            item = {"requestId": request_id, "function": event["function"],
                    **shown, "status": event["state"], "logs": records.log_lines(
                        self.store.conn, event["function"], request_id=request_id)}
        if event is not None:
            item["event"] = event
        _json(resp, item)


class FunctionListResource:
    """What `sora ls` shows: the supervisor's view of each function, with its event counts,
    and of each host of the cluster (`hosts`, as the control plane's status gives it)."""

    def __init__(self, client: InvocationClient, store: Store):
        self.client = client
        self.store = store

    async def on_get(self, req, resp) -> None:
        try:
            health = json.loads(await self.client.status(request_id_of(req).encode()))
        except BrokerTimeout:
            raise SoraError(503, "Sora.BrokerUnavailable",
                            "The supervisor's control plane did not answer") from None
        counts = queue.counts(self.store.queue)
        functions = []
        for name, info in sorted(health.get("functions", {}).items()):
            events = counts.get(name, dict.fromkeys(queue.EVENT_STATES, 0))
            functions.append({"name": name, **info, "events": events})
        _json(resp, {"status": health.get("status"), "functions": functions,
                     "hosts": health.get("hosts") or {}})


class DeadLetterResource(_FunctionRoute):
    async def on_get(self, req, resp, name: str) -> None:
        await self.check_function(name)
        items, cursor = queue.dead_letters(self.store.queue, name,
                                           _int_param(req, "limit", 50, 1, MAX_LIMIT),
                                           _int_param(req, "cursor", None, 1))
        _json(resp, {"events": items, "nextCursor": cursor})

    async def on_delete(self, req, resp, name: str) -> None:
        await self.check_function(name)
        ids = req.get_param_as_list("requestId")
        _json(resp, {"discarded": queue.discard(self.store.queue, name, ids)})


class DeadLetterReplayResource(_FunctionRoute):
    async def on_post(self, req, resp, name: str) -> None:
        await self.check_function(name)
        body = await read_body(req, 1 << 20, self.config.server.bodyTimeout)
        ids = None
        if body.strip():
            try:
                ids = orjson.loads(body).get("requestIds")   # depth-limited: no RecursionError
            except (orjson.JSONDecodeError, AttributeError):
                ids = False
            if ids is not None and (not isinstance(ids, list) or
                                    not all(isinstance(i, str) for i in ids)):
                raise _bad('body: expected {"requestIds": ["<request id>", ...]} or no body '
                           '(replay all)')
        replayed = queue.replay(self.store.queue, name, ids, time.time())
        _json(resp, {"replayed": replayed})


class LogsResource(_FunctionRoute):
    async def on_get(self, req, resp, name: str) -> None:
        await self.check_function(name)
        request_id = req.get_param("requestId")
        limit = _int_param(req, "limit", MAX_LIMIT, 1, MAX_LIMIT)
        follow = req.get_param_as_bool("follow") or False
        after = _int_param(req, "after", None, 0)
        conn = self.store.conn
        if not follow:
            lines = records.log_lines(conn, name, after or 0, request_id, limit)
            _json(resp, {"lines": lines,
                         "cursor": lines[-1]["id"] if lines else (after or 0)})
            return
        # Follow: from `after` if given, else from now; one JSON object per line, as it comes.
        start = after if after is not None else records.last_log_id(conn, name)
        resp.content_type = "application/x-ndjson"
        resp.stream = self._follow(name, start, request_id)

    async def _follow(self, name: str, after: int, request_id: str | None):
        # An empty line first, so the status and headers go out before any log line exists
        # (NDJSON readers skip blank lines). Ends when this gateway process stops: the
        # client asks again with `after` (sora.gateway.log_follow).
        yield b"\n"
        async for lines in new_lines(self.store, name, after, request_id, limit=MAX_LIMIT):
            yield b"".join(json.dumps(line).encode() + b"\n" for line in lines)
