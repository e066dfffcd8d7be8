"""The `sora` command line, run as users run it, against a real host and without one."""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration import functions as F
from tests.support import free_port, served, wait_for, write_function

pytestmark = pytest.mark.integration

SORA = [str(Path(sys.executable).parent / "sora")]


def sora(*args, cwd=None, env=None, timeout=120, data=None):
    return subprocess.run([*SORA, *args], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, **(env or {})), timeout=timeout, input=data)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    fns = base / "fns"
    dirs = [
        write_function(fns, "tagged", {"index.js": F.TAGGED_PRINTER}, name="tagged",
                       eventInvoke={"maximumRetryAttempts": 0}),
        write_function(fns, "py-echo", {"app.py": F.PY_ECHO}, name="py-echo",
                       language="python", entrypoint="app.py"),
    ]
    yield from served(base, dirs, https=True)


def at(host) -> list[str]:
    return ["--host", host.url]


def test_init_validate_and_local_invoke_without_a_host(tmp_path):
    for language, name in (("nodejs", "greeter"), ("python", "greeter-py")):
        made = sora("init", name, "--language", language, cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        assert (tmp_path / name / "sora.yaml").is_file()
        checked = sora("validate", name, "--json", cwd=tmp_path)
        assert checked.returncode == 0 and json.loads(checked.stdout)["valid"] is True
        ran = sora("invoke", "--local", name, "--data", '{"name": "Ada"}', "--log",
                   cwd=tmp_path)
        assert ran.returncode == 0, ran.stderr
        assert json.loads(json.loads(ran.stdout)["body"]) == {"message": "Hello, Ada!"}
        assert "greeting Ada (request local-" in ran.stderr
    again = sora("init", "greeter", cwd=tmp_path)
    assert again.returncode == 2 and "expected a new or empty folder" in again.stderr
    bad = sora("init", "Not_A_Name", cwd=tmp_path)
    assert bad.returncode == 2 and "name: expected lower-case letters" in bad.stderr


def test_local_invoke_reports_function_errors_and_config_errors(tmp_path):
    write_function(tmp_path, "thrower", {"index.js": F.ERRORS}, name="thrower")
    ran = sora("invoke", "--local", str(tmp_path / "thrower"), "--json")
    assert ran.returncode == 1
    out = json.loads(ran.stdout)
    assert out["functionError"] == "Unhandled"
    assert out["payload"]["errorType"] == "ValidationError"
    write_function(tmp_path, "broken", {"index.js": F.ECHO}, name="broken", timeout="soon")
    bad = sora("invoke", "--local", str(tmp_path / "broken"))
    assert bad.returncode == 2
    assert f"{tmp_path / 'broken' / 'sora.yaml'}: timeout: expected a number" in bad.stderr
    checked = sora("validate", str(tmp_path / "broken"), "--json")
    assert checked.returncode == 2 and "timeout: expected" in checked.stdout


def test_a_host_that_is_down_is_a_clear_error():
    down = sora("ls", "--host", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 3
    assert "cannot reach the Sora host" in down.stderr and "connection refused" in down.stderr
    assert "Traceback" not in down.stderr


def test_ls_from_flag_env_and_host_config(host):
    listed = sora("ls", *at(host))
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:4] == ["NAME", "STATE", "INSTANCES", "LANGUAGE"]
    assert {row.split()[0]: row.split()[1] for row in rows} == {"py-echo": "RUNNING",
                                                               "tagged": "RUNNING"}
    via_env = sora("ls", "--json", env={"SORA_HOST": host.url})
    assert [f["name"] for f in json.loads(via_env.stdout)["functions"]] == ["py-echo", "tagged"]
    via_config = sora("ls", "--json", "--config", str(host.config_path))
    assert json.loads(via_config.stdout)["status"] == "ok"
    via_https = sora("ls", "--json", "--host", host.https_url, "--cacert", str(host.cert))
    assert via_https.returncode == 0, via_https.stderr


def test_invoke_prints_result_and_log_and_fails_on_function_error(host, tmp_path):
    ok = sora("invoke", "py-echo", *at(host), "--data", '{"who": "cli"}', "--log")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["event"] == {"who": "cli"}
    event_file = tmp_path / "event.json"
    event_file.write_text('{"queryStringParameters": {"fail": "1"}}')
    failed = sora("invoke", "tagged", *at(host), "--data", f"@{event_file}", "--json")
    assert failed.returncode == 1
    out = json.loads(failed.stdout)
    assert out["functionError"] == "Unhandled" and out["payload"]["errorType"] == "TypeError"
    from_stdin = sora("invoke", "py-echo", *at(host), "--data", "-", data='{"n": 5}')
    assert json.loads(from_stdin.stdout)["event"] == {"n": 5}
    bad = sora("invoke", "tagged", *at(host), "--data", "{nope")
    assert bad.returncode == 2 and "--data: expected a JSON event" in bad.stderr
    missing = sora("invoke", "nope", *at(host))
    assert missing.returncode == 1 and "ResourceNotFoundException" in missing.stderr


def test_async_invoke_then_inspect_and_logs(host):
    queued = sora("invoke", "tagged", *at(host), "--async")
    assert queued.returncode == 0 and queued.stdout.startswith("queued ")
    request_id = queued.stdout.split()[1]
    record = wait_for(lambda: (r := sora("inspect", request_id, *at(host), "--json"))
                      .returncode == 0 and json.loads(r.stdout)["status"] == "ok"
                      and json.loads(r.stdout), what="the event's record")
    assert record["trigger"] == "event"
    # Log lines may be stored a moment after the record: poll for them.
    shown = wait_for(lambda: "out 2 of " + request_id in (x := sora("inspect", request_id,
                                                                     *at(host))).stdout and x,
                     what="the event's log lines")
    assert "status:" in shown.stdout
    wait_for(lambda: sum(request_id[:8] in line for line in sora(
        "logs", "tagged", *at(host), "--request-id", request_id).stdout.splitlines()) == 9,
        what="its six lines, START, END and REPORT from sora logs")
    unknown = sora("inspect", "no-such-request", *at(host))
    assert unknown.returncode == 1 and "ResourceNotFoundException" in unknown.stderr


def test_logs_follow_streams_new_lines(host):
    follow = subprocess.Popen([*SORA, "logs", "tagged", "--follow", "--json", *at(host)],
                              stdout=subprocess.PIPE, text=True)
    invoked: list[str] = []
    done = threading.Event()

    def keep_invoking():  # the follow starts from "now": invoke until it has seen one of ours
        while not done.is_set() and len(invoked) < 100:
            invoked.append(host.invoke("tagged").headers["X-Sora-Request-Id"])
            done.wait(0.3)

    invoker = threading.Thread(target=keep_invoking, daemon=True)
    invoker.start()
    try:
        deadline = time.monotonic() + 30
        found = None
        while found is None and time.monotonic() < deadline:
            if select.select([follow.stdout], [], [], 1)[0]:
                line = follow.stdout.readline()
                if line.strip() and json.loads(line)["requestId"] in invoked:
                    found = json.loads(line)
        assert found is not None, "no line of ours was followed within 30 s"
        assert found["line"].split()[0] in ("START", "out", "err")   # START: issue 15 point 5
    finally:
        done.set()
        invoker.join(30)
        follow.terminate()
        follow.wait(10)


def test_dlq_lists_and_replays(host):
    queued = sora("invoke", "tagged", *at(host), "--async", "--json",
                  "--data", '{"queryStringParameters": {"fail": "1"}}')
    request_id = json.loads(queued.stdout)["requestId"]
    listed = wait_for(lambda: request_id in (r := sora("dlq", "tagged", *at(host))).stdout
                      and r, what="the dead letter")
    assert "RetriesExhausted" in listed.stdout and "TypeError: asked to fail" in listed.stdout
    as_json = json.loads(sora("dlq", "tagged", *at(host), "--json").stdout)
    assert as_json["events"][0]["errors"][0]["errorType"] == "TypeError"
    replayed = sora("dlq", "tagged", *at(host), "--replay", request_id)
    assert replayed.returncode == 0 and "replayed 1 event(s)" in replayed.stdout
    # It fails again (the event asks to), so it comes back to the list with a second error.
    wait_for(lambda: len(json.loads(sora("dlq", "tagged", *at(host), "--json").stdout)
                         ["events"][0]["errors"]) == 2, what="the replay's failure")
    discarded = sora("dlq", "tagged", *at(host), "--discard")
    assert "discarded 1 event(s)" in discarded.stdout
