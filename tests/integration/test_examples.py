"""The shipped examples, each started from a copy by a real host: npm and pip dependencies
installed by `setup`, an Express app behind serverless-http, Python on its own virtualenv, and
`provided` functions in sh, Go, and AWS's own Node.js and Python runtime interface clients;
a Node function on a schedule and a Python function processing the CSV files dropped in a
folder."""
from __future__ import annotations

import os
import shutil
import sys

import pytest
import requests

from tests.support import ROOT, SoraHost, json_of, wait_for

# Each test has the suite's budget (pyproject: 120 s) for its own body only (func_only): the
# module's host, made in the first test's setup, runs every example's setup first (npm, pip, a
# Go build, aws-lambda-ric's native build; empty caches, as each setup run has a fresh home),
# which a timeout counting fixtures would cut on a slow machine. It has its own budget below,
# and fails at once when a setup fails.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(func_only=True)]
# The host's own limit on that setup (node-ric's `setupTimeout: 900`, setups run at once), and
# a minute for the instances to start.
SETUP_BUDGET = 960

EXAMPLES = ("hello", "uuid-npm", "express-api", "hello-python", "python-deps", "python-venv",
            "shell-bootstrap", "go-hello", "python-ric", "node-ric", "heartbeat-node",
            "csv-inbox")


def test_every_example_is_served_by_make_run():
    config = (ROOT / "examples" / "host-config.yaml").read_text()
    listed = {line.strip()[2:].strip("./") for line in config.splitlines()
              if line.strip().startswith("- ./")}
    on_disk = {d.name for d in (ROOT / "examples").iterdir() if (d / "sora.yaml").is_file()}
    assert listed == on_disk == set(EXAMPLES)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("examples")
    dirs = []
    for name in EXAMPLES:
        dirs.append(base / name)
        shutil.copytree(ROOT / "examples" / name, base / name,
                        ignore=shutil.ignore_patterns("node_modules", "package-lock.json",
                                                      ".venv", "__pycache__"))
    # The example beats every minute; here every second, so the test sees it fire (the
    # handler is the example's, unchanged).
    heartbeat = base / "heartbeat-node" / "sora.yaml"
    heartbeat.write_text(heartbeat.read_text().replace("rate(1 minute)", "rate(1 second)"))
    h = SoraHost(base, dirs)
    h.start(wait_functions=[])   # serving; the examples' setups run meanwhile
    try:
        functions = wait_for(lambda: settled(h), SETUP_BUDGET, 1.0, "the examples' setup")
        fatal = {name: f["reason"] for name, f in functions.items() if f["state"] == "FATAL"}
        assert not fatal, f"examples that failed to start: {fatal}\n{h.log()}"
    except BaseException:
        h.stop()
        raise
    yield h
    assert h.stop() == 0
    assert not h.leftovers(), h.leftovers()


def settled(host):
    """The functions once each is RUNNING or one is FATAL: a setup that failed fails the
    fixture at once rather than at the end of its budget."""
    functions = host.health()["functions"]
    states = {f["state"] for f in functions.values()}
    return functions if states == {"RUNNING"} or "FATAL" in states else None


def test_hello(host):
    r = host.invoke("hello", params={"name": "Sora"})
    assert json_of(r)["message"] == "Hello, Sora!"
    assert json_of(r)["requestId"] == r.headers["X-Sora-Request-Id"]


def test_npm_dependency_installed_by_setup(host):
    r = requests.get(f"{host.https_url}/functions/uuid-npm/some/path", verify=str(host.cert),
                     timeout=10)
    assert r.status_code == 201
    body = json_of(r)
    assert body["valid"] is True and body["path"] == "/some/path"
    assert r.cookies.get("last-id") == body["id"]
    assert (host.base / "uuid-npm" / "node_modules" / "uuid").is_dir()


def test_express_routes_params_query_and_cookies(host):
    r = host.invoke("express-api", "/users/42", params={"a": "1"},
                    headers={"Cookie": "session=abc"})
    assert r.status_code == 200
    assert json_of(r) == {"id": "42", "q": {"a": "1"}, "cookie": "session=abc"}
    assert r.raw.headers.getlist("Set-Cookie") == ["seen=42; Path=/; HttpOnly",
                                                   "theme=dark; Path=/"]


def test_express_json_body_and_status(host):
    r = host.invoke("express-api", "/echo", method="POST", json={"x": [1, 2]})
    assert r.status_code == 201
    assert json_of(r) == {"got": {"x": [1, 2]}, "type": "application/json"}


def test_express_binary_response(host):
    r = host.invoke("express-api", "/binary")
    assert r.status_code == 200 and r.content == bytes([0, 255, 1, 254])


def test_express_redirect_and_root(host):
    r = host.invoke("express-api", "/redirect", allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"] == "/users/7"
    assert json_of(host.invoke("express-api"))["hello"] == "express"


def test_python_hello_keeps_module_state(host):
    first = json_of(host.invoke("hello-python", params={"name": "Sora"}))
    second = json_of(host.invoke("hello-python"))
    assert first["message"] == "Hello, Sora!" and second["message"] == "Hello, world!"
    assert second["invocationsOfThisInstance"] == first["invocationsOfThisInstance"] + 1
    log_file = host.base / "state" / "logs" / "hello-python.log"
    wait_for(lambda: "[INFO]" in (log := log_file.read_text()) and
             f"{first['requestId']}\tgreeting Sora" in log, what="the logged greeting")


def test_python_dependency_pinned_apart_from_soras_own(host):
    import yaml as soras_yaml
    r = host.invoke("python-deps", method="POST", data="a: [1, 2]\n")
    body = json_of(r)
    assert body["parsed"] == {"a": [1, 2]}
    assert body["yamlVersion"] == "6.0.1" != soras_yaml.__version__
    assert body["yamlFile"].startswith(str(host.base / "python-deps"))


def test_python_on_its_own_virtualenv(host):
    import falcon as soras_falcon
    body = json_of(host.invoke("python-venv"))
    assert body["falconVersion"] == "3.1.3" != soras_falcon.__version__
    assert body["prefix"] == str(host.base / "python-venv" / ".venv")
    assert sys.prefix != body["prefix"]


def test_shell_bootstrap(host):
    r = host.invoke("shell-bootstrap", method="POST", data="x" * 10)
    assert json_of(r) == {"message": "Hello from sh", "shell": os.path.basename(
        os.path.realpath("/bin/sh"))}
    log_file = host.base / "state" / "logs" / "shell-bootstrap.log"
    wait_for(lambda: f"{r.headers['X-Sora-Request-Id']} stderr handling an event of" in
             log_file.read_text(), what="the bootstrap's stderr line")


def test_go_function(host):
    r = host.invoke("go-hello", "/path", params={"name": "Gopher"})
    body = json_of(r)
    assert body["message"] == "Hello from Go, Gopher!" and body["path"] == "/path"
    assert body["requestId"] == r.headers["X-Sora-Request-Id"]
    assert 0 < body["remainingMs"] <= 10_000
    err = host.invoke("go-hello", params={"name": "error"})
    assert err.status_code == 502
    # errorDetail: message (the default): type and message, no trace.
    assert json_of(err) == {"errorMessage": 'no greeting for "error"', "errorType": "GoError"}


@pytest.mark.parametrize("name", ["python-ric", "node-ric"])
def test_aws_runtime_interface_clients_work_unchanged(host, name):
    r = host.invoke(name)
    assert r.status_code == 200, r.text
    body = json_of(r)
    assert body["requestId"] == r.headers["X-Sora-Request-Id"]
    assert 0 < body["remainingMs"] <= 10_000
    # The lines reach the log file when their end marker arrives, which may be after the
    # result: poll for them.
    log_file = host.base / "state" / "logs" / f"{name}.log"
    wait_for(lambda: r.headers["X-Sora-Request-Id"] in log_file.read_text(),
             what=f"{name}'s log line")


def invocations(host, name: str) -> list[dict]:
    r = host.session.get(f"{host.url}/api/functions/{name}/invocations", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["invocations"]


def logged(host, request_id: str) -> str:
    return "\n".join(line["line"] for line in host.record(request_id)["logs"])


def test_schedule_example_gets_eventbridges_scheduled_event(host):
    # Two firings, each an invocation whose record says which trigger ran it.
    fired = wait_for(lambda: (runs := [r for r in invocations(host, "heartbeat-node")
                                       if r["trigger"] == "schedule"]) and len(runs) >= 2
                     and runs, 30, 0.2, "two firings of heartbeat-node's schedule")
    assert {r["triggerIndex"] for r in fired} == {1}
    assert {r["status"] for r in fired} == {"ok"}
    line = wait_for(lambda: logged(host, fired[0]["requestId"]), what="the heartbeat's log line")
    assert "heartbeat at " in line and '"detail-type":"Scheduled Event"' in line
    assert '"source":"aws.events"' in line
    assert "arn:aws:events:" in line and ":rule/heartbeat-node-schedule-1" in line
    # Its URL answers too (trigger `http` beside the schedule), with what this instance saw.
    r = host.invoke("heartbeat-node")
    assert r.status_code == 200 and json_of(r)["message"] == "heartbeat-node is alive"


def test_csv_example_processes_a_dropped_file_and_moves_it(host):
    inbox = host.base / "csv-inbox" / "inbox"
    # Written under another name and renamed in, as a careful uploader does; a space in the
    # name arrives URL-encoded in the S3 event, as S3 sends it.
    partial = inbox / "orders of may.csv.part"
    partial.write_text("order,amount\n1,12.50\n2,30\n3,7.25\n")
    partial.rename(inbox / "orders of may.csv")
    (inbox / "notes.txt").write_text("not a CSV: the pattern leaves it alone\n")
    done = inbox / "done" / "orders of may.csv"
    wait_for(done.is_file, 30, 0.1, "the CSV moved to inbox/done/")
    assert not (inbox / "orders of may.csv").exists()
    runs = wait_for(lambda: [r for r in invocations(host, "csv-inbox")
                             if r["trigger"] == "file"], 20, 0.2, "csv-inbox's record")
    # One run: moving the file to done/ (not watched: recursive is false) fired nothing, and
    # neither did notes.txt nor the .part name (the pattern).
    assert len(runs) == 1 and runs[0]["status"] == "ok" and runs[0]["triggerIndex"] == 0
    line = wait_for(lambda: logged(host, runs[0]["requestId"]), what="csv-inbox's log line")
    assert "orders of may.csv: 3 rows, amount total 49.75" in line
    assert (inbox / "notes.txt").is_file()


def test_csv_example_ignores_a_link_dropped_into_its_inbox(host):
    # Whoever drops files is not trusted: a link named like a CSV, pointing at a file only
    # root may read, is skipped by the watcher (never read, hashed or sent), then a real file
    # dropped after it runs: by then the link was seen, and it fired nothing.
    inbox = host.base / "csv-inbox" / "inbox"
    secret = host.base / "root-only.csv"
    secret.write_text("order,amount\n1,1000000\n")
    secret.chmod(0o600)
    (inbox / "link.csv").symlink_to(secret)
    (inbox / "after.csv.part").write_text("order,amount\n9,1\n")
    (inbox / "after.csv.part").rename(inbox / "after.csv")
    wait_for((inbox / "done" / "after.csv").is_file, 30, 0.1, "after.csv processed")
    runs = wait_for(lambda: [r for r in invocations(host, "csv-inbox")
                             if r["trigger"] == "file" and "after.csv" in
                             logged(host, r["requestId"])], 20, 0.2, "after.csv's record")
    assert runs[0]["status"] == "ok"
    # Every run was for a real file and succeeded (one for the link would have failed: the
    # function cannot open it, or would have logged its sum).
    file_runs = [r for r in invocations(host, "csv-inbox") if r["trigger"] == "file"]
    assert {r["status"] for r in file_runs} == {"ok"}
    logs = "\n".join(logged(host, r["requestId"]) for r in file_runs)
    assert "link.csv" not in logs and "1000000" not in logs
    assert (inbox / "link.csv").is_symlink() and not (inbox / "done" / "link.csv").exists()
