"""Where the trigger service's schedulers and file watchers hand their firings: the queue.

`Sink.fire()` commits a firing (sora.store.triggers.fire: the event, the trigger's state and
the caller's own update, one transaction; on SQLite synchronous=FULL like the gateways'
intake) on one thread, so the event loop never waits on the store, then nudges the dispatcher
so it runs at once. A refused firing (the function's event caps, the state dir low on disk)
stores no event and is recorded as skipped with its reason.

The store is the host's (`store:` in host-config.yaml, sora.store.backend): queue.db in the
state dir, or the PostgreSQL database every host of a cluster shares; `host` is this host's id
there (sora.store.backend.host_id), which the file watchers' seen-state carries.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import Any, Callable

import zmq

from .. import protocol as p
from ..config import StoreConfig
from ..store import backend
from ..store import triggers as store
from ..store.free_space import FreeSpace

log = logging.getLogger("sora.triggers")

# How long a commit may wait for queue.db's lock (gateways and the dispatcher write it too),
# or, on PostgreSQL, for a pooled connection: a short database restart is waited out.
BUSY_MS = 5000


def caps_of(fn) -> tuple[int, int]:
    """(most events stored, most payload bytes stored): the function's eventInvoke caps."""
    return fn.eventInvoke.maxQueuedEvents, fn.eventInvoke.maxQueuedMB << 20


def connect(state_dir: str, store_config=None, synchronous: str = "FULL"):
    """A connection to the triggers' store (`store_config`: a StoreConfig; None: SQLite's
    queue.db in `state_dir`), its tables made or migrated by sora.store.schema."""
    return backend.connect(store_config or StoreConfig(), state_dir, "queue",
                           busy_ms=BUSY_MS, synchronous=synchronous, checkpoints=False)


def seen_host(config) -> str:
    """The host id the file watchers' seen-state is kept under (sora.store.file_seen): on a
    shared store (PostgreSQL) this host's (sora.store.backend.host_id: set `cluster.name` where
    the machine's name changes, as a pod's does, or a new name finds no seen-state and every
    file fires again); on SQLite '' (queue.db is the host's own, and rows from before the
    host column are '')."""
    return backend.host_id(config) if config.store.kind == "postgresql" else ""


class Sink:
    def __init__(self, state_dir: str, min_free_mb: int = 0, store_config=None,
                 host: str = ""):
        self.state_dir = state_dir
        self.store_config = store_config
        self.host = host
        # Low disk in the state dir stops firings where the state dir holds the queue
        # (SQLite); a PostgreSQL store's disk is the database server's.
        on_sqlite = store_config is None or store_config.kind == "sqlite"
        self.free_space = FreeSpace(state_dir, (min_free_mb << 20) if on_sqlite else 0,
                                    "triggers' firings are skipped (LowDisk)")
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="sora-triggers-store")
        self._conn = None
        self._ctx = zmq.Context()
        self._nudge = self._ctx.socket(zmq.PUSH)
        self._nudge.setsockopt(zmq.LINGER, 0)
        self._nudge.setsockopt(zmq.SNDHWM, 16)
        self._nudge.connect(p.events_endpoint(state_dir))

    def conn_factory(self):
        """A new connection to the store, for a caller's own thread: a connection is used by
        one thread at a time."""
        return connect(self.state_dir, self.store_config)

    def _connection(self):
        if self._conn is None:
            self._conn = self.conn_factory()
        return self._conn

    async def call(self, func: Callable[[Any], Any]) -> Any:
        """Run `func(conn)` on the store's thread (reads and writes in order)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: func(self._connection()))

    async def fire(self, fn, trigger, route: str, payload: bytes, due: float,
                   also: Callable[[Any], None] | None = None, *,
                   request_id: str | None = None, once: bool = False,
                   advance: bool = True) -> str | None:
        """Enqueue a firing of `trigger` (a ScheduleTrigger or FileTrigger of `fn`); returns
        the event's request id, or None when it was refused (QueueFull, LowDisk: recorded as
        skipped, nothing stored, `also` not run). Raises store.AlreadyFired (with `once`: the
        due time was fired or skipped already, here or by another host) and backend.ERRORS
        (not stored)."""
        now = time.time()
        key = trigger.key
        if self.free_space.low():
            await self.call(lambda conn: store.skip(conn, fn.name, route, key, due, now,
                                                    "LowDisk", advance=advance, once=once))
            log.warning("%s %s: firing skipped, the host is low on disk space", fn.name, route)
            return None
        request_id = await self.call(lambda conn: store.fire(
            conn, fn.name, route, key, payload, due, now, caps_of(fn), also=also,
            request_id=request_id, once=once, advance=advance))
        if request_id is None:
            # Its own transaction: with `once`, another host may have decided the time
            # meanwhile (its room came back): then AlreadyFired, and its outcome stands.
            await self.call(lambda conn: store.skip(conn, fn.name, route, key, due, now,
                                                    "QueueFull", advance=advance, once=once))
            log.warning("%s %s: firing skipped, the function has as many events stored as "
                        "it may (eventInvoke.maxQueuedEvents / maxQueuedMB)", fn.name, route)
            return None
        self.nudge()
        return request_id

    async def skip(self, fn, trigger, route: str, due: float, reason: str,
                   advance: bool = True, once: bool = False) -> None:
        """Record a due time as skipped; with `once`, raises store.AlreadyFired when it was
        handled already (here, or by another host sharing the store)."""
        now = time.time()
        await self.call(lambda conn: store.skip(conn, fn.name, route, trigger.key, due, now,
                                                reason, advance=advance, once=once))

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
