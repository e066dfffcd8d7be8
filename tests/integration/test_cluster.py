"""Sora on several hosts across real network boundaries (issue 16 points 3, 5, 6).

One machine, several hosts: a main host in the root namespace and joined hosts in network
namespaces of their own (tests/netns.py: `Network`, `Cluster`), each a real supervisor with its
own config, state dir, keys and function folders, talking over tcp with CURVE. The hosts:

    main  (root namespace; gateway on 127.0.0.1)  spread, single, work
    h0    (namespace 0)                           spread, work, solo (only here)
    h1    (namespace 1)                           spread, work
    stray (namespace 2, key not on the main host's allow-list; started by its own test)

Every function answers its host's name (HOST_NAME in its sora.yaml, different on each host),
so a test sees where a call ran. `work` and `solo` (isolation: none) also leave marks in a
folder the test reads: `<key>.<host>.<requestId>.start` and `.end` around their sleep, which
is how an async event or a call whose caller is gone is seen to run (and where).

The cluster is shared by the module to keep it fast; a test that kills or cuts a host brings
it back before it ends (in `finally`), so the next test finds every host serving. The tests
of host loss run last, the kill -9 of the main host at the very end.
"""
from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
import requests

from tests import netns
from tests.load import Load, throughput
from tests.support import wait_for, write_function

pytestmark = pytest.mark.integration

# Answers where it ran; ?ms= (or an event's sleepMs) sleeps that long; with a key (?key= or
# the event's) and $MARKS set, leaves a mark before and after the sleep.
PROBE = """
const fs = require('node:fs');
const path = require('node:path');
exports.handler = async (event, context) => {
  const q = event.queryStringParameters || {};
  const key = q.key || event.key;
  const ms = Number(q.ms || event.sleepMs || 0);
  const me = process.env.HOST_NAME;
  const mark = (stage) => {
    if (key && process.env.MARKS) {
      fs.writeFileSync(path.join(process.env.MARKS,
                                 `${key}.${me}.${context.awsRequestId}.${stage}`),
                       String(Date.now()));
    }
  };
  mark('start');
  if (ms) await new Promise((r) => setTimeout(r, ms));
  mark('end');
  return { host: me, requestId: context.awsRequestId, pid: process.pid };
};
"""

JOINED = ("h0", "h1")
EVERY_HOST = {netns.Cluster.MAIN, *JOINED}
# The kill -9 and cut tests' load: sync calls long enough to be in flight when the host goes
# (and far shorter than the functions' 30 s timeout, which they must not wait for).
SYNC_MS = 1500
EVENTS, EVENT_MS = 24, 1500
SOON = 2.5            # "at once": a lost call is answered within this of a kill -9 (TCP reset)
LIVENESS = 3.0        # heartbeat liveness: a host silent this long is lost
SWEEP = 0.5           # ... noticed by the client's sweep, which runs every 0.5 s
SLACK = 0.5           # scheduling on a busy 2-core machine


def functions_of(base, host: str, names: list[str], marks) -> list:
    """The function folders of one host: the same code everywhere, HOST_NAME its own."""
    settings = {
        # Sandboxed, two instances kept warm: where calls run, and the throughput test.
        "spread": dict(minInstances=2, maxInstances=2, timeout=30),
        "single": dict(minInstances=2, maxInstances=2, timeout=30),
        # isolation: none so that they can leave marks in the test's folder.
        "work": dict(minInstances=2, maxInstances=2, timeout=30, isolation="none",
                     eventInvoke={"maxConcurrency": 6, "retryDelaySeconds": 0.5}),
        "solo": dict(minInstances=1, maxInstances=2, timeout=30, isolation="none"),
        "stray": dict(minInstances=1, maxInstances=1, timeout=30),
    }
    return [write_function(base / f"fns-{host}", name, {"index.js": PROBE}, name=name,
                           auth="none", env={"HOST_NAME": host, "MARKS": str(marks)},
                           **settings[name]) for name in names]


@pytest.fixture(scope="module")
def world(_netns_session, tmp_path_factory):
    """The module's cluster: main + h0 + h1 serving, a third namespace left for `stray`."""
    base = tmp_path_factory.mktemp("cluster")
    marks = base / "marks"
    marks.mkdir()
    network = netns.Network(3)
    try:
        cluster = netns.Cluster(network, base)
        fns = {"main": functions_of(base, "main", ["spread", "single", "work"], marks),
               "h0": functions_of(base, "h0", ["spread", "work", "solo"], marks),
               "h1": functions_of(base, "h1", ["spread", "work"], marks)}
        for i, name in enumerate(JOINED):
            cluster.add(network[i], name, fns[name])
        cluster.make_main(fns["main"]).start(["spread", "single", "work"], timeout=120)
        for name in JOINED:
            cluster.start_joined(name, [f.name for f in fns[name]], timeout=120)
        yield cluster, marks
    finally:
        left = network.teardown()
        assert not left, f"network namespaces left behind: {left}"


@pytest.fixture
def cluster(world):
    return world[0]


@pytest.fixture
def marks(world):
    return world[1]


def key() -> str:
    return uuid.uuid4().hex[:12]


def call(cluster, function: str, **params) -> dict:
    r = cluster.main.invoke(function, params=params, timeout=30)
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


def answered_by(cluster, function: str, host: str, timeout: float = 45) -> dict:
    """Call `function` through the main gateway until `host` answers one. The calls take
    50 ms, 12 at a time: more than the other hosts' windows hold, so a host back with a
    fresh window is chosen if the gateway routes to it at all. (Calls that take no time
    would all go to workers whose windows grew while it was away: routing picks the most
    free credits, and a fresh window is the smallest.)"""
    def answered():
        with Load(f"{cluster.main.url}/functions/{function}?ms=50", 12) as load:
            time.sleep(1.0)
        return next((c.body for c in load.calls if c.status == 200
                     and (c.body or {}).get("host") == host), None)
    try:
        return wait_for(answered, timeout, 0.1, f"{host} to answer {function} again")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; hosts: {cluster.main.health().get('hosts')}; main "
                             f"host's log:\n{cluster.main.log()[-3000:]}") from None


def post_events(cluster, function: str, events: list[dict]) -> None:
    for event in events:
        r = cluster.main.session.post(
            f"{cluster.main.url}/2015-03-31/functions/{function}/invocations",
            headers={"X-Amz-Invocation-Type": "Event"}, data=json.dumps(event), timeout=10)
        assert r.status_code == 202, (r.status_code, r.text)


def mark_names(marks, prefix: str) -> list[tuple[str, str, str, str]]:
    """(key, host, requestId, stage) of every mark whose key starts with `prefix`."""
    return [tuple(p.name.split(".")) for p in marks.glob(f"{prefix}*")]


def in_flight_on(marks, prefix: str, host: str) -> set[str]:
    """Keys whose run on `host` started and has not ended."""
    found = mark_names(marks, prefix)
    started = {(k, r) for k, h, r, s in found if h == host and s == "start"}
    ended = {(k, r) for k, h, r, s in found if h == host and s == "end"}
    return {k for k, r in started - ended}


def started_since(marks, prefix: str, host: str, since: float) -> set[str]:
    """Keys whose run on `host` started at or after `since` (wall clock) and has not ended."""
    return running_through(marks, prefix, host, float("inf"), time.time()) - \
        running_through(marks, prefix, host, since, time.time())


def running_through(marks, prefix: str, host: str, start: float, end: float) -> set[str]:
    """Keys whose run on `host` started before `start` and had not ended by `end` (wall
    clock, by the marks' mtimes): runs the host held for the whole of [start, end]."""
    times = {}
    for path in marks.glob(f"{prefix}*"):
        k, h, r, stage = path.name.split(".")
        if h == host:
            times[(k, r, stage)] = path.stat().st_mtime
    return {k for (k, r, stage), t in times.items()
            if stage == "start" and t < start and times.get((k, r, "end"), end + 1) > end}


def ended_on(marks, prefix: str) -> dict[str, set[str]]:
    """key -> the hosts where a run of it ended."""
    out: dict[str, set[str]] = {}
    for k, h, r, s in mark_names(marks, prefix):
        if s == "end":
            out.setdefault(k, set()).add(h)
    return out


def test_calls_spread_across_the_hosts(cluster):
    health = cluster.main.health()
    served = netns.served_by(health)
    assert {name for name, fns in served.items() if "spread" in fns} == EVERY_HOST, served
    assert set(health["functions"]["spread"]["hosts"]) == EVERY_HOST, health["functions"]
    assert {netns.host_state(health, name) for name in EVERY_HOST} == {"joined"}
    # Calls that take no time: all answered, by hosts that serve it (routing goes to the
    # worker with the most free credits, which for instant calls may be the main host's
    # every time on a loaded machine: seen as {'main': 176, 'h0': 3} in a full run).
    instant = _by_host(cluster, "/functions/spread", 90)
    assert set(instant) <= EVERY_HOST and sum(instant.values()) >= 90, instant
    # Calls of 20 ms from 12 clients, more than one host's 2 instances can run: routing
    # (the worker with the most free credits) shares them about evenly.
    busy = _by_host(cluster, "/functions/spread?ms=20", 150)
    assert set(busy) == EVERY_HOST and min(busy.values()) >= sum(busy.values()) * 0.2, busy


def _by_host(cluster, path: str, count: int) -> dict[str, int]:
    with Load(f"{cluster.main.url}{path}", 12) as load:
        wait_for(lambda: len(load.snapshot()) >= count, 30, what=f"{count} calls")
    calls = load.calls
    assert all(c.status == 200 for c in calls), {(c.status, c.error_type) for c in calls}
    by_host: dict[str, int] = {}
    for c in calls:
        by_host[c.body["host"]] = by_host.get(c.body["host"], 0) + 1
    return by_host


def test_a_function_only_on_a_joined_host_is_served_from_there_through_the_main_gateway(
        cluster):
    health = cluster.main.health()
    assert "solo" in health["functions"], health["functions"].keys()
    assert {name for name, fns in netns.served_by(health).items() if "solo" in fns} == {"h0"}
    assert health["functions"]["solo"]["hosts"] == ["h0"], health["functions"]["solo"]
    body = call(cluster, "solo")
    assert body["host"] == "h0"
    # Its record came over tcp to the main host's store: `sora inspect` works from there.
    record = cluster.main.record(body["requestId"])
    assert record["function"] == "solo" and record["status"] == "ok", record
    # A function no host serves is still unknown.
    r = cluster.main.invoke("no-such-function")
    assert r.status_code == 404, r.text


def test_three_hosts_serve_about_three_times_the_calls_of_one(cluster):
    """maxInstances 2 and 100 ms a call: 20 calls/s is one host's ceiling. `single` is
    served by the main host only, `spread` by all three; the same 60 clients saturate both."""
    one = throughput(f"{cluster.main.url}/functions/single?ms=100", 60, 5, warmup=1.5)
    three = throughput(f"{cluster.main.url}/functions/spread?ms=100", 60, 5, warmup=1.5)
    print(f"1 host {one['rps']:.1f} calls/s, 3 hosts {three['rps']:.1f} calls/s "
          f"({three['rps'] / one['rps']:.2f}x)")
    assert one["failed"] == 0 and three["failed"] == 0, (one, three)
    assert 15 <= one["rps"] <= 21, one       # the one host is saturated, not starved
    assert three["rps"] >= 2.4 * one["rps"], (one, three)


def test_a_host_whose_key_is_not_allowed_is_refused_and_its_address_logged(cluster, marks):
    network = cluster.network
    stray_fns = functions_of(cluster.base, "stray", ["stray", "spread"], marks)
    stray = cluster.add(network[2], "stray", stray_fns, allowed=False)
    address = network[2].address
    stray.start(ready=lambda: f"refused a connection from {address}"
                in cluster.main.log(whole=True), timeout=60)
    try:
        assert netns.host_state(cluster.main.health(), "stray") is None
        assert "stray" not in cluster.main.health()["functions"]
        r = cluster.main.invoke("stray")
        assert r.status_code == 404, r.text
        # None of its workers takes a call of a function the cluster serves.
        with Load(f"{cluster.main.url}/functions/spread", 6) as load:
            wait_for(lambda: len(load.snapshot()) >= 30, 30, what="30 calls")
        assert {c.body["host"] for c in load.calls if c.status == 200} <= EVERY_HOST
        assert all(c.status == 200 for c in load.calls)
    finally:
        stray.stop()


def _lost_host_under_load(cluster, marks, victim: str, lose, bring_back, lost_within: float,
                          others_within: float):
    """Sync calls and async events on `work` while `lose()` takes `victim` away; checks what
    issue 16 point 5 asks and brings the host back (bring_back) whatever happened."""
    prefix = f"ev{key()}-"
    sync_prefix = f"sy{key()}-"
    load = Load(f"{cluster.main.url}/functions/work", 6,
                path=lambda i, n: f"/functions/work?ms={SYNC_MS}&key={sync_prefix}{i}x{n}")
    try:
        load.start()
        wait_for(lambda: in_flight_on(marks, sync_prefix, victim), 30, 0.02,
                 f"sync calls to run on {victim}")
        post_events(cluster, "work", [{"key": f"{prefix}{i}", "sleepMs": EVENT_MS}
                                      for i in range(EVENTS)])
        # Lose the host while it runs an event of ours that started less than a second ago
        # (so it is still running when the loss lands), and see by the marks' times what it
        # held through the loss: events, and sync calls (checked below).
        wait_for(lambda: started_since(marks, prefix, victim, time.time() - 1.0), 30, 0.02,
                 f"an event to start on {victim}")
        t_lost, wall_lost = time.monotonic(), time.time()
        lose()
        lost_by = time.time()
        held_events = running_through(marks, prefix, victim, wall_lost, lost_by)
        held_sync = running_through(marks, sync_prefix, victim, wall_lost, lost_by)
        wait_for(lambda: any(c.start > t_lost + others_within + 3 for c in load.snapshot()),
                 others_within + 20, what="calls started well after the loss")
        calls = load.stop()
        before = [c for c in calls if c.start < t_lost and c.end > t_lost]
        between = [c for c in calls if t_lost <= c.start < t_lost + others_within]
        after = [c for c in calls if c.start >= t_lost + others_within]

        lost = [c for c in before if c.status != 200]
        # The calls it held (by their marks) were answered, not left hanging or lost.
        assert lost or not held_sync, \
            f"calls {held_sync} were running on {victim} when it was lost, none failed"
        failed_after = [c.start - t_lost for c in calls if c.start >= t_lost and c.status != 200]
        print(f"{victim} lost: {len(lost)} in-flight call(s) answered "
              f"{min((c.end for c in lost), default=t_lost) - t_lost:.2f}-"
              f"{max((c.end for c in lost), default=t_lost) - t_lost:.2f}"
              f" s after; last failed new call started {max(failed_after, default=0):.2f} s "
              f"after; {len(after)} calls started after {others_within} s, "
              f"{sum(c.status == 200 for c in after)} ok")
        assert {(c.status, c.error_type) for c in lost} <= {(502, "Sora.WorkerLost")}, \
            [(c.status, c.body, c.error) for c in lost]
        late = [round(c.end - t_lost, 2) for c in lost if c.end - t_lost > lost_within]
        assert not late, f"in-flight calls answered {late} s after the loss (> {lost_within})"
        assert all(c.status == 200 or c.error_type == "Sora.WorkerLost" for c in between), \
            {(c.status, c.error_type, c.error) for c in between}
        assert after and all(c.status == 200 for c in after), \
            [(round(c.start - t_lost, 2), c.status, c.error_type, c.error) for c in after
             if c.status != 200]
        assert {c.body["host"] for c in after} == EVERY_HOST - {victim}

        # Every accepted event ran to its end at least once, and those the host held ran
        # again elsewhere (a host only cut off may finish them too: its marks are local).
        assert held_events, f"no event was running on {victim}"
        keys = {f"{prefix}{i}" for i in range(EVENTS)}

        def all_ran():
            ended = ended_on(marks, prefix)
            return set(ended) == keys and all(ended[k] - {victim} for k in held_events)
        try:
            wait_for(all_ran, 90, 0.2, f"all {EVENTS} events to run")
            print(f"{len(held_events)} event(s) held by {victim} ran again elsewhere; "
                  f"{sum(len(h) > 1 for h in ended_on(marks, prefix).values())} ran twice")
        except AssertionError:
            ended = ended_on(marks, prefix)
            raise AssertionError(f"not run: {sorted(keys - set(ended))}; held by {victim}: "
                                 f"{ {k: ended.get(k) for k in held_events} }") from None
    finally:
        load.stop(timeout=5)
        bring_back()


def test_kill_9_of_a_joined_host_under_load(cluster, marks):
    """Its processes die, the kernel resets their connections: the gateway answers what
    they held Sora.WorkerLost at once, and new calls go to the others."""
    victim = "h1"
    _lost_host_under_load(
        cluster, marks, victim, lose=cluster.host_of[victim].kill9,
        bring_back=lambda: _start_again(cluster, victim), lost_within=SOON,
        others_within=LIVENESS)


def test_cutting_a_joined_hosts_link_under_load(cluster, marks):
    """No reset, no answer: the workers fall silent; after the heartbeat liveness (3 s,
    noticed by the client's 0.5 s sweep) what they held is answered Sora.WorkerLost; calls
    started 3 s after the cut all go to the others (the main host drops a host silent 3 s)."""
    victim = "h0"
    host = cluster.host_of[victim]
    _lost_host_under_load(
        cluster, marks, victim, lose=host.cut,
        bring_back=lambda: _restore(cluster, victim), lost_within=LIVENESS + SWEEP + SLACK,
        others_within=LIVENESS)


def _start_again(cluster, name: str) -> None:
    host = cluster.host_of[name]
    host.kill9()
    cluster.start_joined(name, ["spread", "work"])
    answered_by(cluster, "spread", name)


def _restore(cluster, name: str) -> None:
    cluster.host_of[name].restore()
    answered_by(cluster, "spread", name)


def test_a_host_cut_off_and_restored_serves_again_by_itself(cluster):
    name = "h0"
    host = cluster.host_of[name]
    host.cut()
    try:
        wait_for(lambda: netns.host_state(cluster.main.health(), name) == "lost", 15, 0.2,
                 f"the main host to drop {name}")
        assert "solo" not in netns.served_by(cluster.main.health()).get(name, ())
        assert {call(cluster, "spread")["host"] for _ in range(12)} <= EVERY_HOST - {name}
    finally:
        host.restore()
    # Nothing is done on either host: its uplink joins again, the gateway reconnects.
    wait_for(lambda: cluster.serving(name, ["spread", "work", "solo"]), 45, 0.2,
             f"{name} to rejoin")
    assert answered_by(cluster, "spread", name)["host"] == name
    assert call(cluster, "solo")["host"] == name


def test_a_killed_host_started_again_serves_by_itself(cluster):
    name = "h1"
    host = cluster.host_of[name]
    old = cluster.joined[name]
    host.kill9()
    assert old.proc.poll() is not None
    wait_for(lambda: netns.host_state(cluster.main.health(), name) == "lost", 15, 0.2,
             f"the main host to drop {name}")
    # Started again as an operator (or systemd) would; nothing is done on the main host.
    cluster.start_joined(name, ["spread", "work"])
    assert answered_by(cluster, "spread", name)["host"] == name


def test_kill_9_of_the_main_supervisor_does_not_stop_a_joined_hosts_call(cluster, marks):
    """The control plane, gateways and recorder die; the worker on h0 finishes the call it
    runs, and its record reaches the main host's store once the main host is back."""
    k = f"mk{key()}"
    caller = threading.Thread(target=lambda: _ignore_errors(
        lambda: cluster.main.invoke("solo", params={"ms": 4000, "key": k}, timeout=30)))
    caller.start()
    started = wait_for(lambda: [m for m in mark_names(marks, k) if m[3] == "start"], 20, 0.02,
                       "the call to start on h0")
    assert started[0][1] == "h0"
    request_id = started[0][2]
    cluster.main.kill9()
    t_killed = time.monotonic()
    caller.join(30)
    wait_for(lambda: (k, "h0", request_id, "end") in mark_names(marks, k), 15, 0.05,
             "the call to finish on h0 with the main host down")
    assert time.monotonic() - t_killed < 10
    # The main host comes back on its config and state dir; the joined hosts rejoin by
    # themselves and the record the worker kept is delivered.
    cluster.restart_main(["spread", "single", "work"])
    for name in JOINED:
        wait_for(lambda: cluster.serving(name, ["spread", "work"]), 45, 0.2,
                 f"{name} to rejoin the restarted main host")
    record = cluster.main.record(request_id, timeout=30)
    assert record["function"] == "solo" and record["status"] == "ok", record
    assert call(cluster, "solo")["host"] == "h0"


def _ignore_errors(fn) -> None:
    try:
        fn()
    except requests.RequestException:
        pass    # the main host's gateway died under this call: its caller loses the answer
