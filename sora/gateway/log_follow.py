"""Following a function's log lines as the store gets them: the one loop behind the logs
API's `follow=true` (NDJSON, sora.gateway.records_api) and the dashboard's live tail (SSE,
sora.gateway.dashboard.actions); each turns the batches into its own format.

Both end when their gateway process stops (sora.gateway.draining): a graceful stop would
otherwise wait `server.gracefulTimeout` for a follower that never ends by itself; the client
reconnects to the gateway that comes next, resuming after the last line it got.
"""
from __future__ import annotations

import asyncio
import time

from ..store import records
from . import draining

# While nothing is new, the store is asked again this often (one indexed lookup: (function,
# id)).
FOLLOW_POLL = 0.25


async def new_lines(store, name: str, after: int, request_id: str | None = None, *,
                    limit: int, seconds: float | None = None,
                    heartbeat: float | None = None):
    """Yield each batch (a list, at most `limit`) of `name`'s log lines with an id above
    `after` as it lands, oldest first; `request_id`: only that invocation's. With
    `heartbeat`, an empty batch after that many seconds without a line (the caller's
    keep-alive: a server learns that its client went away only when it sends something).
    Ends after `seconds` if given, and when the gateway process stops."""
    started = quiet_since = time.monotonic()
    while not draining.stopping() and (seconds is None
                                       or time.monotonic() - started < seconds):
        lines = records.log_lines(store.conn, name, after, request_id, limit)
        if lines:
            after = lines[-1]["id"]
            quiet_since = time.monotonic()
            yield lines
            continue
        if heartbeat is not None and time.monotonic() - quiet_since >= heartbeat:
            quiet_since = time.monotonic()
            yield []
        await asyncio.sleep(FOLLOW_POLL)
