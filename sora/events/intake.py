"""The gateway's side of asynchronous invocations: store the event, then say 202.

`EventIntake.accept()` returns only once the event is committed to the queue (SQLite:
synchronous=FULL; PostgreSQL: a synchronous commit); if it cannot be stored (disk full, the
database locked past a short wait, the PostgreSQL server unreachable) it raises EventNotStored
and the caller answers 503, never 202. StoreDown is the store that cannot be reached: its pool
reconnects by itself, so accepting resumes once the server is back. The queue is opened
through sora.store.backend (queue.db, or the PostgreSQL store of `store:` in host-config.yaml),
and what a caller is told never holds the store URL's password. Commits run on one thread per
gateway process so the event loop never waits on fsync, and events that arrive while a commit
is under way are committed together in the next one (group commit): one fsync for many events
under load, no added wait when idle. After a commit the dispatcher is nudged to start at once.

What the queue may hold is capped so that no caller can fill the disk with events: per function
a count and a payload total (`eventInvoke.maxQueuedEvents`, `maxQueuedMB`; past either the
event is refused with QueueFull and not stored), and while the state dir is low on free space
(`minFreeDiskMB`) every event is refused with LowDisk before the store is asked to write (the
state dir's disk: the SQLite store's, and the host's own files on PostgreSQL).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
import urllib.parse

import zmq

from .. import protocol as p
from ..config import StoreConfig
from ..store import backend, queue
from ..store.free_space import FreeSpace

# How long a commit may wait for the queue's lock before the event is refused.
INTAKE_BUSY_MS = 2000


class EventNotStored(Exception):
    """The event could not be committed; the caller must not be told it was accepted."""


class QueueFull(EventNotStored):
    """The function's stored events are at their cap (count or bytes): nothing was stored."""


class LowDisk(EventNotStored):
    """The state dir's file system is below its free-space minimum: nothing was stored."""


class StoreDown(EventNotStored):
    """The store cannot be reached (PostgreSQL down, restarting, the pool out of connections
    in time): nothing was stored."""


def redacted(message: str, store: StoreConfig) -> str:
    """`message` without the store URL's password (backend errors already show the URL as
    display_url; this makes sure of it for any text that reaches a caller or a log)."""
    url = store.url or ""
    password = urllib.parse.urlsplit(url).password if url else None
    if password:
        message = message.replace(url, store.display_url)
        for form in {password, urllib.parse.unquote(password)}:
            message = message.replace(form, "***")
    return message


class EventIntake:
    def __init__(self, state_dir: str, min_free_mb: int = 0, store: StoreConfig | None = None):
        self.state_dir = state_dir
        self.store = store if store is not None else StoreConfig()
        self.free_space = FreeSpace(state_dir, min_free_mb << 20,
                                    "asynchronous events are refused with 503")
        self._pid = -1

    def _open(self) -> None:
        # Per process, after gunicorn's fork: SQLite connections and ZeroMQ contexts do not
        # survive a fork.
        self._pid = os.getpid()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="sora-intake")
        self._conn = None   # a sora.store.backend connection, opened on the first commit
        self._pending: list[tuple[tuple, asyncio.Future]] = []
        self._committing: asyncio.Task | None = None
        self._ctx = zmq.Context()
        self._nudge = self._ctx.socket(zmq.PUSH)
        self._nudge.setsockopt(zmq.LINGER, 0)
        self._nudge.setsockopt(zmq.SNDHWM, 16)
        self._nudge.connect(p.events_endpoint(self.state_dir))

    async def accept(self, request_id: str, function: str, trigger: str, payload: bytes,
                     caps: tuple[int, int] | None = None) -> None:
        """Store the event; `caps` is the function's (most events, most payload bytes)."""
        if self.free_space.low():
            raise LowDisk("the host is low on disk space")
        if self._pid != os.getpid():
            self._open()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append(((request_id, function, trigger, payload, time.time()), caps,
                              fut))
        if self._committing is None:
            # Kept referenced: the loop holds only weak references to tasks.
            self._committing = loop.create_task(self._commit_pending())
        await fut

    async def _commit_pending(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                caps = {event[1]: cap for event, cap, _ in batch if cap is not None}
                try:
                    stored = await loop.run_in_executor(
                        self._executor, self._commit, [event for event, _, _ in batch], caps)
                except (*backend.ERRORS, OSError) as exc:
                    kind = StoreDown if isinstance(exc, backend.StoreUnavailable) else \
                        EventNotStored
                    error = kind(redacted(str(exc), self.store))
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_exception(error)
                    continue
                for (event, _, fut), ok in zip(batch, stored):
                    if fut.done():
                        continue
                    if ok:
                        fut.set_result(None)
                    else:
                        fut.set_exception(QueueFull(
                            f"function {event[1]} has as many events stored as it may "
                            f"(eventInvoke.maxQueuedEvents / maxQueuedMB)"))
                try:
                    self._nudge.send(b"", zmq.NOBLOCK)
                except zmq.Again:
                    pass  # the dispatcher is down or already nudged; it polls as well
        finally:
            self._committing = None

    def _commit(self, events: list[tuple], caps: dict[str, tuple[int, int]]) -> list[bool]:
        if self._conn is None:
            self._conn = backend.connect(self.store, self.state_dir, "queue",
                                         busy_ms=INTAKE_BUSY_MS, checkpoints=False)
        return queue.enqueue(self._conn, events, caps, lock_timeout_ms=INTAKE_BUSY_MS)

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
