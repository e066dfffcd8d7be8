"""Where the trigger service's schedulers and file watchers hand their firings: the queue.

`Sink.fire()` commits a firing (sora.store.triggers.fire: the event, the trigger's state and
the caller's own update, one transaction, synchronous=FULL like the gateways' intake) on one
thread, so the event loop never waits on fsync, then nudges the dispatcher so it runs at once.
A refused firing (the function's event caps, the state dir low on disk) stores no event and is
recorded as skipped with its reason.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import time
from typing import Any, Callable

import zmq

from .. import protocol as p
from ..store import triggers as store
from ..store.db import connect_queue
from ..store.free_space import FreeSpace

log = logging.getLogger("sora.triggers")

# How long a commit may wait for the queue's lock (gateways and the dispatcher write it too).
BUSY_MS = 5000


def caps_of(fn) -> tuple[int, int]:
    """(most events stored, most payload bytes stored): the function's eventInvoke caps."""
    return fn.eventInvoke.maxQueuedEvents, fn.eventInvoke.maxQueuedMB << 20


def connect(state_dir: str, synchronous: str = "FULL") -> sqlite3.Connection:
    """A connection to queue.db with the triggers' tables."""
    conn = connect_queue(state_dir, BUSY_MS, synchronous=synchronous, checkpoints=False)
    store.ensure_schema(conn)
    return conn


class Sink:
    def __init__(self, state_dir: str, min_free_mb: int = 0):
        self.state_dir = state_dir
        self.free_space = FreeSpace(state_dir, min_free_mb << 20,
                                    "triggers' firings are skipped (LowDisk)")
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="sora-triggers-store")
        self._conn: sqlite3.Connection | None = None
        self._ctx = zmq.Context()
        self._nudge = self._ctx.socket(zmq.PUSH)
        self._nudge.setsockopt(zmq.LINGER, 0)
        self._nudge.setsockopt(zmq.SNDHWM, 16)
        self._nudge.connect(p.events_endpoint(state_dir))

    def conn_factory(self) -> sqlite3.Connection:
        """A new connection to queue.db (with the triggers' tables), for a caller's own
        thread: a connection is used by one thread at a time."""
        return connect(self.state_dir)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self.state_dir)
        return self._conn

    async def call(self, func: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `func(conn)` on the store's thread (reads and writes in order)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: func(self._connection()))

    async def fire(self, fn, trigger, route: str, payload: bytes, due: float,
                   also: Callable[[sqlite3.Connection], None] | None = None, *,
                   request_id: str | None = None, once: bool = False,
                   advance: bool = True) -> str | None:
        """Enqueue a firing of `trigger` (a ScheduleTrigger or FileTrigger of `fn`); returns
        the event's request id, or None when it was refused (QueueFull, LowDisk: recorded as
        skipped, nothing stored, `also` not run). Raises store.AlreadyFired (with `once`) and
        sqlite3.Error (not stored)."""
        now = time.time()
        key = trigger.key
        if self.free_space.low():
            await self.call(lambda conn: store.skip(conn, fn.name, route, key, due, now,
                                                    "LowDisk", advance=advance))
            log.warning("%s %s: firing skipped, the host is low on disk space", fn.name, route)
            return None
        request_id = await self.call(lambda conn: store.fire(
            conn, fn.name, route, key, payload, due, now, caps_of(fn), also=also,
            request_id=request_id, once=once, advance=advance))
        if request_id is None:
            await self.call(lambda conn: store.skip(conn, fn.name, route, key, due, now,
                                                    "QueueFull", advance=advance))
            log.warning("%s %s: firing skipped, the function has as many events stored as "
                        "it may (eventInvoke.maxQueuedEvents / maxQueuedMB)", fn.name, route)
            return None
        self.nudge()
        return request_id

    async def skip(self, fn, trigger, route: str, due: float, reason: str,
                   advance: bool = True) -> None:
        now = time.time()
        await self.call(lambda conn: store.skip(conn, fn.name, route, trigger.key, due, now,
                                                reason, advance=advance))

    def nudge(self) -> None:
        try:
            self._nudge.send(b"", zmq.NOBLOCK)
        except zmq.Again:
            pass  # the dispatcher is down or already nudged; it polls as well

    def close(self) -> None:
        self._nudge.close(linger=0)
        self._ctx.term()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            self._executor.submit(conn.close).result()
        self._executor.shutdown()
