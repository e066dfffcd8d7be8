"""Asynchronous invocations: durable acceptance, lease and acknowledgement, retries with
backoff, the dead-letter list and replay, bounded concurrency, and survival of kill -9; on
both store backends (the host's SQLite queue.db, a PostgreSQL database)."""
from __future__ import annotations

import json
import sqlite3
import uuid

import pytest

from tests.integration import functions as F
from tests.integration.store_backends import queue_of, store_setting
from tests.support import (SoraHost, json_of, lambda_client, served, wait_for,
                           write_function)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def marks(tmp_path_factory):
    return tmp_path_factory.mktemp("marks")


@pytest.fixture(scope="module")
def host(tmp_path_factory, marks, module_store_backend):
    base = tmp_path_factory.mktemp("events")
    fns = base / "fns"
    # `isolation: none`: the tests watch the events run through marks the sink leaves in a
    # folder of the host's, which a sandbox would not let it write.
    dirs = [
        write_function(fns, "sink", {"index.js": F.EVENT_SINK}, name="sink", instances=3,
                       env={"MARKS": str(marks)}, isolation="none",
                       eventInvoke={"retryDelaySeconds": 0.5, "maxConcurrency": 2}),
        write_function(fns, "once", {"index.js": F.EVENT_SINK}, name="once",
                       env={"MARKS": str(marks)}, isolation="none",
                       eventInvoke={"maximumRetryAttempts": 0}),
        write_function(fns, "aged", {"index.js": F.EVENT_SINK}, name="aged",
                       env={"MARKS": str(marks)}, isolation="none",
                       eventInvoke={"maximumEventAgeInSeconds": 2, "retryDelaySeconds": 5}),
    ]
    yield from served(base, dirs, https=False, extra=store_setting(module_store_backend))


@pytest.fixture(scope="module")
def lam(host):
    return lambda_client(host.url)


def key() -> str:
    return uuid.uuid4().hex[:12]


def send(lam, function: str, event: dict) -> str:
    result = lam.invoke(FunctionName=function, InvocationType="Event",
                        Payload=json.dumps(event))
    assert result["StatusCode"] == 202
    return result["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]


def attempts(marks, k: str, stage: str = "end") -> list[float]:
    """When each attempt at the event keyed `k` reached `stage` (ms), in attempt order."""
    found = sorted(marks.glob(f"{k}.*.{stage}"), key=lambda f: int(f.name.split(".")[1]))
    return [float(f.read_text()) for f in found]


def api(host, path, method="GET", **kwargs):
    r = host.session.request(method, f"{host.url}/api{path}", timeout=10, **kwargs)
    return r.status_code, json_of(r)


def test_event_through_boto3_runs_once_and_is_acknowledged(host, lam, marks, module_store_backend):
    k = key()
    request_id = send(lam, "sink", {"key": k})
    wait_for(lambda: attempts(marks, k), what="the event to run")
    # Log lines may be stored a moment after the record: wait for both.
    rec = wait_for(lambda: (r := api(host, f"/invocations/{request_id}"))[1].get("status") == "ok"
                   and "event" not in r[1] and any(f"attempt 1 of {k} as {request_id}" in
                                                   line["line"] for line in r[1]["logs"])
                   and r[1], what="the record and its log, with the event purged")
    assert rec["trigger"] == "event" and rec["function"] == "sink"
    # Acknowledged means deleted: no row is left that could be leased and run again.
    assert len(attempts(marks, k, "start")) == 1
    db = queue_of(host, module_store_backend)
    assert db.execute("SELECT COUNT(*) FROM events WHERE request_id = ?",
                      (request_id,)).fetchone()[0] == 0
    db.close()


def test_event_through_the_function_url_header(host, marks):
    k = key()
    r = host.invoke("sink", method="POST", data=k, headers={"X-Sora-Invocation-Type": "Event"})
    assert r.status_code == 202
    body = json_of(r)
    assert body["status"] == "queued" and body["requestId"] == r.headers["X-Sora-Request-Id"]
    wait_for(lambda: attempts(marks, k), what="the HTTP event to run")
    bad = host.invoke("sink", method="POST", headers={"X-Sora-Invocation-Type": "Later"})
    assert bad.status_code == 400 and json_of(bad)["errorType"] == "Sora.InvalidInvocationType"
    unknown = host.invoke("nope", method="POST", headers={"X-Sora-Invocation-Type": "Event"})
    assert unknown.status_code == 404


def test_a_failure_is_retried_after_a_delay_then_succeeds(host, lam, marks):
    k = key()
    (marks / f"{k}.fail").touch()
    request_id = send(lam, "sink", {"key": k})
    wait_for(lambda: len(attempts(marks, k)) >= 1, what="the first attempt")
    (marks / f"{k}.fail").unlink()
    done = wait_for(lambda: len(x := attempts(marks, k)) == 2 and x, what="the retry")
    starts = attempts(marks, k, "start")
    assert starts[1] - done[0] >= 400  # retryDelaySeconds 0.5 (a little clock slack)
    rec = wait_for(lambda: (r := api(host, f"/invocations/{request_id}")[1])["status"] == "ok"
                   and r, what="the successful record")
    assert "event" not in rec


def test_exhausted_retries_go_to_the_dead_letter_list_and_replay(host, lam, marks):
    k = key()
    (marks / f"{k}.fail").touch()
    request_id = send(lam, "sink", {"key": k})
    dead = wait_for(lambda: (x := api(host, "/functions/sink/dlq")[1]["events"]) and
                    [e for e in x if e["requestId"] == request_id], what="the dead letter",
                    timeout=30)[0]
    assert len(attempts(marks, k)) == 3  # the attempt and maximumRetryAttempts (2) retries
    assert dead["deadReason"] == "RetriesExhausted" and dead["attempts"] == 3
    assert [e["errorType"] for e in dead["errors"]] == ["RangeError"] * 3
    assert [e["errorMessage"] for e in dead["errors"]] == [
        f"attempt {n} of {k} failed on purpose" for n in (1, 2, 3)]
    assert json.loads(dead["payload"]) == {"key": k}
    status, inv = api(host, f"/invocations/{request_id}")
    assert inv["status"] == "error" and inv["event"]["state"] == "dead"

    (marks / f"{k}.fail").unlink()
    status, body = api(host, "/functions/sink/dlq/replay", "POST",
                       json={"requestIds": [request_id]})
    assert status == 200 and body["replayed"] == [request_id]
    wait_for(lambda: len(attempts(marks, k)) == 4, what="the replayed attempt")
    wait_for(lambda: api(host, f"/invocations/{request_id}")[1]["status"] == "ok",
             what="the replayed event to succeed")
    assert request_id not in [e["requestId"] for e in api(host, "/functions/sink/dlq")[1]["events"]]


def test_no_retries_when_configured_and_discard(host, lam, marks):
    k = key()
    (marks / f"{k}.fail").touch()
    request_id = send(lam, "once", {"key": k})
    wait_for(lambda: api(host, "/functions/once/dlq")[1]["events"], what="the dead letter")
    assert len(attempts(marks, k)) == 1
    status, body = api(host, "/functions/once/dlq", "DELETE", params={"requestId": request_id})
    assert status == 200 and body["discarded"] == 1
    assert api(host, "/functions/once/dlq")[1]["events"] == []
    assert api(host, "/functions/nope/dlq")[0] == 404
    status, body = api(host, "/functions/once/dlq/replay", "POST", data=b'{"requestIds": 3}')
    assert status == 400 and "requestIds" in body["errorMessage"]


def test_an_event_past_its_maximum_age_is_dead_lettered(host, lam, marks):
    k = key()
    (marks / f"{k}.fail").touch()
    request_id = send(lam, "aged", {"key": k})
    dead = wait_for(lambda: api(host, "/functions/aged/dlq")[1]["events"], what="dead letter")
    assert dead[0]["requestId"] == request_id
    assert dead[0]["deadReason"] == "EventAgeExceeded" and len(dead[0]["errors"]) == 1
    assert len(attempts(marks, k)) == 1  # the retry would have come after the age ran out


def test_concurrency_per_function_is_bounded(host, lam, marks):
    keys = [key() for _ in range(6)]
    for k in keys:
        send(lam, "sink", {"key": k, "sleepMs": 300})
    wait_for(lambda: all(attempts(marks, k) for k in keys), timeout=30, what="all six")
    spans = [(attempts(marks, k, "start")[0], attempts(marks, k)[0]) for k in keys]
    overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert overlap == 2  # maxConcurrency 2, though the function has 3 instances


def test_an_event_that_cannot_be_stored_is_refused_not_accepted(host, module_store_backend):
    def refused():
        r = host.invoke("sink", method="POST", data="x",
                        headers={"X-Sora-Invocation-Type": "Event"})
        assert r.status_code == 503
        assert r.headers["Retry-After"] == "1"
        return json_of(r)

    if module_store_backend.kind == "sqlite":
        lock = sqlite3.connect(host.base / "state" / "queue.db", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            body = refused()
            assert body["errorType"] == "Sora.EventNotStored"
            assert "locked" in body["errorMessage"]
        finally:
            lock.execute("ROLLBACK")
            lock.close()
    else:
        # Another transaction holds the function's totals row past the intake's lock wait.
        db = queue_of(host, module_store_backend)
        with db.transaction():
            db.execute("INSERT INTO event_totals (function, events, bytes) VALUES "
                       "('sink', 0, 0) ON CONFLICT (function) DO NOTHING")
            db.execute("SELECT * FROM event_totals WHERE function = 'sink' FOR UPDATE")
            body = refused()
        db.close()
        assert body["errorType"] in ("Sora.StoreUnavailable", "Sora.EventNotStored")
        assert "lock" in body["errorMessage"]
        assert module_store_backend.url.split("@")[0].split(":")[-1] not in json.dumps(body)
    k = key()
    r = host.invoke("sink", method="POST", data=k, headers={"X-Sora-Invocation-Type": "Event"})
    assert r.status_code == 202


def test_accepted_events_survive_kill_9_of_the_whole_host(tmp_path, store_backend):
    marks = tmp_path / "marks"
    marks.mkdir()
    d = write_function(tmp_path / "fns", "slow-sink", {"index.js": F.EVENT_SINK},
                       name="slow-sink", env={"MARKS": str(marks)}, isolation="none",
                       eventInvoke={"maxConcurrency": 1})
    h = SoraHost(tmp_path, [d], https=False, extra=store_setting(store_backend))
    h.start()
    lam = lambda_client(h.url)
    keys = [key() for _ in range(5)]
    try:
        for k in keys:
            send(lam, "slow-sink", {"key": k, "sleepMs": 1500})
        # The first event is running (leased), the other four wait in the queue.
        wait_for(lambda: attempts(marks, keys[0], "start"), what="the first event to start")
    finally:
        h.kill9()
    assert not attempts(marks, keys[0]), "the first event must have been cut off mid-run"
    assert h.leftover_processes() == []
    h2 = h.restarted()
    h2.start()
    # Its cgroups stayed, with nobody to remove them: the next start sweeps them.
    assert h.leaked_cgroups() == []
    try:
        wait_for(lambda: all(attempts(marks, k) for k in keys), timeout=60,
                 what="every accepted event to run after the restart")
        # The one cut off mid-run was delivered again: at least once.
        assert len(attempts(marks, keys[0], "start")) == 2
        assert all(len(attempts(marks, k, "start")) == 1 for k in keys[1:])
        assert "queued again" in h2.log(whole=True)
        assert "dead-lettered" not in h2.log(whole=True)  # e.g. sent before the broker knew the function
    finally:
        assert h2.stop() == 0
