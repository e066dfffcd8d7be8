"""Scheduled triggers on a real host (supervisor, gateway, trigger service, dispatcher): firing
on time, `input`, overlap forbid, retries / dead letters / replay, the missed-run policies
across a stop and start, a queued firing surviving kill -9 of the whole host, and disabling /
re-enabling by a live reload. Real time, `rate(1 second)`, polling with deadlines."""
from __future__ import annotations

import calendar
import datetime
import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest
import yaml

from sora.store import triggers as trigger_store
from sora.triggers import control
from tests.support import SoraHost, json_of, served, wait_for, write_function

pytestmark = pytest.mark.integration

# Leaves <marks>/<request id>.json with the event and when the handler started; sleeps
# SLEEP_MS; fails while <marks>/fail exists.
MARKER = """
const fs = require('node:fs');
const path = require('node:path');
exports.handler = async (event, context) => {
  const marks = process.env.MARKS;
  fs.writeFileSync(path.join(marks, context.awsRequestId + '.json'),
                   JSON.stringify({ event, start: Date.now() }));
  const sleepMs = Number(process.env.SLEEP_MS || 0);
  if (sleepMs) await new Promise((r) => setTimeout(r, sleepMs));
  if (fs.existsSync(path.join(marks, 'fail'))) throw new RangeError('failing on purpose');
  return 'ok';
};
"""

INPUT = {"hello": "wörld", "n": [1, 2.5, None], "nested": {"ok": True}}


def marker(base: Path, name: str, triggers: list, env: dict | None = None, **config) -> Path:
    marks = base / "marks" / name
    marks.mkdir(parents=True, exist_ok=True)
    # `isolation: none`: the marks are in a folder of the host's, which a sandbox hides.
    return write_function(base / "fns", name, {"index.js": MARKER}, name=name,
                          trigger=["http", *triggers], isolation="none",
                          env={"MARKS": str(marks), **(env or {})}, **config)


def marks_of(base: Path, name: str) -> dict[str, dict]:
    return marks_in(base / "marks" / name)


def marks_in(folder: Path) -> dict[str, dict]:
    """request id -> {"event", "start" (ms)} for each firing's run that started (not a
    reload's warm-up call, sora/worker/warmup.py)."""
    out = {}
    for f in folder.glob("*.json"):
        try:
            mark = json.loads(f.read_text())
        except ValueError:
            continue   # being written
        if mark["event"] != {"source": "sora.warmup"}:
            out[f.stem] = mark
    return out


def due_of(event: dict) -> float:
    return calendar.timegm(time.strptime(event["time"], "%Y-%m-%dT%H:%M:%SZ"))


def api(host, path, method="GET", **kwargs):
    r = host.session.request(method, f"{host.url}/api{path}", timeout=10, **kwargs)
    return r.status_code, json_of(r)


def records(host, name: str) -> list[dict]:
    return api(host, f"/functions/{name}/invocations?limit=200")[1]["invocations"]


def history(host, name: str, index: int, expression: str = "rate(1 second)") -> list[dict]:
    """The trigger's firings and skips, oldest first, from the store."""
    conn = sqlite3.connect(str(Path(host.config_path).parent / "state" / "queue.db"))
    conn.row_factory = sqlite3.Row
    try:
        return list(reversed(trigger_store.firings(conn, name, f"schedule:{expression}@UTC",
                                                   limit=100)))
    finally:
        conn.close()


def queue_rows(host, name: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(str(Path(host.config_path).parent / "state" / "queue.db"))
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT request_id, trigger, state FROM events WHERE function = ?",
                            (name,)).fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("schedules")


@pytest.fixture(scope="module")
def host(base):
    dirs = [
        marker(base, "tick", [{"schedule": "rate(1 second)", "overlap": "allow"}]),
        marker(base, "inputs", [{"schedule": "rate(1 second)", "input": INPUT}]),
        marker(base, "slow", [{"schedule": "rate(1 second)"}], env={"SLEEP_MS": "2500"}),
        marker(base, "failing", [{"schedule": "rate(2 seconds)"}],
               eventInvoke={"maximumRetryAttempts": 1, "retryDelaySeconds": 0.5}),
        marker(base, "toggle", [{"schedule": "rate(1 second)"}]),
    ]
    (base / "marks" / "failing" / "fail").touch()
    yield from served(base, dirs, https=False)


def test_rate_1_second_fires_on_time_each_second_as_its_trigger(host, base):
    ready = time.time()
    wait_for(lambda: len([m for m in marks_of(base, "tick").values()
                          if due_of(m["event"]) > ready + 1]) >= 6,
             timeout=30, what="six firings after the host was up")
    runs = {rid: m for rid, m in marks_of(base, "tick").items()
            if due_of(m["event"]) > ready + 1}
    by_id = {r["requestId"]: r for r in records(host, "tick")}
    wait_for(lambda: all(rid in by_id or by_id.update(
        {r["requestId"]: r for r in records(host, "tick")}) for rid in runs),
        what="the records of those runs")
    dues = sorted(due_of(m["event"]) for m in runs.values())
    assert len(dues) == len(set(dues)), "a due time fired twice"
    assert all(b - a == 1 for a, b in zip(dues, dues[1:])), f"a second was skipped: {dues}"
    for rid, m in runs.items():
        event, record = m["event"], by_id[rid]
        assert (record["trigger"], record["triggerIndex"]) == ("schedule", 1)
        delay = record["start"] - due_of(event)
        print(f"firing delay {delay * 1000:.1f} ms")
        assert 0 <= delay < 1.0, f"{rid} started {delay:.3f}s after its due time"
        # EventBridge's Scheduled Event, its id the request id
        assert event["detail-type"] == "Scheduled Event" and event["source"] == "aws.events"
        assert event["id"] == rid and event["detail"] == {} and event["version"] == "0"
        assert event["resources"][0].endswith(":rule/tick-schedule-1")
    health = host.health()
    assert health["triggers"]["state"] == "RUNNING"   # the supervised process


def test_input_is_delivered_verbatim(host, base):
    wait_for(lambda: marks_of(base, "inputs"), timeout=20, what="a firing with input")
    assert all(m["event"] == INPUT for m in marks_of(base, "inputs").values())


def test_overlap_forbid_skips_while_the_last_run_is_going(host, base):
    wait_for(lambda: len(marks_of(base, "slow")) >= 3, timeout=40,
             what="three runs of the slow handler")
    fired = history(host, "slow", 1)
    skipped = [f for f in fired if f["outcome"] == "skipped"]
    assert skipped and all(f["reason"] == "Overlap" for f in skipped)
    # never two at once: each run starts after the one before ended (2.5 s each)
    starts = sorted(m["start"] for m in marks_of(base, "slow").values())
    assert all(b - a >= 2500 for a, b in zip(starts, starts[1:])), starts
    dues = [f["due"] for f in fired]
    assert len(dues) == len(set(dues))


def test_a_failing_firing_is_retried_dead_lettered_and_replayed(host, base):
    def dead():
        events = api(host, "/functions/failing/dlq")[1]["events"]
        return [e for e in events if e["route"].startswith("schedule:")]
    letter = wait_for(dead, timeout=40, what="a dead-lettered firing")[0]
    assert (letter["trigger"], letter["triggerIndex"], letter["route"]) == \
        ("schedule", 1, "schedule:1")
    assert letter["deadReason"] == "RetriesExhausted" and letter["attempts"] == 2
    assert [e["errorType"] for e in letter["errors"]] == ["RangeError", "RangeError"]
    assert json.loads(letter["payload"])["detail-type"] == "Scheduled Event"
    rid = letter["requestId"]
    status, inv = api(host, f"/invocations/{rid}")
    assert inv["status"] == "error" and (inv["trigger"], inv["triggerIndex"]) == ("schedule", 1)
    (base / "marks" / "failing" / "fail").unlink()
    status, body = api(host, "/functions/failing/dlq/replay", "POST", json={"requestIds": [rid]})
    assert status == 200 and body["replayed"] == [rid]
    wait_for(lambda: api(host, f"/invocations/{rid}")[1]["status"] == "ok", timeout=20,
             what="the replayed firing to succeed")


def set_enabled(host, directory: Path, enabled: bool) -> None:
    spec = yaml.safe_load((directory / "sora.yaml").read_text())
    spec["trigger"][1]["enabled"] = enabled
    (directory / "sora.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    host.proc.send_signal(signal.SIGHUP)   # a live reload of every function

    def applied():
        status = control.request(str(Path(host.config_path).parent / "state"), "status",
                                 {"function": "toggle"})
        return status["functions"]["toggle"][0]["enabled"] is enabled
    wait_for(applied, timeout=60, what=f"the trigger service to see enabled: {enabled}")


def test_disable_and_enable_again_by_a_reload(host, base):
    directory = base / "fns" / "toggle"
    wait_for(lambda: marks_of(base, "toggle"), timeout=20, what="toggle's first firing")
    set_enabled(host, directory, False)
    off = time.time()
    wait_for(lambda: time.time() > off + 3.5, timeout=10, what="3.5 s with it disabled")
    assert not [f for f in history(host, "toggle", 1) if f["due"] > off], \
        "a disabled schedule fired"
    set_enabled(host, directory, True)
    on = time.time()
    wait_for(lambda: [m for m in marks_of(base, "toggle").values()
                      if due_of(m["event"]) > on], timeout=20, what="firings to resume")
    # what passed while it was off was not missed: nothing fired for those seconds
    assert not [f for f in history(host, "toggle", 1) if off + 1 < f["due"] < on - 1]


# --- across stops ----------------------------------------------------------------------------
def test_missed_latest_and_skip_across_a_stop_and_start(tmp_path):
    dirs = [marker(tmp_path, "late", [{"schedule": "rate(1 second)", "overlap": "allow"}]),
            marker(tmp_path, "skipper", [{"schedule": "rate(1 second)", "overlap": "allow",
                                          "missed": "skip"}])]
    h = SoraHost(tmp_path, dirs, https=False)
    h.start()
    try:
        wait_for(lambda: len(marks_of(tmp_path, "late")) >= 2 and
                 len(marks_of(tmp_path, "skipper")) >= 2, timeout=30, what="firings")
    finally:
        assert h.stop() == 0
    stopped = time.time()
    before = {name: {f["due"] for f in history(h, name, 1)} for name in ("late", "skipper")}
    wait_for(lambda: time.time() > stopped + 3.5, timeout=10, what="3.5 s of downtime")
    h2 = h.restarted()
    h2.start()
    try:
        wait_for(lambda: all(len([f for f in history(h2, name, 1)
                                  if f["due"] not in before[name]]) >= 3
                             for name in ("late", "skipper")),
                 timeout=30, what="firings after the restart")
    finally:
        assert h2.stop() == 0
    for name in ("late", "skipper"):
        fired = history(h2, name, 1)
        dues = [f["due"] for f in fired]
        assert len(dues) == len(set(dues)), f"{name}: a due time was handled twice"
        assert max(before[name]) < stopped
        new = [f for f in fired if f["due"] not in before[name]]
        # The downtime's seconds are handled once, as ONE row: the latest of them, fired
        # (latest) or recorded skipped (skip), when the service started again; then each
        # second again, none of the downtime's other seconds.
        first = new[0]
        assert first["due"] >= stopped + 3 and first["fired"] - first["due"] < 1.5, first
        assert [f["due"] for f in new] == [first["due"] + i for i in range(len(new))], new
        if name == "late":
            assert first["outcome"] == "enqueued"
        else:
            assert (first["outcome"], first["reason"]) == ("skipped", "Missed")
        assert all(f["outcome"] == "enqueued" for f in new[1:])
    # the skipped time never ran
    skipped_due = [f for f in history(h2, "skipper", 1) if f["outcome"] == "skipped"][0]["due"]
    assert not [m for m in marks_of(tmp_path, "skipper").values()
                if due_of(m["event"]) == skipped_due]


def test_a_queued_firing_survives_kill_9_of_the_whole_host(tmp_path):
    d = marker(tmp_path, "piled", [{"schedule": "rate(1 second)", "overlap": "allow"}],
               env={"SLEEP_MS": "1500"}, eventInvoke={"maxConcurrency": 1})
    h = SoraHost(tmp_path, [d], https=False)
    h.start()
    try:
        queued = wait_for(lambda: [r["request_id"] for r in queue_rows(h, "piled")
                                   if r["state"] == "queued" and r["trigger"] == "schedule:1"],
                          timeout=30, what="a firing waiting in the queue")
    finally:
        h.kill9()
    assert h.leftover_processes() == []
    h2 = h.restarted()
    h2.start()
    try:
        wait_for(lambda: set(queued) <= set(marks_of(tmp_path, "piled")), timeout=60,
                 what="the queued firings to run after the restart")
        dues = [f["due"] for f in history(h2, "piled", 1)]
        assert len(dues) == len(set(dues))
    finally:
        assert h2.stop() == 0
    assert h2.leftover_processes() == []


def test_status_and_a_manual_firing_through_the_control_socket(host, base):
    state = str(base / "state")
    status = wait_for(lambda: (st := control.request(state, "status", {"function": "tick"}))[
        "functions"]["tick"][0]["lastFiring"] and st, what="tick's first firing")
    assert status["scheduler"]["state"] == "running" and list(status["functions"]) == ["tick"]
    (tick,) = status["functions"]["tick"]
    assert (tick["index"], tick["kind"], tick["enabled"], tick["state"], tick["expression"],
            tick["timezone"]) == (1, "schedule", True, "active", "rate(1 second)", "UTC")
    times = [datetime.datetime.fromisoformat(t).timestamp() for t in tick["next"]]
    assert len(times) == 3 and [b - a for a, b in zip(times, times[1:])] == [1, 1]
    assert tick["lastFiring"]["outcome"] == "enqueued" and tick["lastFiring"]["requestId"]
    # a manual firing runs now, whatever the overlap policy, as the same trigger
    answer = control.request(state, "fire", {"function": "inputs", "index": 1})
    (rid,) = answer["requestIds"]
    wait_for(lambda: rid in marks_of(base, "inputs"), what="the manual firing to run")
    assert marks_of(base, "inputs")[rid]["event"] == INPUT
    wait_for(lambda: api(host, f"/invocations/{rid}")[0] == 200 and
             api(host, f"/invocations/{rid}")[1]["status"] == "ok", what="its record")
    assert api(host, f"/invocations/{rid}")[1]["triggerIndex"] == 1
    assert control.request(state, "fire", {"function": "nope"})["errorType"] == \
        "ResourceNotFoundException"
    assert control.request(state, "fire", {"function": "tick", "index": 7})["errorType"] == \
        "ResourceNotFoundException"
    assert control.request(state, "bogus")["errorType"] == "InvalidRequest"


def test_the_trigger_service_killed_is_restarted_and_fires_no_time_twice(host, base):
    import os
    pid = host.health()["triggers"]["pid"]
    os.kill(pid, signal.SIGKILL)
    killed = time.time()
    again = wait_for(lambda: (t := host.health()["triggers"])["state"] == "RUNNING" and
                     t["pid"] != pid and t, timeout=30, what="the trigger service restarted")
    assert again["restarts"] >= 1
    wait_for(lambda: [f for f in history(host, "tick", 1) if f["due"] > killed + 1],
             timeout=20, what="tick to fire again")
    dues = [f["due"] for f in history(host, "tick", 1)]
    assert len(dues) == len(set(dues)), "a due time was fired twice"
