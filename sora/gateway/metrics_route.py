"""`GET /metrics` (Prometheus text format) and the count of every HTTP request the gateway
answers.

The route: `auth_scope = "metrics"`, so an admin key or a key with scope `metrics` (open on a
host without keys). Each scrape asks the control plane for its STATUS (instances, queues,
states), reads queue.db's event counts and the Sora processes' figures, and merges them with
every slot's counters (sora.metrics.exposition); the blocking part runs in a thread, off the
event loop that serves invocations.

`CountedApp`: a thin ASGI wrapper around the Falcon app that counts each response by route
template and status code (`sora_http_requests_total`) when its status goes out (a request
whose response never started, its client gone, is not counted). Not a Falcon middleware: that
would add its calls to every request; this is one closure and a dict increment, with no
coroutine of its own, the counts written to the slot's files once a second (FLUSH_EVERY) and
at exit, off the request. A worker killed -9 loses at most that second of HTTP counts
(invocation counts come from the records).
"""
from __future__ import annotations

import asyncio
import atexit
import json
import logging

from ..messaging.client import BrokerTimeout, BrokerUnavailable, InvocationClient
from ..metrics import exposition, processes
from ..metrics.definitions import SoraMetrics, route_of
from ..metrics.live import Snapshot
from ..metrics.registry import metrics_dir
from ..store import queue
from .requests import REQUEST_ID_HEADER, request_id_of

log = logging.getLogger("sora.gateway.metrics")
FLUSH_EVERY = 1.0


class MetricsResource:
    auth_scope = "metrics"

    def __init__(self, client: InvocationClient, store, state_dir: str):
        self.client = client
        self.store = store
        self.state_dir = state_dir

    async def on_get(self, req, resp) -> None:
        request_id = request_id_of(req)
        try:
            status = json.loads(await self.client.status(request_id.encode()))
        except (BrokerTimeout, BrokerUnavailable):
            # The counters are still worth a scrape; the live figures are left out (and
            # `sora_function_up` with them: absent, not 0, as nothing is known).
            log.warning("metrics: the control plane did not answer; live figures left out")
            status = {}
        body = await asyncio.to_thread(self.render, status)
        resp.set_header(REQUEST_ID_HEADER, request_id)
        resp.content_type = exposition.CONTENT_TYPE
        resp.data = body

    def render(self, status: dict) -> bytes:
        directory = metrics_dir(self.state_dir)
        try:
            events = queue.counts(self.store.queue)
        except Exception:   # noqa: BLE001 - a scrape answers whatever the queue does
            log.exception("metrics: could not count the events")
            events = {}
        named = processes.sora_processes(status, self.state_dir, directory)
        return exposition.render(directory, Snapshot(status, events,
                                                     processes.figures(named)))


class CountedApp:
    """The gateway's ASGI app with every HTTP response counted, as its status goes out."""

    def __init__(self, app, metrics: SoraMetrics):
        self.app = app
        self.metrics = metrics
        self.pending: dict[tuple[str, int], int] = {}   # (route, code) -> not yet written
        self.flush_due = False
        atexit.register(self.flush)   # a graceful stop writes the last second's counts

    def __getattr__(self, name):
        return getattr(self.app, name)   # add_route, add_error_handler, ... (tests, B's pages)

    def __call__(self, scope, receive, send):
        # Not a coroutine function, and `counted_send` none either: both hand back the
        # app's (and the server's) own awaitable. An `async def` layer here stays on the
        # request task's stack for the whole request, and every resumption of the task (each
        # reply the request waits for) passes through its frame; measured 1.4 us per request
        # with three waits, against 0.7 us this way (tests/unit/test_metrics_route.py checks
        # no frame of ours is left on the stack).
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        route = route_of(scope["path"])

        def counted_send(message):
            if message["type"] == "http.response.start":
                key = (route, message["status"])
                pending = self.pending
                pending[key] = pending.get(key, 0) + 1
                if not self.flush_due:
                    self.flush_due = True
                    asyncio.get_running_loop().call_later(FLUSH_EVERY, self.flush)
            return send(message)

        return self.app(scope, receive, counted_send)

    def flush(self) -> None:
        """Write the counts gathered since the last flush to the slot's files."""
        self.flush_due = False
        pending, self.pending = self.pending, {}
        for (route, code), n in pending.items():
            self.metrics.count_http(route, code, n)
