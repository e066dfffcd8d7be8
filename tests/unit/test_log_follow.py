"""The one log-following loop (sora.gateway.log_follow) behind the logs API's NDJSON follow and
the dashboard's SSE tail: new lines in batches, heartbeats when asked, and an end when the
gateway process stops (the NDJSON follow used to run until its client left, holding up a
graceful stop for `gracefulTimeout`). On SQLite and PostgreSQL (`store_backend`); on
PostgreSQL also a line whose transaction commits after a later line's."""
from __future__ import annotations

import asyncio
import threading
import time

from sora.gateway import draining, log_follow
from sora.gateway.records_api import LogsResource
from sora.config import StoreConfig
from sora.store import backend, records


class OneStore:
    def __init__(self, state_dir, config):
        self.conn = backend.connect(config, state_dir, "records")


def store_with_lines(store_backend, tmp_path, *lines) -> OneStore:
    store = OneStore(str(tmp_path), store_backend)
    now = time.time()
    records.commit(store.conn, [], [("echo", f"r{i}", now, "stdout", line)
                                    for i, line in enumerate(lines)])
    return store


def test_batches_then_heartbeats_then_the_end(store_backend, tmp_path, monkeypatch):
    monkeypatch.setattr(log_follow, "FOLLOW_POLL", 0.01)
    store = store_with_lines(store_backend, tmp_path, "a", "b", "c")

    async def collect():
        return [batch async for batch in log_follow.new_lines(
            store, "echo", 0, limit=2, seconds=0.3, heartbeat=0.05)]
    batches = asyncio.run(collect())
    assert [[line["line"] for line in b] for b in batches[:2]] == [["a", "b"], ["c"]]
    assert batches[2:] and all(b == [] for b in batches[2:])   # heartbeats, then it ended


def test_the_ndjson_follow_ends_when_the_gateway_stops(store_backend, tmp_path, monkeypatch):
    monkeypatch.setattr(log_follow, "FOLLOW_POLL", 0.01)
    store = store_with_lines(store_backend, tmp_path, "a")
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


def test_a_line_committed_after_a_later_ones_is_still_followed(postgres_url, tmp_path,
                                                               monkeypatch):
    """Two recorders (hosts) on one database: the first takes an id, the second a later one
    and commits first; the follower, past the later id, still gets the earlier line."""
    monkeypatch.setattr(log_follow, "FOLLOW_POLL", 0.01)
    store = OneStore(str(tmp_path), StoreConfig(kind="postgresql", url=postgres_url))
    slow = backend.connect(StoreConfig(kind="postgresql", url=postgres_url), str(tmp_path),
                           "records")
    inserted, release = threading.Event(), threading.Event()

    def slow_recorder():
        with slow.transaction():
            slow.execute("INSERT INTO log_lines (function, request_id, time, stream, line) "
                         "VALUES ('echo', 'r1', 1.0, 'stdout', 'late')")
            inserted.set()
            release.wait(10)
    thread = threading.Thread(target=slow_recorder)
    thread.start()
    assert inserted.wait(10)
    records.commit(store.conn, [], [("echo", "r2", 2.0, "stdout", "early")])

    async def collect():
        got = []
        async for batch in log_follow.new_lines(store, "echo", 0, limit=10, seconds=1.0):
            got += [(line["id"], line["line"]) for line in batch]
            if got and not release.is_set():
                release.set()     # the earlier id commits after the follower passed it
        return got
    got = asyncio.run(collect())
    thread.join(10)
    assert [text for _, text in got] == ["early", "late"]
    assert got[1][0] < got[0][0]          # below the cursor, shown once
