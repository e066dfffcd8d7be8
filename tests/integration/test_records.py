"""Invocation records and logs in the store, and the read APIs over them: on SQLite and on
PostgreSQL (the module's host runs once on each, `module_store_backend`)."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml

from tests.integration import functions as F
from tests.support import SoraHost, served, wait_for, write_function

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def host(tmp_path_factory, module_store_backend):
    base = tmp_path_factory.mktemp("records")
    fns = base / "fns"
    dirs = [
        write_function(fns, "tagged", {"index.js": F.TAGGED_PRINTER}, name="tagged",
                       instances=3, timeout=1),
        write_function(fns, "py-logs", {"app.py": F.PY_LOGS}, name="py-logs",
                       language="python", entrypoint="app.py"),
        write_function(fns, "slow-printer", {"index.js": F.TAGGED_PRINTER},
                       name="slow-printer", timeout=20),
    ]
    yield from served(base, dirs, https=False, store=module_store_backend)


def api(host, path, **params):
    r = host.session.get(f"{host.url}/api{path}", params=params, timeout=10)
    return r.status_code, r.json()


record = SoraHost.record


def test_every_outcome_is_recorded_with_status_type_and_temperature(host):
    ok = host.invoke("tagged")
    fail = host.invoke("tagged", params={"fail": "1"})
    slow = host.invoke("tagged", params={"forever": "1"})
    crash = host.invoke("tagged", params={"exit": "1"})
    assert [r.status_code for r in (ok, fail, slow, crash)] == [200, 502, 504, 502]
    got = {name: record(host, r.headers["X-Sora-Request-Id"])
           for name, r in (("ok", ok), ("fail", fail), ("slow", slow), ("crash", crash))}
    assert got["ok"]["status"] == "ok" and got["ok"]["errorType"] is None
    assert got["fail"]["status"] == "error" and got["fail"]["errorType"] == "TypeError"
    assert got["slow"]["status"] == "timeout" and got["slow"]["errorType"] == "Sora.Timeout"
    assert got["crash"]["status"] == "crashed"
    assert got["crash"]["errorType"] == "Sora.RuntimeExited"
    for rec in got.values():
        assert rec["function"] == "tagged" and rec["version"] == "$LATEST"
        assert rec["trigger"] == "http" and rec["durationMs"] > 0
        assert abs(rec["start"] - time.time()) < 60
    assert 900 < got["slow"]["durationMs"] < 5000
    # The timeout replaced its instance: the next call on a fresh instance is cold.
    assert any(r["cold"] for r in got.values())


def test_records_are_in_the_configured_store_only(host, module_store_backend):
    rid = host.invoke("tagged").headers["X-Sora-Request-Id"]
    record(host, rid)
    from sora.store import backend
    state = str(host.base / "state")
    conn = backend.connect(module_store_backend, state, "records")
    assert conn.execute("SELECT function FROM invocations WHERE request_id = ?",
                        (rid,)).fetchone()[0] == "tagged"
    conn.close()
    # On PostgreSQL no process of the host made a records file in the state dir.
    assert (host.base / "state" / "sora.db").exists() == (module_store_backend.kind == "sqlite")


def test_cold_then_warm_on_the_same_instance(host):
    first = host.invoke("py-logs").headers["X-Sora-Request-Id"]
    second = host.invoke("py-logs").headers["X-Sora-Request-Id"]
    assert record(host, first)["cold"] is True
    assert record(host, second)["cold"] is False


def test_each_record_holds_only_its_own_lines_under_concurrency(host):
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: host.invoke("tagged", params={"ms": "20"}),
                                  range(24)))
    assert all(r.status_code == 200 for r in responses)
    for r in responses:
        rid = r.headers["X-Sora-Request-Id"]
        rec = record(host, rid)
        # Its six lines between Lambda's START and END, REPORT (issue 15 point 5).
        lines = wait_for(lambda: len(x := record(host, rid)["logs"]) == 9 and x,
                         what=f"9 log lines of {rid}")
        assert sorted(line["line"] for line in lines[1:-2]) == sorted(
            [f"out {i} of {rid}" for i in range(3)] + [f"err {i} of {rid}" for i in range(3)])
        assert {line["stream"] for line in lines[1:-2]} == {"stdout", "stderr"}
        assert lines[0]["line"] == f"START RequestId: {rid} Version: $LATEST"
        assert lines[-1]["line"].startswith(f"REPORT RequestId: {rid}\t")
        assert rec["requestId"] == rid


def test_list_filters_and_cursor_pagination(host):
    ids = [host.invoke("tagged").headers["X-Sora-Request-Id"] for _ in range(5)]
    for rid in ids:
        record(host, rid)
    pages, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        status, body = api(host, "/functions/tagged/invocations", **params)
        assert status == 200 and len(body["invocations"]) <= 2
        pages.append(body["invocations"])
        cursor = body["nextCursor"]
        if cursor is None:
            break
    seen = [item["requestId"] for page in pages for item in page]
    assert len(seen) == len(set(seen))
    assert set(ids) <= set(seen)
    assert seen.index(ids[-1]) < seen.index(ids[0])  # newest first
    errors = api(host, "/functions/tagged/invocations", status="error")[1]["invocations"]
    assert errors and all(item["status"] == "error" for item in errors)
    future = api(host, "/functions/tagged/invocations", since=time.time() + 3600)[1]
    assert future == {"invocations": [], "nextCursor": None}
    iso = api(host, "/functions/tagged/invocations", since="2000-01-01T00:00:00Z", limit=1)[1]
    assert len(iso["invocations"]) == 1


def test_bad_parameters_and_unknown_names_are_clear_errors(host):
    status, body = api(host, "/functions/tagged/invocations", status="weird")
    assert status == 400 and body["errorType"] == "InvalidParameterValueException"
    assert "status: expected one of ok, error, timeout, crashed" in body["errorMessage"]
    status, body = api(host, "/functions/tagged/invocations", limit="many")
    assert status == 400 and "limit: expected an integer" in body["errorMessage"]
    assert api(host, "/functions/nope/invocations")[0] == 404
    status, body = api(host, "/invocations/not-a-request")
    assert status == 404 and body["errorType"] == "ResourceNotFoundException"


def test_logs_by_request_id_and_follow(host):
    rid = host.invoke("tagged").headers["X-Sora-Request-Id"]
    lines = wait_for(lambda: len(x := api(host, "/functions/tagged/logs",
                                          requestId=rid)[1]["lines"]) == 9 and x,
                     what="six lines, START, END and REPORT")
    assert all(line["requestId"] == rid for line in lines)

    later: list[str] = []

    def invoke_later():
        time.sleep(0.3)  # the follow starts from "now": invoke once it has started
        later.append(host.invoke("tagged").headers["X-Sora-Request-Id"])

    seen: list[dict] = []
    with requests.get(f"{host.url}/api/functions/tagged/logs", params={"follow": "true"},
                      stream=True, timeout=10) as stream:
        assert stream.headers["Content-Type"].startswith("application/x-ndjson")
        threading.Thread(target=invoke_later, daemon=True).start()
        for raw in stream.iter_lines():  # each read waits at most the 10 s timeout
            if raw:
                seen.append(json.loads(raw))
            if later and sum(line["requestId"] == later[0] for line in seen) == 9:
                break
    assert rid not in {line["requestId"] for line in seen}


def test_follow_shows_lines_while_the_invocation_runs(host):
    with requests.get(f"{host.url}/api/functions/slow-printer/logs",
                      params={"follow": "true"}, stream=True, timeout=10) as stream:
        with ThreadPoolExecutor(1) as pool:
            # Three lines, 1.5 s apart: the first is followed long before the call ends.
            call = pool.submit(host.invoke, "slow-printer", params={"ms": "1500"})
            for raw in stream.iter_lines():  # each read waits at most the 10 s timeout
                if raw and json.loads(raw)["line"].startswith("out 0 of "):
                    break
            assert not call.done(), "the first line must be followed while the call runs"
            rid = call.result(timeout=30).headers["X-Sora-Request-Id"]
    lines = wait_for(lambda: len(x := record(host, rid)["logs"]) == 9 and x,
                     what="six lines, START, END and REPORT")
    assert sorted(line["line"] for line in lines[1:-2]) == sorted(
        [f"out {i} of {rid}" for i in range(3)] + [f"err {i} of {rid}" for i in range(3)])


def test_retention_prunes_by_count(store_backend, tmp_path):
    fns = tmp_path / "fns"
    d = write_function(fns, "tagged", {"index.js": F.TAGGED_PRINTER}, name="tagged")
    h = SoraHost(tmp_path, [d], https=False, store=store_backend)
    h.start()
    try:
        ids = [h.invoke("tagged").headers["X-Sora-Request-Id"] for _ in range(8)]
        record(h, ids[-1])
    finally:
        assert h.stop() == 0
    config = yaml.safe_load(h.config_path.read_text())
    config["records"] = {"maxPerFunction": 3}
    h.config_path.write_text(yaml.safe_dump(config))
    h2 = h.restarted()
    h2.start()
    try:
        items = wait_for(lambda: len(x := api(h2, "/functions/tagged/invocations")[1][
            "invocations"]) == 3 and x, what="pruned to 3")
        assert [i["requestId"] for i in items] == ids[-1:-4:-1]
        assert api(h2, f"/invocations/{ids[0]}")[0] == 404
    finally:
        assert h2.stop() == 0
