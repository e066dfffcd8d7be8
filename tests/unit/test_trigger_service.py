"""The triggers' store, the scheduler's decisions and the trigger service's control socket, on
both store backends (a real SQLite file; a fresh PostgreSQL database), with a controllable clock
and a stand-in schedule (no host, no sleeping); on PostgreSQL, two sinks (two hosts sharing the
store) deciding the same due times at once fire each once."""
import asyncio
import dataclasses
import json
import math
import threading
import time
from collections import Counter
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest

from sora.config import EventInvokeConfig
from sora.events.dispatcher import meta_of
from sora.store import backend, queue, records, triggers as store
from sora.triggers import control
from sora.triggers.scheduler import Scheduler
from sora.triggers.sink import Sink, connect


@dataclasses.dataclass(frozen=True)
class Sched:
    expression: str
    index: int = 0
    timezone: str = "UTC"
    input: object = None
    enabled: bool = True
    overlap: str = "forbid"
    missed: str = "latest"
    kind: str = "schedule"

    @property
    def key(self):
        return f"schedule:{self.expression}@{self.timezone}"


class Rate:
    """rate(P seconds) anchored at `anchor`: fires at anchor + k·P, k >= 1."""

    def __init__(self, period, anchor):
        self.period, self.anchor = period, anchor

    def next_after(self, after):
        k = max(math.floor((after - self.anchor) / self.period) + 1, 1)
        return self.anchor + k * self.period

    def next_times(self, after, n=3):
        out = []
        for _ in range(n):
            after = self.next_after(after)
            out.append(after)
        return out

    def latest_between(self, after, until):
        k = math.floor((until - self.anchor) / self.period)
        t = self.anchor + k * self.period
        return t if k >= 1 and t > after else None


def rate_parse(expression, timezone, anchor):
    return Rate(float(expression), anchor)


def payload(fn, trigger, due, event_id):
    return json.dumps({"id": event_id, "time": due}).encode()


class Clock:
    def __init__(self, t=1_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def fn_with(*schedules, name="fn", **invoke):
    return SimpleNamespace(name=name, schedules=tuple(schedules), files=(),
                           eventInvoke=EventInvokeConfig(**invoke))


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def sink(tmp_path, store_backend):
    s = Sink(str(tmp_path), store_config=store_backend)
    yield s
    s.close()


@pytest.fixture
def conn(tmp_path, store_backend):
    c = connect(str(tmp_path), store_backend)
    yield c
    c.close()


def events_of(conn, fn="fn"):
    return conn.execute("SELECT request_id, trigger, payload, state FROM events WHERE "
                        "function = ? ORDER BY id", (fn,)).fetchall()


# --- the store ------------------------------------------------------------------------------
def test_fire_enqueues_and_records_in_one_transaction(conn):
    seen = []
    rid = store.fire(conn, "fn", "schedule:1", "k", b"{}", 100.0, 101.0, (10, 1 << 20),
                     also=lambda c: seen.append(c.execute(
                         "SELECT COUNT(*) FROM events").fetchone()[0]))
    assert seen == [1]   # the caller's update runs inside the same transaction
    (row,) = events_of(conn)
    assert (row["request_id"], row["trigger"], row["state"]) == (rid, "schedule:1", "queued")
    st = store.state(conn, "fn", "k")
    assert (st["last_due"], st["last_fired"], st["last_request_id"], st["last_outcome"]) == \
        (100.0, 101.0, rid, "enqueued")
    assert store.firings(conn, "fn", "k")[0]["requestId"] == rid
    assert store.in_flight(conn, rid)
    queue.ack(conn, queue.lease(conn, "fn", 1, 200.0, 30)[0].id)
    assert not store.in_flight(conn, rid)


def test_fire_refused_by_the_caps_stores_nothing(conn):
    assert store.fire(conn, "fn", "schedule:0", "k", b"{}", 1.0, 1.0, (1, 1 << 20))
    ran = []
    assert store.fire(conn, "fn", "schedule:0", "k", b"{}", 2.0, 2.0, (1, 1 << 20),
                      also=ran.append) is None
    assert ran == [] and len(events_of(conn)) == 1
    assert store.state(conn, "fn", "k")["last_due"] == 1.0
    assert store.fire(conn, "fn", "schedule:0", "k", b"x" * 100, 3.0, 3.0, (10, 50)) is None


def test_a_failing_also_rolls_the_firing_back(conn):

    def boom(c):
        raise RuntimeError("crash in the middle")
    with pytest.raises(RuntimeError):
        store.fire(conn, "fn", "file:0", "k", b"{}", 1.0, 1.0, None, also=boom)
    assert events_of(conn) == [] and store.state(conn, "fn", "k") is None


def test_once_refuses_a_due_time_already_handled(conn):
    store.fire(conn, "fn", "schedule:0", "k", b"{}", 10.0, 10.0, None, once=True)
    with pytest.raises(store.AlreadyFired):
        store.fire(conn, "fn", "schedule:0", "k", b"{}", 10.0, 11.0, None, once=True)
    store.skip(conn, "fn", "schedule:0", "k", 20.0, 20.0, "Overlap")
    with pytest.raises(store.AlreadyFired):
        store.fire(conn, "fn", "schedule:0", "k", b"{}", 20.0, 21.0, None, once=True)
    assert len(events_of(conn)) == 1
    # a manual firing leaves the schedule's own times alone
    store.fire(conn, "fn", "schedule:0", "k", b"{}", 99.0, 99.0, None, advance=False)
    assert store.state(conn, "fn", "k")["last_due"] == 20.0
    assert [f["outcome"] for f in store.firings(conn, "fn", "k")] == \
        ["enqueued", "skipped", "enqueued"]
    assert store.firings(conn, "fn", "k")[1]["reason"] == "Overlap"
    with pytest.raises(store.AlreadyFired):     # a skip of a time handled: not recorded
        store.skip(conn, "fn", "schedule:0", "k", 20.0, 22.0, "Missed", once=True)
    assert len(store.firings(conn, "fn", "k")) == 3


def test_first_seen_is_persisted_once_and_history_is_bounded(conn):
    assert store.first_seen(conn, "fn", "k", 5.0) == 5.0
    assert store.first_seen(conn, "fn", "k", 9.0) == 5.0
    for i in range(store.KEEP_FIRINGS + 20):
        store.skip(conn, "fn", "schedule:0", "k", float(i), float(i), "Missed")
    assert conn.execute("SELECT COUNT(*) FROM trigger_firings").fetchone()[0] == \
        store.KEEP_FIRINGS
    assert store.state(conn, "fn", "k")["first_seen"] == 5.0


# --- records and events show the trigger ----------------------------------------------------
def test_records_and_events_show_the_trigger_and_its_index(conn):
    assert records.trigger_fields("schedule:2") == {"trigger": "schedule", "triggerIndex": 2}
    assert records.trigger_fields("file:0") == {"trigger": "file", "triggerIndex": 0}
    assert records.trigger_fields("event") == {"trigger": "event"}
    assert records.trigger_fields("schedule:x") == {"trigger": "schedule:x"}
    rid = store.fire(conn, "fn", "file:3", "k", b"{}", 1.0, 1.0, None)
    event = queue.find_event(conn, rid)
    assert (event["trigger"], event["triggerIndex"], event["route"]) == ("file", 3, "file:3")
    queue.enqueue(conn, [("r2", "fn", "invoke", b"{}", 1.0)])
    assert queue.find_event(conn, "r2")["trigger"] == "event"
    leased = {e.request_id: e for e in queue.lease(conn, "fn", 5, 10.0, 30)}
    assert meta_of(leased[rid]) == b"file:3" and meta_of(leased["r2"]) == b"event"


# --- the scheduler --------------------------------------------------------------------------
def scheduler(sink, clock):
    return Scheduler(sink, parse=rate_parse, payload=payload, clock=clock)


def test_fires_each_due_time_once_and_carries_the_due_time(sink):
    clock = Clock()
    s = scheduler(sink, clock)
    fn = fn_with(Sched("10", overlap="allow"))

    async def go():
        await s.reconcile([fn])
        (entry,) = s.entries.values()
        assert entry.next_due == clock.t + 10
        for _ in range(3):
            clock.t = entry.next_due + 0.01
            await s._fire_due(entry)
        return entry
    entry = run(go())
    conn = sink.conn_factory()
    rows = events_of(conn)
    assert [json.loads(r["payload"])["time"] for r in rows] == \
        [1_000_010.0, 1_000_020.0, 1_000_030.0]
    assert [json.loads(r["payload"])["id"] for r in rows] == [r["request_id"] for r in rows]
    assert entry.next_due == 1_000_040.0


def test_a_restart_never_fires_a_time_twice_and_fires_the_latest_missed_once(sink):
    clock = Clock()
    fn = fn_with(Sched("10", overlap="allow"))

    async def first():
        s = scheduler(sink, clock)
        await s.reconcile([fn])
        entry = next(iter(s.entries.values()))
        clock.t += 10.5
        await s._fire_due(entry)   # fires 1_000_010

    async def after_restart(down):
        clock.t += down
        s = scheduler(sink, clock)
        await s.reconcile([fn])
        return next(iter(s.entries.values()))
    run(first())
    entry = run(after_restart(2.0))   # back before the next time: nothing missed
    assert entry.next_due == 1_000_020.0
    entry = run(after_restart(45.0))   # down past 20, 30, 40, 50: the latest (50) fires once
    assert entry.next_due == 1_000_050.0
    run(scheduler(sink, clock)._fire_due(entry))
    entry = run(after_restart(0.5))
    assert entry.next_due == 1_000_060.0
    dues = [json.loads(r["payload"])["time"] for r in events_of(sink.conn_factory())]
    assert dues == [1_000_010.0, 1_000_050.0]


def test_missed_skip_records_the_skip_and_fires_none(sink):
    clock = Clock()
    fn = fn_with(Sched("10", missed="skip"))
    run(scheduler(sink, clock).reconcile([fn]))
    clock.t += 35

    async def go():
        s = scheduler(sink, clock)
        await s.reconcile([fn])
        return next(iter(s.entries.values()))
    entry = run(go())
    assert entry.next_due == 1_000_040.0
    conn = sink.conn_factory()
    assert events_of(conn) == []
    (firing,) = store.firings(conn, "fn", fn.schedules[0].key)
    assert (firing["outcome"], firing["reason"], firing["due"]) == \
        ("skipped", "Missed", 1_000_030.0)


def test_overlap_forbid_skips_while_the_last_firing_is_queued_or_running(sink):
    clock = Clock()
    fn = fn_with(Sched("10"))
    s = scheduler(sink, clock)
    conn = sink.conn_factory()

    async def tick():
        entry = next(iter(s.entries.values()))
        clock.t = entry.next_due
        await s._fire_due(entry)
    run(s.reconcile([fn]))
    run(tick())                       # 10: enqueued
    run(tick())                       # 20: the first still queued -> skipped
    (event,) = queue.lease(conn, "fn", 1, time.time(), 30)
    run(tick())                       # 30: still running (leased) -> skipped
    queue.ack(conn, event.id)
    run(tick())                       # 40: done -> enqueued
    outcomes = [(f["due"], f["outcome"], f["reason"]) for f in
                reversed(store.firings(conn, "fn", fn.schedules[0].key))]
    assert outcomes == [(1_000_010.0, "enqueued", None), (1_000_020.0, "skipped", "Overlap"),
                        (1_000_030.0, "skipped", "Overlap"), (1_000_040.0, "enqueued", None)]


def test_queue_full_is_recorded_as_a_skip(sink):
    clock = Clock()
    fn = fn_with(Sched("10", overlap="allow"), maxQueuedEvents=1)
    s = scheduler(sink, clock)

    async def go():
        await s.reconcile([fn])
        entry = next(iter(s.entries.values()))
        for _ in range(2):
            clock.t = entry.next_due
            await s._fire_due(entry)
    run(go())
    conn = sink.conn_factory()
    assert len(events_of(conn)) == 1
    last = store.firings(conn, "fn", fn.schedules[0].key)[0]
    assert (last["outcome"], last["reason"]) == ("skipped", "QueueFull")


def test_disabled_does_nothing_and_re_enabled_resumes_without_catching_up(sink):
    clock = Clock()
    on = Sched("10", overlap="allow")
    off = dataclasses.replace(on, enabled=False)
    s = scheduler(sink, clock)
    run(s.reconcile([fn_with(on)]))
    run(s.reconcile([fn_with(off)]))
    assert s.entries == {}
    clock.t += 100   # what passes while disabled is not missed
    s2 = scheduler(sink, clock)   # even across a restart
    run(s2.reconcile([fn_with(off)]))
    assert s2.entries == {}
    run(s2.reconcile([fn_with(on)]))
    (entry,) = s2.entries.values()
    assert entry.next_due == 1_000_110.0
    assert events_of(sink.conn_factory()) == []


def test_a_bad_expression_is_an_error_in_status_not_a_crash(sink):
    def parse(expression, timezone, anchor):
        raise ValueError("expected rate(N unit), got nonsense")
    s = Scheduler(sink, parse=parse, payload=payload)
    run(s.reconcile([fn_with(Sched("x", index=2))]))
    assert s.entries == {} and "expected rate" in s.errors[("fn", 2)]


def test_the_loop_fires_on_time_with_the_real_clock(sink):
    s = Scheduler(sink, parse=lambda e, tz, anchor: Rate(0.2, anchor), payload=payload)
    fn = fn_with(Sched("0.2", overlap="allow"))

    async def go():
        await s.reconcile([fn])
        task = asyncio.get_running_loop().create_task(s.run())
        deadline = time.monotonic() + 5
        # Looked at on the sink's thread: a query on the loop's thread (a PostgreSQL pool
        # growing under load) would itself hold the loop up and make the firings late.
        while len(await sink.call(events_of)) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        s.stop()
        await task
        return [(json.loads(r["payload"])["time"], r) for r in await sink.call(events_of)]
    fired = run(go())
    assert len(fired) >= 3
    accepted = {r["request_id"]: r for r in sink.conn_factory().execute(
        "SELECT request_id, accepted FROM events")}
    for due, row in fired:
        assert 0 <= accepted[row["request_id"]]["accepted"] - due < 0.2


def test_a_schedule_the_store_kept_from_starting_starts_once_it_answers(sink):
    """A PostgreSQL store down when the service starts (or reloads): the schedule shows the
    error, and the loop starts it by itself once the store answers, no reload needed."""
    s = Scheduler(sink, parse=lambda e, tz, anchor: Rate(0.2, anchor), payload=payload)
    fn = fn_with(Sched("0.2", overlap="allow"))
    real_call, failures = sink.call, [2]

    async def call(func):
        if failures[0]:
            failures[0] -= 1
            raise backend.StoreUnavailable("store postgresql://sora:***@db/sora: down")
        return await real_call(func)
    sink.call = call

    async def go():
        await s.reconcile([fn])
        assert s.entries == {} and "trying again" in s.errors[("fn", 0)]
        task = asyncio.get_running_loop().create_task(s.run())
        deadline = time.monotonic() + 8
        while not await real_call(events_of) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        s.stop()
        await task
    run(go())
    assert s.errors == {} and s.unstarted == {} and len(s.entries) == 1
    assert events_of(sink.conn_factory())


def test_manual_fire_ignores_overlap_and_keeps_the_schedule(sink):
    clock = Clock()
    fn = fn_with(Sched("10"))
    s = scheduler(sink, clock)
    run(s.reconcile([fn]))
    ids = [run(s.fire_now(fn, fn.schedules[0])) for _ in range(2)]
    assert all(ids) and len(set(ids)) == 2
    assert store.state(sink.conn_factory(), "fn", fn.schedules[0].key)["last_due"] is None


# --- the control socket ---------------------------------------------------------------------
def test_control_request_and_answer(tmp_path):
    import zmq
    from sora import protocol as p
    p.make_run_dir(str(tmp_path))
    ctx = zmq.Context()
    server = ctx.socket(zmq.ROUTER)
    server.bind(control.endpoint(str(tmp_path)))

    def answer():
        ident, rid, op, body = server.recv_multipart()
        server.send_multipart([ident, rid, json.dumps({"op": op.decode(),
                                                       "body": json.loads(body)}).encode()])
    t = threading.Thread(target=answer)
    t.start()
    assert control.request(str(tmp_path), "status", {"function": "f"}) == \
        {"op": "status", "body": {"function": "f"}}
    t.join()
    t = threading.Thread(target=answer)
    t.start()
    assert run(control.request_async(str(tmp_path), "fire", {"index": 1})) == \
        {"op": "fire", "body": {"index": 1}}
    t.join()
    with pytest.raises(control.TriggersUnavailable):
        control.request(str(tmp_path), "status", timeout=0.2)
    server.close(linger=0)
    ctx.term()
    with pytest.raises(control.TriggersUnavailable):
        control.request(str(tmp_path / "nowhere"), "status")


# --- the service's answers (no process: its parts on a real store) -------------------------
@dataclasses.dataclass(frozen=True)
class Watched:
    path: str = "/srv/inbox"
    index: int = 2
    pattern: str | None = "*.csv"
    recursive: bool = False
    events: tuple = ("created",)
    enabled: bool = True
    kind: str = "file"

    @property
    def key(self):
        return f"file:{self.path}|{self.pattern}|0"


class FakeWatcher:
    def __init__(self, fail=None):
        self.fail = fail

    def status(self):
        return {"state": "active", "detail": None, "pending": 1, "seen": 4}

    async def fire_now(self, key=None):
        if self.fail:
            raise self.fail
        return ["r-" + (key or "scan")]


def service_with(sink, fn, watcher):
    from sora.triggers.service import TriggerService, WatcherRun
    svc = TriggerService.__new__(TriggerService)
    svc.config = SimpleNamespace(functions=[fn])
    svc.sink = sink
    svc.scheduler = Scheduler(sink, parse=rate_parse, payload=payload)
    run_ = WatcherRun(fn, fn.files[0], sink)
    run_.watcher = watcher
    svc.watchers = {(fn.name, 2): run_}
    return svc


def test_status_and_fire_answers(sink):
    fn = fn_with(Sched("10", index=1), Sched("20", index=3, enabled=False))
    fn.files = (Watched(),)

    async def go(watcher):
        svc = service_with(sink, fn, watcher)
        await svc.scheduler.reconcile([fn])
        return svc, await svc.handle("status", {"function": "fn"}), \
            await svc.handle("fire", {"function": "fn", "index": 2, "key": "a.csv"})
    svc, status, fired = run(go(FakeWatcher()))
    items = status["functions"]["fn"]
    assert [(t["index"], t["kind"], t["state"]) for t in items] == \
        [(1, "schedule", "active"), (2, "file", "active"), (3, "schedule", "disabled")]
    assert len(items[0]["next"]) == 3 and items[2]["next"] == []
    assert items[1]["watching"] == {"path": "/srv/inbox", "pattern": "*.csv",
                                    "recursive": False, "events": ["created"]}
    assert (items[1]["pending"], items[1]["seen"]) == (1, 4)
    assert fired == {"requestIds": ["r-a.csv"]}
    _, _, bad_key = run(go(FakeWatcher(ValueError("expected a regular file"))))
    assert bad_key["errorType"] == "InvalidParameterValueException"
    _, _, gone = run(go(FakeWatcher(RuntimeError("not watching yet"))))
    assert gone["errorType"] == "ResourceConflictException"
    # a schedule's manual firing, even a disabled one's
    svc2 = service_with(sink, fn, FakeWatcher())
    manual = run(svc2.handle("fire", {"function": "fn", "index": 3}))
    assert len(manual["requestIds"]) == 1


def test_a_firing_the_store_could_not_take_is_tried_again_for_the_same_due_time(sink):
    clock = Clock()
    fn = fn_with(Sched("10", overlap="allow"))
    s = scheduler(sink, clock)
    real_fire, failures = sink.fire, [backend.StoreUnavailable("the store is down")]

    async def flaky_fire(*args, **kwargs):
        if failures:
            raise failures.pop()
        return await real_fire(*args, **kwargs)
    sink.fire = flaky_fire

    async def go():
        await s.reconcile([fn])
        entry = next(iter(s.entries.values()))
        clock.t = entry.next_due + 0.1
        await s._fire_due(entry)
        assert (entry.next_due, entry.retry_at) == (1_000_010.0, clock.t + 1.0)
        assert entry.wake_at() == clock.t + 1.0
        clock.t += 1.0
        await s._fire_due(entry)
        return entry
    entry = run(go())
    assert entry.retry_at is None and entry.next_due == 1_000_020.0
    (row,) = events_of(sink.conn_factory())
    assert json.loads(row["payload"])["time"] == 1_000_010.0


# --- several hosts on one PostgreSQL store: each due time fires once cluster-wide -------------
@pytest.fixture
def two_hosts(tmp_path, postgres_url):
    """Two hosts' sinks on one fresh PostgreSQL database: two connections, each on its sink's
    own thread, as two trigger services sharing the store."""
    from sora.config import StoreConfig
    shared = StoreConfig(kind="postgresql", url=postgres_url)
    sinks = [Sink(str(tmp_path / f"host{i}"), store_config=shared, host=f"host{i}")
             for i in range(2)]
    yield sinks
    for s in sinks:
        s.close()


def test_two_sinks_firing_the_same_due_times_at_once_store_one_event_each(two_hosts):
    trigger = Sched("10", overlap="allow")
    fn = fn_with(trigger)
    dues = [1_000_000.0 + 10 * k for k in range(1, 31)]

    async def fire(sink, due):
        try:
            return await sink.fire(fn, trigger, "schedule:0", b"{}", due, once=True)
        except store.AlreadyFired:
            return None

    async def go():
        return [await asyncio.gather(*(fire(s, due) for s in two_hosts)) for due in dues]
    outcomes = run(go())
    assert all(sum(rid is not None for rid in pair) == 1 for pair in outcomes), outcomes
    conn = two_hosts[0].conn_factory()
    assert len(events_of(conn)) == len(dues)
    history = store.firings(conn, "fn", trigger.key, limit=100)
    assert sorted(f["due"] for f in history) == dues
    assert {f["outcome"] for f in history} == {"enqueued"}
    assert store.state(conn, "fn", trigger.key)["last_due"] == dues[-1]


def test_two_schedulers_on_one_store_fire_skip_and_catch_up_once_per_due_time(two_hosts):
    clock = Clock()
    fn = fn_with(Sched("10"))                    # overlap: forbid, missed: latest
    hosts = [scheduler(s, clock) for s in two_hosts]
    conn = two_hosts[0].conn_factory()
    key = fn.schedules[0].key

    async def tick(drain: bool):
        entries = [next(iter(h.entries.values())) for h in hosts]
        assert entries[0].next_due == entries[1].next_due   # one anchor, shared
        clock.t = entries[0].next_due + 0.01
        await asyncio.gather(*(h._fire_due(e) for h, e in zip(hosts, entries)))
        if drain:
            for event in queue.lease(conn, "fn", 10, time.time(), 30):
                queue.ack(conn, event.id)

    async def go():
        await asyncio.gather(*(h.reconcile([fn]) for h in hosts))
        for _ in range(4):
            await tick(drain=True)       # 10..40: each enqueued once
        await tick(drain=False)          # 50: enqueued, left running
        await tick(drain=True)           # 60: the 50 still in flight: one Overlap skip
    run(go())
    outcomes = [(f["due"], f["outcome"], f["reason"]) for f in
                reversed(store.firings(conn, "fn", key, limit=100))]
    assert outcomes == [(1_000_000.0 + 10 * k, "enqueued", None) for k in range(1, 6)] + \
        [(1_000_060.0, "skipped", "Overlap")]
    # both down past 70..100, both back at once: the latest missed time fires once
    clock.t += 45

    async def restart():
        again = [scheduler(s, clock) for s in two_hosts]
        await asyncio.gather(*(h.reconcile([fn]) for h in again))
        entries = [next(iter(h.entries.values())) for h in again]
        assert {e.next_due for e in entries} == {1_000_100.0}
        await asyncio.gather(*(h._fire_due(e) for h, e in zip(again, entries)))
    run(restart())
    latest = store.firings(conn, "fn", key, limit=100)
    assert [(f["due"], f["outcome"]) for f in latest[:2]] == \
        [(1_000_100.0, "enqueued"), (1_000_060.0, "skipped")]


def test_a_store_that_is_down_is_a_clear_answer_without_the_password(tmp_path):
    """The attacker's side of the control socket (and of `sora triggers`, the API and the
    dashboard, which pass its answers on): the store's password is never in an error."""
    from sora.config import StoreConfig
    from tests.support import free_port
    secret = "do-not-show-me-0123"
    down = StoreConfig(kind="postgresql",
                       url=f"postgresql://sora:{secret}@127.0.0.1:{free_port()}/sora")
    s = Sink(str(tmp_path), store_config=down)
    try:
        fn = fn_with(Sched("10", index=1))
        fn.files = ()
        svc = service_with_no_watcher(s, fn)
        answer = run(svc.answer(b"status", b'{"function": "fn"}'))
    finally:
        s.close()
    assert answer["errorType"] == "StoreUnavailable", answer
    assert secret not in json.dumps(answer) and "***" in answer["error"]


def service_with_no_watcher(sink, fn):
    from sora.triggers.service import TriggerService
    svc = TriggerService.__new__(TriggerService)
    svc.config = SimpleNamespace(functions=[fn])
    svc.sink = sink
    svc.scheduler = Scheduler(sink, parse=rate_parse, payload=payload)
    svc.watchers = {}
    return svc


def test_a_schedule_enabled_again_on_two_hosts_misses_nothing_it_passed_while_off(two_hosts):
    clock = Clock()
    on = Sched("10", overlap="allow")
    off = dataclasses.replace(on, enabled=False)
    hosts = [scheduler(s, clock) for s in two_hosts]
    for h in hosts:
        run(h.reconcile([fn_with(on)]))
    for h in hosts:                 # a reload with `enabled: false` on each host in turn
        run(h.reconcile([fn_with(off)]))
    clock.t += 100
    for h in hosts:                 # and back: the second finds it enabled by the first
        run(h.reconcile([fn_with(on)]))
    assert [e.next_due for h in hosts for e in h.entries.values()] == [1_000_110.0] * 2
    assert events_of(two_hosts[0].conn_factory()) == []


def test_hosts_firing_together_cannot_pass_the_functions_cap(two_hosts):
    """File firings (no `once`) of two hosts into one function capped at 12 events: the
    firing's caps check holds the function's totals row (sora.store.queue.stored_totals with
    lock), so together they store 12, and every other firing is a QueueFull skip."""
    trigger = Watched()
    fn = fn_with(maxQueuedEvents=12)

    async def host(sink, n):
        return [await sink.fire(fn, trigger, "file:2", b"{}", float(i)) for i in range(n)]

    async def go():
        return await asyncio.gather(*(host(s, 10) for s in two_hosts))
    fired = [rid for ids in run(go()) for rid in ids]
    assert sum(rid is not None for rid in fired) == 12
    conn = two_hosts[0].conn_factory()
    assert queue.stored_totals(conn, "fn") == (12, 24)
    reasons = Counter(f["reason"] for f in store.firings(conn, "fn", trigger.key, limit=100))
    assert reasons == {None: 12, "QueueFull": 8}


def test_a_database_restart_makes_firings_late_never_lost_nor_twice(
        tmp_path, postgres_server_factory, monkeypatch, caplog):
    """PostgreSQL restarted under a running schedule (its own server): the time due while it
    is down is tried again until stored, the latest missed one fires once, and firing goes on
    by itself once it is back."""
    from sora.config import StoreConfig
    from sora.triggers import sink as sink_module
    # A short wait for a pooled connection, so the store's being down is an error here (the
    # service's 5 s would mostly wait a short restart out).
    monkeypatch.setattr(sink_module, "BUSY_MS", 300)
    caplog.set_level("INFO", logger="sora.triggers")
    server = postgres_server_factory()
    shared = StoreConfig(kind="postgresql", url=server.url(server.create_database()))
    sink = Sink(str(tmp_path), store_config=shared)
    s = Scheduler(sink, parse=lambda e, tz, anchor: Rate(0.5, anchor), payload=payload)
    fn = fn_with(Sched("0.5", overlap="allow"))

    async def go():
        await s.reconcile([fn])
        loop = asyncio.get_running_loop()
        task = loop.create_task(s.run())
        await asyncio.sleep(1.2)
        await loop.run_in_executor(None, lambda: server.restart(down_s=1.5))
        back = time.time()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                dues = [json.loads(r["payload"])["time"] for r in await sink.call(events_of)]
            except backend.ERRORS:
                dues = []
            if len([d for d in dues if d > back + 0.5]) >= 2:
                break
            await asyncio.sleep(0.1)
        s.stop()
        await task
        return back, dues
    try:
        back, dues = run(go())
    finally:
        sink.close()
        backend.close_pools(lambda url: url == shared.url)
    assert dues == sorted(set(dues)), f"a due time fired twice: {dues}"
    assert len([d for d in dues if d > back + 0.5]) >= 2, f"firing did not resume: {dues}"
    said = [r.getMessage() for r in caplog.records if r.name == "sora.triggers"]
    assert len([m for m in said if "not stored" in m]) == 1, said     # said once, not per try
    assert any("the store answers again" in m for m in said), said
    assert not any(urlsplit(shared.url).password in m for m in said)
