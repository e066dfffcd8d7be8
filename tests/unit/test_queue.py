"""The event queue and the dispatcher's decisions, on both store backends (a real SQLite file,
a fresh PostgreSQL database; no host)."""
import asyncio
import threading
import time
from pathlib import Path

import pytest

from sora import protocol as p
from sora.config import EventInvokeConfig, load_function_config
from sora.events.dispatcher import Dispatcher, retry_delay
from sora.events.intake import EventIntake, EventNotStored
from sora.store import backend, queue

# The lease owner the tests' dispatchers write (sora.store.queue.lease_owner).
OWNER = queue.lease_owner("test-host", 1)


def connect(store, tmp_path, **options):
    """The queue of `store` (a store_backend: SQLite's queue.db in tmp_path, or a fresh
    PostgreSQL database)."""
    return backend.connect(store, str(tmp_path), "queue", **options)


def accept(conn, rid, fn="fn", at=None):
    queue.enqueue(conn, [(rid, fn, "invoke", b'{"n": 1}', at or time.time())])


def test_lease_counts_an_attempt_and_hides_the_event_until_settled(tmp_path, store_backend):
    conn = connect(store_backend, tmp_path)
    if conn.dialect == "sqlite":
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


def test_leases_return_when_expired_or_when_a_dispatcher_starts(tmp_path, store_backend):
    conn = connect(store_backend, tmp_path)
    accept(conn, "a")
    accept(conn, "b")
    now = time.time()
    queue.lease(conn, "fn", 1, now, 1)
    queue.lease(conn, "fn", 1, now, 100)
    assert queue.release_leases(conn, now + 2) == 1
    assert queue.release_leases(conn, now + 2, expired_only=False) == 1
    again = queue.lease(conn, "fn", 5, now + 2, 60)
    assert [e.attempts for e in again] == [2, 2]  # the lost attempts still count


def test_requeue_uncounted_bury_replay_and_discard(tmp_path, store_backend):
    conn = connect(store_backend, tmp_path)
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
def dispatcher(tmp_path, store_backend):
    fn_dir = tmp_path / "fn"
    fn_dir.mkdir()
    (fn_dir / "index.js").write_text("exports.handler = async () => 1;")
    (fn_dir / "sora.yaml").write_text(
        "name: fn\nlanguage: nodejs\nentrypoint: index.js\n"
        "eventInvoke: {maximumRetryAttempts: 1, retryDelaySeconds: 10, "
        "maximumEventAgeInSeconds: 100}\n")
    fn = load_function_config(str(fn_dir))
    config = type("C", (), {"stateDir": str(tmp_path), "functions": [fn], "broken": [],
                            "knows": lambda self, n: n == "fn",
                            "cluster": type("K", (), {"listen": None})})()
    d = Dispatcher.__new__(Dispatcher)
    d.config, d.functions, d.conn = config, {"fn": fn}, connect(store_backend, tmp_path)
    return d, fn


def settle(d, fn, status, body=b'{"errorType":"E","errorMessage":"m"}'):
    (event,) = queue.lease(d.conn, "fn", 1, time.time(), 60, OWNER)
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


def test_events_of_a_function_unknown_here_wait_on_a_shared_store(dispatcher):
    """queue.db is the host's own: an event of a function it does not have is dead at once. A
    PostgreSQL store is shared: another host may serve the function, so its events are left to
    that host until older than the default event age."""
    d, fn = dispatcher
    now = time.time()
    accept(d.conn, "elsewhere", fn="other")
    accept(d.conn, "stale", fn="gone", at=now - EventInvokeConfig().maximumEventAgeInSeconds - 1)
    for name in ("other", "gone"):
        d._bury_orphans(name, now)
    states = {rid: queue.find_event(d.conn, rid) for rid in ("elsewhere", "stale")}
    if d.conn.dialect == "sqlite":
        assert {e["deadReason"] for e in states.values()} == {"FunctionNotFound"}
    else:
        assert states["elsewhere"]["state"] == "queued"
        assert states["stale"]["deadReason"] == "EventAgeExceeded"


def test_intake_refuses_an_event_it_cannot_store(tmp_path, store_backend):
    async def scenario():
        intake = EventIntake(str(tmp_path), store=store_backend)
        await intake.accept("r1", "fn", "invoke", b"{}")
        conn = intake._conn
        if conn.dialect == "sqlite":
            # Disk full: the database may not grow by a page.
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {pages}")
            refused = "full"
        else:
            # The server refuses the rows (as it would past a quota, or with its disk full).
            conn.execute("ALTER TABLE events ADD CONSTRAINT small_payloads "
                         "CHECK (octet_length(payload) < 50000)")
            refused = "small_payloads"
        with pytest.raises(EventNotStored, match=refused):
            await asyncio.gather(*(intake.accept(f"big{i}", "fn", "invoke", b"x" * 100_000)
                                   for i in range(3)))
        stored = [e["requestId"] for e in [queue.find_event(conn, "r1"),
                                            queue.find_event(conn, "big0")] if e]
        intake.close()
        return stored
    (Path(tmp_path) / "run").mkdir()
    assert asyncio.run(scenario()) == ["r1"]


def test_a_lease_is_settled_only_by_its_owner(tmp_path, store_backend):
    """One host's dispatcher cannot acknowledge, requeue or bury an event another holds, nor
    return another host's leases when it starts; its own lease, even run out, it settles."""
    conn = connect(store_backend, tmp_path)
    a, b = queue.lease_owner("host-a", 10), queue.lease_owner("host-a2", 10)
    accept(conn, "x")
    accept(conn, "y")
    now = time.time()
    (x,) = queue.lease(conn, "fn", 1, now, 60, a)
    assert x.owner == a and x.lease_until == now + 60
    assert not queue.ack(conn, x.id, b)
    assert not queue.requeue(conn, x.id, now, None, owner=b)
    assert not queue.bury(conn, x.id, "RetriesExhausted", None, owner=b)
    assert queue.find_event(conn, "x")["state"] == "leased"
    # host-a2 starting returns none of host-a's leases (a prefix is not the same host).
    assert queue.release_leases(conn, now, expired_only=False, host_id="host-a2") == 0
    assert queue.lease(conn, "fn", 5, now, 60, b)[0].request_id == "y"
    # A's lease runs out, the sweep returns it, B leases it: A's late answer settles nothing.
    assert queue.release_leases(conn, now + 61) == 2
    assert {e.request_id for e in queue.lease(conn, "fn", 5, now + 61, 60, b)} == {"x", "y"}
    assert not queue.ack(conn, x.id, a)
    assert queue.ack(conn, x.id, b) and queue.find_event(conn, "x") is None
    # A host's restart returns its own leases, of any of its dispatchers' processes.
    accept(conn, "z")
    queue.lease(conn, "fn", 5, now + 61, 600, queue.lease_owner("host-a", 11))
    assert queue.release_leases(conn, now + 62, expired_only=False, host_id="host-a") == 1
    # A lease run out and returned but not leased again: its owner's success still counts
    # (the event is not run twice for nothing).
    (z,) = queue.lease(conn, "fn", 5, now + 62, 1, a)
    assert queue.release_leases(conn, now + 64) == 1
    assert queue.ack(conn, z.id, a) and queue.find_event(conn, "z") is None


def test_host_ids_with_like_wildcards_match_only_themselves(tmp_path, store_backend):
    conn = connect(store_backend, tmp_path)
    for rid in ("p", "q"):
        accept(conn, rid)
    now = time.time()
    queue.lease(conn, "fn", 1, now, 600, queue.lease_owner("h_%", 1))
    queue.lease(conn, "fn", 1, now, 600, queue.lease_owner("hx%yz", 1))
    assert queue.release_leases(conn, now, expired_only=False, host_id="h_%") == 1
    assert queue.find_event(conn, "q")["state"] == "leased"


def test_dispatchers_of_several_hosts_lease_disjoint_events(tmp_path, store_backend):
    """PostgreSQL: dispatchers on several hosts lease at once (FOR UPDATE SKIP LOCKED); each
    event is leased once. (SQLite: one dispatcher per queue.db, so not a case there.)"""
    if store_backend.kind != "postgresql":
        pytest.skip("a queue.db has one dispatcher")
    conn = connect(store_backend, tmp_path)
    queue.enqueue(conn, [(f"e{i}", "fn", "invoke", b"{}", time.time()) for i in range(400)])
    taken: list[list[str]] = [[] for _ in range(4)]

    def dispatcher(n):
        mine = connect(store_backend, tmp_path)
        while batch := queue.lease(mine, "fn", 7, time.time(), 60,
                                   queue.lease_owner(f"host{n}", n)):
            taken[n] += [e.request_id for e in batch]
            for e in batch:
                assert queue.ack(mine, e.id, e.owner)
        mine.close()
    threads = [threading.Thread(target=dispatcher, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    everything = [rid for part in taken for rid in part]
    assert sorted(everything) == sorted(f"e{i}" for i in range(400))   # once each
    assert sum(1 for part in taken if part) >= 2   # they did share the work
    assert queue.counts(conn) == {}


def test_gateways_together_cannot_pass_a_cap(tmp_path, store_backend):
    """Gateways of several processes (hosts, on PostgreSQL) commit at once: the cap holds."""
    conn = connect(store_backend, tmp_path)
    stored = []

    def gateway(n):
        mine = connect(store_backend, tmp_path)
        for i in range(20):
            stored.extend(queue.enqueue(mine, [(f"g{n}.{i}", "capped", "invoke", b"x" * 10,
                                                time.time())], {"capped": (50, 1 << 20)}))
        mine.close()
    threads = [threading.Thread(target=gateway, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert stored.count(True) == 50 and len(stored) == 80
    assert queue.stored_totals(conn, "capped") == (50, 500)
    assert queue.counts(conn)["capped"]["queued"] == 50


def test_a_cap_checked_in_a_callers_transaction_holds_too(tmp_path, store_backend):
    """A trigger's firing checks the cap itself, inside its own transaction (sora.store.
    triggers.fire): stored_totals there holds the function's totals until it commits."""
    connect(store_backend, tmp_path)
    made = []

    def firing_host(n):
        mine = connect(store_backend, tmp_path)
        for i in range(15):
            with mine.transaction():
                events, _ = queue.stored_totals(mine, "fired")
                if events < 20:
                    queue.enqueue(mine, [(f"f{n}.{i}", "fired", "schedule:0", b"{}",
                                          time.time())])
                    made.append(1)
        mine.close()
    threads = [threading.Thread(target=firing_host, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    conn = connect(store_backend, tmp_path)
    assert len(made) == 20 and queue.stored_totals(conn, "fired") == (20, 40)
