"""Read APIs over the store: invocation records and function logs, as JSON.

    GET /api/functions/{name}/invocations   ?status=&since=&limit=&cursor=
    GET /api/invocations/{request_id}       the record with its log lines
    GET /api/functions/{name}/logs          ?requestId=&after=&limit=; &follow=true streams
                                            NDJSON, one log line per line, as they arrive

The store is read through one SQLite connection per gateway process (WAL: reads never wait for
the workers' writes); these routes are not on the invocation path.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os

from ..config import HostConfig
from ..store import records
from ..store.db import connect
from .errors import SoraError

FOLLOW_POLL = 0.25
MAX_LIMIT = 1000


class Store:
    """The gateway process's connection to the store, opened on first use (after fork)."""

    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self._conn = None
        self._pid = -1

    @property
    def conn(self):
        if self._pid != os.getpid():
            self._conn = connect(self.state_dir)
            self._pid = os.getpid()
        return self._conn


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
    def __init__(self, store: Store, config: HostConfig):
        self.store = store
        self.config = config

    def check_function(self, name: str) -> None:
        if not self.config.knows(name):
            raise SoraError(404, "ResourceNotFoundException", f"Function not found: {name}")


class InvocationListResource(_FunctionRoute):
    async def on_get(self, req, resp, name: str) -> None:
        self.check_function(name)
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
        if item is None:
            raise SoraError(404, "ResourceNotFoundException",
                            f"No invocation record {request_id} (it may not have finished, "
                            "or it was pruned)")
        _json(resp, item)


class LogsResource(_FunctionRoute):
    async def on_get(self, req, resp, name: str) -> None:
        self.check_function(name)
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
        # (NDJSON readers skip blank lines).
        yield b"\n"
        while True:
            lines = records.log_lines(self.store.conn, name, after, request_id, MAX_LIMIT)
            if lines:
                after = lines[-1]["id"]
                yield b"".join(json.dumps(line).encode() + b"\n" for line in lines)
            else:
                await asyncio.sleep(FOLLOW_POLL)
