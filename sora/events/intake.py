"""The gateway's side of asynchronous invocations: store the event, then say 202.

`EventIntake.accept()` returns only once the event is committed to the queue with
synchronous=FULL; if it cannot be stored (disk full, the database locked past a short wait) it
raises EventNotStored and the caller answers 503, never 202. Commits run on one thread per
gateway process so the event loop never waits on fsync, and events that arrive while a commit
is under way are committed together in the next one (group commit): one fsync for many events
under load, no added wait when idle. After a commit the dispatcher is nudged to start at once.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sqlite3
import time

import zmq

from .. import protocol as p
from ..store import queue
from ..store.db import connect_queue

# How long a commit may wait for the queue's lock before the event is refused.
INTAKE_BUSY_MS = 2000


class EventNotStored(Exception):
    """The event could not be committed; the caller must not be told it was accepted."""


class EventIntake:
    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self._pid = -1

    def _open(self) -> None:
        # Per process, after gunicorn's fork: SQLite connections and ZeroMQ contexts do not
        # survive a fork.
        self._pid = os.getpid()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="sora-intake")
        self._conn: sqlite3.Connection | None = None
        self._pending: list[tuple[tuple, asyncio.Future]] = []
        self._committing: asyncio.Task | None = None
        self._ctx = zmq.Context()
        self._nudge = self._ctx.socket(zmq.PUSH)
        self._nudge.setsockopt(zmq.LINGER, 0)
        self._nudge.setsockopt(zmq.SNDHWM, 16)
        self._nudge.connect(p.events_endpoint(self.state_dir))

    async def accept(self, request_id: str, function: str, trigger: str,
                     payload: bytes) -> None:
        if self._pid != os.getpid():
            self._open()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append(((request_id, function, trigger, payload, time.time()), fut))
        if self._committing is None:
            # Kept referenced: the loop holds only weak references to tasks.
            self._committing = loop.create_task(self._commit_pending())
        await fut

    async def _commit_pending(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await loop.run_in_executor(self._executor, self._commit,
                                               [event for event, _ in batch])
                except (sqlite3.Error, OSError) as exc:
                    error = EventNotStored(str(exc))
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(error)
                    continue
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
                try:
                    self._nudge.send(b"", zmq.NOBLOCK)
                except zmq.Again:
                    pass  # the dispatcher is down or already nudged; it polls as well
        finally:
            self._committing = None

    def _commit(self, events: list[tuple]) -> None:
        if self._conn is None:
            self._conn = connect_queue(self.state_dir, INTAKE_BUSY_MS, checkpoints=False)
        queue.enqueue(self._conn, events)

    def close(self) -> None:
        """Close the nudge socket, its context and the connection (a ZeroMQ context with an
        open socket cannot end)."""
        if self._pid == os.getpid():
            self._nudge.close(linger=0)
            self._ctx.term()
            self._executor.shutdown()
            if self._conn is not None:
                self._conn.close()
            self._pid = -1
