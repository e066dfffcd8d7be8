"""Seeing and firing triggers on a real host (issue 18 point 5): `GET
/api/functions/{name}/triggers` shows a schedule's next fire times and, after it fired, its last
firing with that run's status; `POST .../fire` and `sora triggers fire` enqueue a run that runs;
/healthz shows the scheduler and each watcher; `sora triggers` prints the table; and the
attacker's side: another function's key sees and fires nothing of this one's, a key path out of
the watched folder is refused."""
from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.support import served, wait_for, write_function

pytestmark = pytest.mark.integration

ADMIN = "admin-key-for-triggers-0123456789"
TICKER_KEY = "ticker-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"
SORA = [sys.executable, "-m", "sora.cli.main"]

TICKER = """
exports.handler = async (event) => {
  console.log("fired by", event.source || "input", JSON.stringify(event));
  return { ok: true };
};
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("triggers-api")
    fns = base / "fns"
    (fns / "ticker" / "inbox").mkdir(parents=True)
    dirs = [
        write_function(fns, "ticker", {"index.js": TICKER}, name="ticker", trigger=[
            "http", {"schedule": "rate(2 seconds)"},
            {"file": {"path": "./inbox", "pattern": "*.csv"}},
            {"schedule": "cron(0 9 * * ? *)", "timezone": "Europe/Paris", "enabled": False}]),
        write_function(fns, "other", {"index.js": TICKER}, name="other"),
    ]
    keys = {"apiKeys": [{"name": "ops", "key": ADMIN, "scopes": ["admin"]},
                        {"name": "ticker", "key": TICKER_KEY, "scopes": ["invoke:ticker"]},
                        {"name": "other", "key": OTHER_KEY, "scopes": ["invoke:other"]}]}
    yield from served(base, dirs, https=False, extra={"auth": keys}, api_key=ADMIN)


def triggers(host, name="ticker", key=ADMIN):
    resp = host.session.get(f"{host.url}/api/functions/{name}/triggers",
                            headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def fire(host, index, body=None, key=ADMIN, name="ticker"):
    return host.session.post(f"{host.url}/api/functions/{name}/triggers/{index}/fire",
                             json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def ran(host, request_id: str) -> dict:
    """The run's record, once it ran (before, /api/invocations shows the queued event)."""
    return wait_for(lambda: (r := host.record(request_id))["status"] not in
                    ("queued", "leased") and r, timeout=20, what=f"{request_id} to run")


def cli(host, *args):
    return subprocess.run([*SORA, *args, "--host", host.url, "--api-key", ADMIN],
                          capture_output=True, text=True, timeout=60)


def test_a_schedules_next_times_then_its_last_firing_and_run_status(host):
    body = wait_for(lambda: (b := triggers(host))["service"] == "up" and b,
                    what="the trigger service to answer")
    http, rate, files, paris = body["triggers"]
    assert (http["kind"], http["url"]) == ("http", "/functions/ticker")
    assert rate["kind"] == "schedule" and rate["expression"] == "rate(2 seconds)"
    assert rate["state"] == "active"
    times = [dt.datetime.fromisoformat(t).timestamp() for t in rate["next"]]
    assert len(times) == 3 and [round(b - a) for a, b in zip(times, times[1:])] == [2, 2]
    assert files["kind"] == "file" and files["path"].endswith("/ticker/inbox")
    assert (paris["state"], paris["timezone"]) == ("disabled", "Europe/Paris")
    # rate(2 seconds) fires within ~2 s; then its run is recorded ok.
    last = wait_for(lambda: ((f := triggers(host)["triggers"][1]["lastFiring"]) and
                             f.get("status") == "ok" and f), timeout=20,
                    what="a firing whose run is recorded ok")
    assert last["outcome"] == "enqueued" and last["requestId"]
    record = ran(host, last["requestId"])
    assert (record["trigger"], record.get("triggerIndex")) == ("schedule", 1)


def test_fire_enqueues_a_run_now(host):
    resp = fire(host, 1, key=TICKER_KEY)
    assert resp.status_code == 202, resp.text
    [request_id] = resp.json()["requestIds"]
    record = ran(host, request_id)
    assert record["status"] == "ok" and record["trigger"] == "schedule"
    assert any("aws.events" in line["line"] for line in record["logs"])


def test_the_cli_lists_and_fires(host):
    out = cli(host, "triggers", "ticker")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["FUNCTION", "#", "KIND"]
    assert any("rate(2 seconds)" in line and "active" in line for line in lines)
    assert any("cron(0 9 * * ? *) Europe/Paris" in line and "disabled" in line
               for line in lines)
    every = cli(host, "triggers", "--json")
    assert every.returncode == 0, every.stderr
    assert [b["function"] for b in json.loads(every.stdout)["functions"]] == ["other", "ticker"]
    fired = cli(host, "triggers", "fire", "ticker", "1", "--json")
    assert fired.returncode == 0, fired.stderr
    [request_id] = json.loads(fired.stdout)["requestIds"]
    assert ran(host, request_id)["status"] == "ok"
    listed = cli(host, "invocations", "ticker")
    assert listed.returncode == 0 and "schedule:1" in listed.stdout
    # Two firable triggers: INDEX is asked for, nothing is fired.
    ask = cli(host, "triggers", "fire", "ticker")
    assert ask.returncode == 2 and "expected INDEX" in ask.stderr


def test_healthz_shows_the_scheduler_and_each_watcher(host):
    health = host.health()
    assert health["triggers"]["state"] == "RUNNING"   # the process, as the supervisor sees it
    assert health["triggers"]["scheduler"]["state"] == "running"   # as it says itself
    assert health["triggers"]["schedules"] == {"active": 1, "disabled": 1}
    [watcher] = health["triggers"]["watchers"]
    assert watcher["function"] == "ticker" and watcher["index"] == 2
    assert watcher["path"].endswith("/ticker/inbox")
    # Without the admin key: the status only.
    assert host.session.get(f"{host.url}/healthz", headers={
        "Authorization": f"Bearer {TICKER_KEY}"}, timeout=5).json() == {"status": "ok"}


def test_another_functions_key_sees_and_fires_nothing_of_this_one(host):
    seen = host.session.get(f"{host.url}/api/functions/ticker/triggers",
                            headers={"Authorization": f"Bearer {OTHER_KEY}"}, timeout=10)
    assert seen.status_code == 403
    assert "rate(" not in seen.text and "inbox" not in seen.text
    assert fire(host, 1, key=OTHER_KEY).status_code == 403
    assert fire(host, 2, {"key": "a.csv"}, key=OTHER_KEY).status_code == 403
    assert triggers(host, "other", OTHER_KEY)["triggers"][0]["kind"] == "http"


@pytest.mark.parametrize("key", ["../other/index.js", "/etc/passwd", "a/../../x.csv"])
def test_a_key_out_of_the_watched_folder_is_refused(host, key):
    resp = fire(host, 2, {"key": key})
    assert resp.status_code == 400, resp.text
    assert resp.json()["errorType"] == "InvalidParameterValueException"


@pytest.mark.skipif(importlib.util.find_spec("sora.triggers.files") is None,
                    reason="the file watchers (p18-files) are not merged on this branch")
def test_a_key_through_a_planted_link_is_refused_and_a_real_file_fires(host):
    inbox = host.function_dirs[0] / "inbox"
    (inbox / "ok.csv").write_text("a,b\n1,2\n")
    os.symlink("/etc/passwd", inbox / "planted.csv")
    refused = fire(host, 2, {"key": "planted.csv"})
    assert refused.status_code in (400, 404, 409), refused.text
    resp = fire(host, 2, {"key": "ok.csv"})
    assert resp.status_code == 202, resp.text
    [request_id] = resp.json()["requestIds"]
    record = ran(host, request_id)
    assert (record["trigger"], record.get("triggerIndex")) == ("file", 2)


def test_a_service_that_does_not_answer_is_shown_from_the_config(host):
    """The service stopped (SIGSTOP: its socket stays, nothing answers): the listing comes from
    the config and the store within the wait, /healthz says `down`, a firing is a 503."""
    [service] = [p for p in host.descendants()
                 if "sora.triggers.service" in " ".join(p.cmdline())]
    service.send_signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        body = triggers(host)
        took = time.monotonic() - start
        assert body["service"] == "down" and took < 4, took
        rate = body["triggers"][1]
        assert rate["state"] == "down" and len(rate["next"]) == 3
        assert rate["lastFiring"]["requestId"]   # from the store, as the service left it
        assert host.health()["triggers"]["scheduler"] == {"state": "down"}
        resp = fire(host, 1)
        assert resp.status_code == 503
        assert resp.json()["errorType"] == "Sora.TriggerServiceUnavailable"
    finally:
        service.send_signal(signal.SIGCONT)
    wait_for(lambda: triggers(host)["service"] == "up", what="the service to answer again")
    assert psutil.pid_exists(service.pid)
