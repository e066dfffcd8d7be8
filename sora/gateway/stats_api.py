"""`GET /api/stats?window=SECONDS`: each function's figures over the last `window` seconds
(default an hour, at most 7 days) with what `/api/functions` says of it now; what `sora top`
shows.

    {"since": epoch s, "until": epoch s, "window": s,
     "functions": {name: {"calls", "errors", "p50", "p99", "coldStarts",   # sora.store.stats
                          "state", "reason"?, "instances", ...             # the status' item
                          "busy", "idle", "starting", "queued",            # when workers say
                          "events": {"queued", "leased", "dead"}}}}

The functions are the host's (and its cluster's), as `/api/functions` lists them; records of a
function the host no longer has are left out. Admin only (the default scope): the figures
cover every function.

The records are summed in a thread of this gateway process with its own connection: a
week of a busy host's records takes a fraction of a second, which the event loop (and the
invocations it serves) must not wait for.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import threading
import time

from ..messaging.client import BrokerTimeout, InvocationClient
from ..config import StoreConfig
from ..store import backend, queue, stats
from .errors import SoraError
from .records_api import Store
from .requests import request_id_of

DEFAULT_WINDOW = 3600
MAX_WINDOW = 7 * 86400


class StatsThread:
    """Runs figure queries (sora.store.stats) in one thread of the gateway process, with that
    thread's own connection to the records store: a day's series of a busy function or a
    week's summary takes tens to hundreds of milliseconds, which the event loop serving
    invocations must not wait for. One per process and state dir (`shared`), for /api/stats
    and the dashboard's pages alike; its thread is made on first use, after the fork."""

    _shared: dict[str, "StatsThread"] = {}

    @classmethod
    def shared(cls, state_dir: str, store: StoreConfig | None = None) -> "StatsThread":
        thread = cls._shared.get(state_dir)
        if thread is None:
            thread = cls._shared[state_dir] = cls(state_dir, store)
        return thread

    def __init__(self, state_dir: str, store: StoreConfig | None = None):
        self.state_dir = state_dir
        self.store = store or StoreConfig()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pid = -1
        self._local = threading.local()

    def _call(self, query, args):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = backend.connect(self.store, self.state_dir, "records")
        return query(conn, *args)

    async def run(self, query, *args):
        """query(conn, *args) in the thread."""
        if self._pid != os.getpid():
            self._pool = concurrent.futures.ThreadPoolExecutor(1, "sora-stats")
            self._pid = os.getpid()
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._call, query,
                                                                args)


def _window(req) -> int:
    value = req.get_param("window")
    if value is None:
        return DEFAULT_WINDOW
    try:
        window = int(value)
    except ValueError:
        window = 0
    if not 1 <= window <= MAX_WINDOW:
        raise SoraError(400, "InvalidParameterValueException",
                        f"window: expected seconds from 1 to {MAX_WINDOW}, got {value!r}")
    return window


class StatsResource:
    def __init__(self, client: InvocationClient, store: Store, state_dir: str):
        self.client = client
        self.store = store
        self.figures = StatsThread.shared(state_dir, store.config)

    async def on_get(self, req, resp) -> None:
        window = _window(req)
        until = time.time()
        since = until - window
        # Summed while the control plane is asked: the answer waits for the slower only.
        figures = asyncio.ensure_future(self.figures.run(stats.summary, since, until))
        health = None
        try:
            health = json.loads(await self.client.status(request_id_of(req).encode()))
        except BrokerTimeout:
            raise SoraError(503, "Sora.BrokerUnavailable",
                            "The supervisor's control plane did not answer") from None
        finally:
            if health is None:   # no answer to give: nothing waits for the figures
                figures.cancel()
        counts = queue.counts(self.store.queue)
        summed = await figures
        functions = {}
        for name, info in sorted(health.get("functions", {}).items()):
            functions[name] = {**info, **summed.get(name, stats.empty()),
                               "events": counts.get(name, dict.fromkeys(queue.EVENT_STATES, 0))}
        resp.content_type = "application/json"
        resp.data = json.dumps({"since": since, "until": until, "window": window,
                                "functions": functions}).encode()
