"""Records tell the truth (issue 15 point 6): for every way a call can fail, what the caller got
(status, errorType, errorMessage) is what the record, the records API, `sora inspect`, the
dead-letter list and `sora dlq` say. One host for all of them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sora.isolation import cgroups
from tests.support import SoraHost, json_of, lambda_client, wait_for, write_function

pytestmark = pytest.mark.integration

SORA = str(Path(sys.executable).parent / "sora")

# One function, one way to fail per `kind` (a query parameter, or the event's own field for
# the Invoke API and events).
TRUTH = r"""
exports.handler = async (event) => {
  const kind = (event.queryStringParameters || {}).kind || event.kind;
  if (kind === 'throw') {
    const err = new Error('bad input:\n\tsecond line'); err.name = 'InputError'; throw err;
  }
  if (kind === 'invalid') return { statusCode: 'teapot', body: 'short and stout' };
  if (kind === 'hang') return new Promise(() => {});
  if (kind === 'exit') process.exit(3);
  if (kind === 'oom') { const held = []; for (;;) held.push(Buffer.alloc(1 << 20, 1)); }
  if (kind === 'huge') return { data: 'y'.repeat(7000 * 1024) };
  return { statusCode: 200, body: 'fine' };
};
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("truth")
    fns = base / "fns"
    dirs = [write_function(fns, "truth", {"index.js": TRUTH}, name="truth", timeout=2,
                           memory=128, instances=2,
                           eventInvoke={"maximumRetryAttempts": 0}),
            write_function(fns, "broken", {"index.js": TRUTH}, name="broken",
                           setup=["echo about to fail", "exit 7"])]
    h = SoraHost(base, dirs, https=False, server={"maxBodyBytes": 64 * 1024})
    h.start(wait_functions=["truth"])
    yield h
    assert h.stop() == 0


def sora(host, *args) -> subprocess.CompletedProcess:
    return subprocess.run([SORA, *args, "--host", host.url], capture_output=True, text=True,
                          timeout=60)


def inspect(host, request_id: str) -> str:
    shown = sora(host, "inspect", request_id)
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def field(text: str, label: str) -> str | None:
    """The value `sora inspect` prints for `label` (a message's later lines included)."""
    lines = text.splitlines()
    for n, line in enumerate(lines):
        if line.startswith(label + ":"):
            value = [line[20:]]
            for more in lines[n + 1:]:   # later lines are indented under the first
                if not more.startswith(" " * 20):
                    break
                value.append(more[20:])
            return "\n".join(value)
    return None


def check_agrees(host, request_id: str, caller: tuple[str, str], status: str,
                 trigger: str) -> dict:
    """The record, the records API's list, and `sora inspect` say what the caller got."""
    # The record itself: until the recorder has it, an event's entry is its place in the
    # queue (no duration).
    record = wait_for(lambda: "durationMs" in (r := host.record(request_id)) and r, 20,
                      what=f"the record of {request_id}")
    assert (record["status"], record["trigger"], record["errorType"],
            record.get("errorMessage")) == (status, trigger, *caller), record
    listed = host.session.get(f"{host.url}/api/functions/{record['function']}/invocations",
                              params={"status": status}, timeout=5).json()["invocations"]
    assert any(item["requestId"] == request_id and
               (item["errorType"], item["errorMessage"]) == caller for item in listed)
    shown = inspect(host, request_id)
    assert field(shown, "status") == status and field(shown, "trigger") == trigger, shown
    assert field(shown, "error type") == caller[0], shown
    assert field(shown, "error message") == caller[1], shown
    return record


# kind -> (HTTP status, errorType, record status, text in errorMessage)
FUNCTION_URL_FAILURES = {
    "throw": (502, "InputError", "error", "bad input:\n\tsecond line"),
    "invalid": (502, "Sora.InvalidResponse", "error", "teapot"),
    "hang": (504, "Sora.Timeout", "timeout", "Task timed out after 2.00 seconds"),
    "exit": (502, "Sora.RuntimeExited", "crashed", "exit status 3"),
    "oom": (502, "Sora.OutOfMemory", "crashed", "128 MB"),
    "huge": (502, "Sora.ResponseTooLarge", "error", ""),
}


def test_each_failure_of_a_function_url_call_is_recorded_as_the_caller_got_it(host):
    kinds = list(FUNCTION_URL_FAILURES)
    if cgroups.detect() is None:
        kinds.remove("oom")
    for kind in kinds:
        code, error_type, status, text = FUNCTION_URL_FAILURES[kind]
        r = host.invoke("truth", params={"kind": kind})
        body = json_of(r)
        assert (r.status_code, body["errorType"]) == (code, error_type), (kind, body)
        assert text in body["errorMessage"], (kind, body)
        check_agrees(host, r.headers["X-Sora-Request-Id"],
                     (body["errorType"], body["errorMessage"]), status, "http")
    ok = host.invoke("truth")
    assert ok.status_code == 200 and ok.text == "fine"
    record = check_agrees(host, ok.headers["X-Sora-Request-Id"], (None, None), "ok", "http")
    assert "error type" not in inspect(host, record["requestId"])


def test_a_call_lost_with_its_worker_is_recorded_as_the_caller_got_it(host):
    """The broker answers and records it (the worker cannot)."""
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(host.invoke, "truth", params={"kind": "hang"})
        wait_for(lambda: host.function_state("truth").get("inFlight"), 10,
                 what="the call to be in flight")
        worker = host.function_state("truth")["pid"]
        os.kill(worker, signal.SIGKILL)
        r = call.result(timeout=30)
    body = json_of(r)
    assert (r.status_code, body["errorType"]) == (502, "Sora.WorkerLost"), body
    check_agrees(host, r.headers["X-Sora-Request-Id"],
                 (body["errorType"], body["errorMessage"]), "crashed", "http")
    wait_for(lambda: (state := host.function_state("truth"))["state"] == "RUNNING" and
             state["pid"] != worker, 30, what="a new worker")


def test_an_invoke_api_failure_is_recorded_as_the_caller_got_it(host):
    result = lambda_client(host.url).invoke(FunctionName="truth",
                                            Payload=json.dumps({"kind": "throw"}))
    assert result["FunctionError"] == "Unhandled"
    body = json.loads(result["Payload"].read())
    assert (body["errorType"], body["errorMessage"]) == ("InputError",
                                                        "bad input:\n\tsecond line")
    request_id = result["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    check_agrees(host, request_id, ("InputError", "bad input:\n\tsecond line"), "error",
                 "invoke")


def test_a_failed_event_dead_letter_agrees_with_its_record(host):
    result = lambda_client(host.url).invoke(FunctionName="truth", InvocationType="Event",
                                            Payload=json.dumps({"kind": "throw"}))
    request_id = result["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]

    def dead():
        events = host.session.get(f"{host.url}/api/functions/truth/dlq",
                                  timeout=5).json()["events"]
        return next((e for e in events if e["requestId"] == request_id), None)
    letter = wait_for(dead, 30, what="the event to be dead-lettered")
    record = check_agrees(host, request_id, ("InputError", "bad input:\n\tsecond line"),
                          "error", "event")
    assert letter["trigger"] == record["trigger"] == "event" and letter["route"] == "invoke"
    last = letter["errors"][-1]
    assert (last["errorType"], last["errorMessage"]) == (record["errorType"],
                                                         record["errorMessage"])
    shown = inspect(host, request_id)
    assert field(shown, "event state") == "dead" and "InputError: bad input:" in shown
    listed = sora(host, "dlq", "truth", "--json")
    assert listed.returncode == 0, listed.stderr
    (mine,) = [e for e in json.loads(listed.stdout)["events"] if e["requestId"] == request_id]
    assert mine["trigger"] == "event" and mine["errors"] == letter["errors"]


def test_calls_refused_before_they_ran_have_no_record_and_say_why(host):
    wait_for(lambda: host.function_state("broken")["state"] == "FATAL", 30,
             what="broken to go FATAL")
    unavailable = host.invoke("broken")
    assert unavailable.status_code == 503
    assert json_of(unavailable)["errorType"] == "Sora.FunctionUnavailable"
    too_large = host.invoke("truth", method="POST", data=b"x" * (65 * 1024))
    assert too_large.status_code == 413
    for r in (unavailable, too_large):
        request_id = r.headers["X-Sora-Request-Id"]
        missing = host.session.get(f"{host.url}/api/invocations/{request_id}", timeout=5)
        assert missing.status_code == 404 and "never ran" in json_of(missing)["errorMessage"]
        shown = sora(host, "inspect", request_id)
        assert shown.returncode != 0 and "never ran" in shown.stderr, shown


def test_records_of_a_store_made_before_error_messages_are_still_read(tmp_path):
    """An older store (no error_message column) is given the column, not refused."""
    import sqlite3

    from sora.store import records
    from sora.store.db import connect
    old = sqlite3.connect(tmp_path / "sora.db")
    old.execute("CREATE TABLE invocations (id INTEGER PRIMARY KEY, request_id TEXT NOT NULL "
                "UNIQUE, function TEXT NOT NULL, version TEXT NOT NULL, trigger TEXT NOT "
                "NULL, start REAL NOT NULL, duration_ms REAL NOT NULL, status TEXT NOT NULL, "
                "error_type TEXT, cold INTEGER NOT NULL)")
    old.execute("INSERT INTO invocations VALUES (1, 'r0', 'fn', '$LATEST', 'http', 1.0, 2.0, "
                "'error', 'Error', 0)")
    old.commit()
    old.close()
    conn = connect(str(tmp_path))
    assert records.get_invocation(conn, "r0")["errorMessage"] is None
    # (and no REPORT figures: issue 15 point 5's columns are added too)
    assert "maxMemoryUsedMB" not in records.get_invocation(conn, "r0")
    records.commit(conn, [("r1", "fn", "$LATEST", "http", 2.0, 1.0, "error", "E", 1, "why",
                           64, 12.5)], [])
    assert records.get_invocation(conn, "r1")["errorMessage"] == "why"
    assert records.get_invocation(conn, "r1")["maxMemoryUsedMB"] == 64
    assert os.path.exists(tmp_path / "sora.db")
