"""The one log-following loop (sora.gateway.log_follow) behind the logs API's NDJSON follow and
the dashboard's SSE tail: new lines in batches, heartbeats when asked, and an end when the
gateway process stops (the NDJSON follow used to run until its client left, holding up a
graceful stop for `gracefulTimeout`)."""
from __future__ import annotations

import asyncio
import time

from sora.gateway import draining, log_follow
from sora.gateway.records_api import LogsResource
from sora.store import records
from sora.store.db import connect


class OneStore:
    def __init__(self, state_dir):
        self.conn = connect(state_dir)


def store_with_lines(tmp_path, *lines) -> OneStore:
    store = OneStore(str(tmp_path))
    now = time.time()
    records.commit(store.conn, [], [("echo", f"r{i}", now, "stdout", line)
                                    for i, line in enumerate(lines)])
    return store


def test_batches_then_heartbeats_then_the_end(tmp_path, monkeypatch):
    monkeypatch.setattr(log_follow, "FOLLOW_POLL", 0.01)
    store = store_with_lines(tmp_path, "a", "b", "c")

    async def collect():
        return [batch async for batch in log_follow.new_lines(
            store, "echo", 0, limit=2, seconds=0.3, heartbeat=0.05)]
    batches = asyncio.run(collect())
    assert [[line["line"] for line in b] for b in batches[:2]] == [["a", "b"], ["c"]]
    assert batches[2:] and all(b == [] for b in batches[2:])   # heartbeats, then it ended


def test_the_ndjson_follow_ends_when_the_gateway_stops(tmp_path, monkeypatch):
    monkeypatch.setattr(log_follow, "FOLLOW_POLL", 0.01)
    store = store_with_lines(tmp_path, "a")
    resource = LogsResource(store, config=None, functions=object())   # no lookups here
    stopping = {"now": False}
    monkeypatch.setattr(draining, "stopping", lambda: stopping["now"])

    async def collect():
        got = []

        async def follow():
            async for chunk in resource._follow("echo", 0, None):
                got.append(chunk)
                if b'"a"' in chunk:
                    stopping["now"] = True   # SIGTERM while it waits for more
        # Without the draining stop it would poll until its client went away.
        await asyncio.wait_for(follow(), timeout=5)
        return got
    chunks = asyncio.run(collect())
    assert chunks[0] == b"\n" and b'"line": "a"' in chunks[1] and len(chunks) == 2
