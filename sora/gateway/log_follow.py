"""Following a function's log lines as the store gets them: the one loop behind the logs
API's `follow=true` (NDJSON, sora.gateway.records_api) and the dashboard's live tail (SSE,
sora.gateway.dashboard.actions); each turns the batches into its own format.

On PostgreSQL with several recorders (several hosts) writing one database, a line's id is
taken when it is inserted and it is seen when its transaction commits: a line can appear
below a cursor that already passed its id. A follower on PostgreSQL therefore also reads, at
each poll, the LATE_WINDOW seconds behind its cursor again and yields the lines it had not
shown (out of id order: a client resuming with `after` passes the highest id it got, and may
then miss a line that committed late at that moment; within one follow none is missed unless
its transaction took longer than LATE_WINDOW). SQLite has one writer, whose commits take ids
in order: nothing to read again.

Both end when their gateway process stops (sora.gateway.draining): a graceful stop would
otherwise wait `server.gracefulTimeout` for a follower that never ends by itself; the client
reconnects to the gateway that comes next, resuming after the last line it got.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque

from ..store import records
from . import draining

# While nothing is new, the store is asked again this often (one indexed lookup: (function,
# id)).
FOLLOW_POLL = 0.25
# PostgreSQL: how far behind its cursor (in seconds of lines shown) a follower looks again for
# lines whose transactions committed after a later id's (the recorder commits every 0.1 s).
LATE_WINDOW = 3.0


async def new_lines(store, name: str, after: int, request_id: str | None = None, *,
                    limit: int, seconds: float | None = None,
                    heartbeat: float | None = None):
    """Yield each batch (a list, at most `limit`) of `name`'s log lines with an id above
    `after` as it lands, oldest first; `request_id`: only that invocation's. With
    `heartbeat`, an empty batch after that many seconds without a line (the caller's
    keep-alive: a server learns that its client went away only when it sends something).
    Ends after `seconds` if given, and when the gateway process stops."""
    started = quiet_since = time.monotonic()
    late = _LateLines(store.conn, name, request_id) \
        if getattr(store.conn, "dialect", "sqlite") == "postgresql" else None
    while not draining.stopping() and (seconds is None
                                       or time.monotonic() - started < seconds):
        lines = records.log_lines(store.conn, name, after, request_id, limit)
        if late is not None:
            lines = late.missed(after) + late.shown(lines)
        if lines:
            after = max(after, lines[-1]["id"])
            quiet_since = time.monotonic()
            yield lines
            continue
        if heartbeat is not None and time.monotonic() - quiet_since >= heartbeat:
            quiet_since = time.monotonic()
            yield []
        await asyncio.sleep(FOLLOW_POLL)


class _LateLines:
    """A follower's memory of the ids it showed in the last LATE_WINDOW seconds, to find the
    lines that committed below its cursor meanwhile."""

    def __init__(self, conn, name: str, request_id: str | None):
        self.conn, self.name, self.request_id = conn, name, request_id
        self.recent: deque[tuple[float, int]] = deque()    # (when shown, id), in that order
        self.ids: set[int] = set()
        self.floor: int | None = None    # the cursor as it was LATE_WINDOW seconds ago

    def shown(self, lines: list[dict]) -> list[dict]:
        now = time.monotonic()
        for line in lines:
            self.recent.append((now, line["id"]))
            self.ids.add(line["id"])
        return lines

    def missed(self, after: int) -> list[dict]:
        """Lines with ids in (the cursor LATE_WINDOW ago, `after`] not shown yet."""
        now = time.monotonic()
        if self.floor is None:
            self.floor = after
        while self.recent and now - self.recent[0][0] > LATE_WINDOW:
            _, old = self.recent.popleft()
            self.ids.discard(old)
            self.floor = max(self.floor, old)
        if self.floor >= after:
            return []
        found = [line for line in records.log_lines_between(
            self.conn, self.name, self.floor, after, self.request_id)
            if line["id"] not in self.ids]
        return self.shown(found)
