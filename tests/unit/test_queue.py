"""The event queue and the dispatcher's decisions, on a real SQLite file (no host)."""
import asyncio
import time
from pathlib import Path

import pytest

from sora import protocol as p
from sora.config import EventInvokeConfig, load_function_config
from sora.events.dispatcher import Dispatcher, retry_delay
from sora.events.intake import EventIntake, EventNotStored
from sora.store import queue
from sora.store.db import connect_queue


def accept(conn, rid, fn="fn", at=None):
    queue.enqueue(conn, [(rid, fn, "invoke", b'{"n": 1}', at or time.time())])


def test_lease_counts_an_attempt_and_hides_the_event_until_settled(tmp_path):
    conn = connect_queue(str(tmp_path))
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    accept(conn, "a")
    accept(conn, "b")
    now = time.time()
    first = queue.lease(conn, "fn", 1, now, 60)
    assert [(e.request_id, e.attempts, e.payload) for e in first] == [("a", 1, b'{"n": 1}')]
    assert [e.request_id for e in queue.lease(conn, "fn", 5, now, 60)] == ["b"]
    assert queue.lease(conn, "fn", 5, now, 60) == []  # leased, not deleted
    queue.ack(conn, first[0].id)
    assert queue.find_event(conn, "a") is None
    assert queue.find_event(conn, "b")["state"] == "leased"


def test_leases_return_when_expired_or_when_a_dispatcher_starts(tmp_path):
    conn = connect_queue(str(tmp_path))
    accept(conn, "a")
    accept(conn, "b")
    now = time.time()
    queue.lease(conn, "fn", 1, now, 1)
    queue.lease(conn, "fn", 1, now, 100)
    assert queue.release_leases(conn, now + 2) == 1
    assert queue.release_leases(conn, now + 2, expired_only=False) == 1
    again = queue.lease(conn, "fn", 5, now + 2, 60)
    assert [e.attempts for e in again] == [2, 2]  # the lost attempts still count


def test_requeue_uncounted_bury_replay_and_discard(tmp_path):
    conn = connect_queue(str(tmp_path))
    accept(conn, "a")
    now = time.time()
    (event,) = queue.lease(conn, "fn", 1, now, 60)
    queue.requeue(conn, event.id, now + 10, None, counted=False)
    assert queue.lease(conn, "fn", 1, now + 5, 60) == []  # not due yet
    (event,) = queue.lease(conn, "fn", 1, now + 10, 60)
    assert event.attempts == 1
    failure = queue.Attempt(now, 3.0, "TypeError", "boom")
    queue.bury(conn, event.id, "RetriesExhausted", failure)
    dead, cursor = queue.dead_letters(conn, "fn")
    assert cursor is None and dead[0]["deadReason"] == "RetriesExhausted"
    assert dead[0]["errors"] == [{"start": now, "durationMs": 3.0, "errorType": "TypeError",
                                  "errorMessage": "boom"}]
    assert queue.replay(conn, "fn", ["other"], now) == []
    assert queue.replay(conn, "fn", None, now + 20) == ["a"]
    event = queue.find_event(conn, "a")
    assert event["state"] == "queued" and event["attempts"] == 0 and event["accepted"] == now + 20
    assert len(event["errors"]) == 1  # the history stays
    (event,) = queue.lease(conn, "fn", 1, now + 20, 60)
    queue.bury(conn, event.id, "RetriesExhausted", None)
    assert queue.discard(conn, "fn", None) == 1
    assert queue.counts(conn) == {}


def test_retry_delay_doubles_and_is_capped():
    fn = type("F", (), {"eventInvoke": EventInvokeConfig(retryDelaySeconds=2.0)})
    assert [retry_delay(fn, n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert retry_delay(fn, 30) == 300.0


@pytest.fixture
def dispatcher(tmp_path):
    fn_dir = tmp_path / "fn"
    fn_dir.mkdir()
    (fn_dir / "index.js").write_text("exports.handler = async () => 1;")
    (fn_dir / "sora.yaml").write_text(
        "name: fn\nlanguage: nodejs\nentrypoint: index.js\n"
        "eventInvoke: {maximumRetryAttempts: 1, retryDelaySeconds: 10, "
        "maximumEventAgeInSeconds: 100}\n")
    fn = load_function_config(str(fn_dir))
    config = type("C", (), {"stateDir": str(tmp_path), "functions": [fn], "broken": [],
                            "knows": lambda self, n: n == "fn"})()
    d = Dispatcher.__new__(Dispatcher)
    d.config, d.functions, d.conn = config, {"fn": fn}, connect_queue(str(tmp_path))
    return d, fn


def settle(d, fn, status, body=b'{"errorType":"E","errorMessage":"m"}'):
    (event,) = queue.lease(d.conn, "fn", 1, time.time(), 60)
    d.settle(fn, event, status, body, time.time(), 1.0)
    return queue.find_event(d.conn, event.request_id)


def test_settle_by_answer(dispatcher):
    d, fn = dispatcher
    accept(d.conn, "ok")
    assert settle(d, fn, p.OK) is None
    accept(d.conn, "throttled")
    after = settle(d, fn, p.NO_CAPACITY)
    assert after["state"] == "queued" and after["attempts"] == 0 and after["errors"] == []
    d.conn.execute("DELETE FROM events")
    accept(d.conn, "fails")
    after = settle(d, fn, p.FUNCTION_ERROR)
    assert after["state"] == "queued" and after["due"] >= time.time() + 9
    d.conn.execute("UPDATE events SET due = 0")
    after = settle(d, fn, p.TIMEOUT, p.error_body("Sora.Timeout", "late"))
    assert after["state"] == "dead" and after["deadReason"] == "RetriesExhausted"
    assert [e["errorType"] for e in after["errors"]] == ["E", "Sora.Timeout"]
    accept(d.conn, "starting")  # the broker does not know the function yet
    after = settle(d, fn, p.NOT_FOUND)
    assert after["state"] == "queued" and after["attempts"] == 0
    d.conn.execute("DELETE FROM events")
    accept(d.conn, "bad")
    assert settle(d, fn, p.BAD_REQUEST)["deadReason"] == "InvalidEvent"
    accept(d.conn, "old", at=time.time() - 95)
    assert settle(d, fn, p.FUNCTION_ERROR)["deadReason"] == "EventAgeExceeded"


def test_intake_refuses_an_event_it_cannot_store(tmp_path):
    async def scenario():
        intake = EventIntake(str(tmp_path))
        await intake.accept("r1", "fn", "invoke", b"{}")
        # Disk full: the database may not grow by a page.
        conn = intake._conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(EventNotStored, match="full"):
            await asyncio.gather(*(intake.accept(f"big{i}", "fn", "invoke", b"x" * 100_000)
                                   for i in range(3)))
        stored = [e["requestId"] for e in [queue.find_event(conn, "r1"),
                                            queue.find_event(conn, "big0")] if e]
        intake.close()
        return stored
    (Path(tmp_path) / "run").mkdir()
    assert asyncio.run(scenario()) == ["r1"]
