"""The dashboard's actions (sora.gateway.dashboard.actions) through falcon.testing, with a fake
control plane and a real store: the dead-letter page and its forms, the flash, the invoke
form's checks and refusals, the live tail's generator; the REPORT duration parser."""
from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.parse

import pytest

from sora import protocol as p
from sora.gateway import log_follow
from sora.gateway.dashboard import actions
from sora.store import queue, records
from sora.store.db import connect, connect_queue
from tests.unit.test_dashboard_pages import (ADMIN, FORM, SCRIPT, assert_escaped, assert_secure,
                                             csrf_of, log_in, make)


def bury(state_dir, function: str, request_id: str, payload: bytes) -> None:
    conn = connect_queue(state_dir)
    now = time.time()
    queue.enqueue(conn, [(request_id, function, "invoke", payload, now)])
    event = queue.lease(conn, function, 1, now, 60)[0]
    queue.bury(conn, event.id, "RetriesExhausted",
               queue.Attempt(now, 3.0, "Error", f"failed {SCRIPT}"))
    conn.close()


def dead_ids(state_dir, function: str) -> list[str]:
    conn = connect_queue(state_dir)
    try:
        return [e["requestId"] for e in queue.dead_letters(conn, function, 100)[0]]
    finally:
        conn.close()


def post(client, path: str, cookie: dict, **fields):
    return client.simulate_post(path, headers={**FORM, **cookie},
                                body=urllib.parse.urlencode(fields, doseq=True))


def test_dead_letter_page_cuts_and_escapes_payloads(tmp_path, monkeypatch):
    client, state = make(tmp_path, monkeypatch)
    cookie = log_in(client)
    bury(state, "echo", "req-1", json.dumps({"x": SCRIPT + "y" * 5000}).encode())
    r = client.simulate_get("/ui/functions/echo/dlq", headers=cookie)
    assert r.status_code == 200
    assert_secure(r)
    assert_escaped(r.text)
    assert 'data-request-id="req-1"' in r.text and "(cut short)" in r.text
    assert "y" * actions.PAYLOAD_SHOWN not in r.text
    # Another function's dead letters are not on this page.
    assert 'data-request-id' not in client.simulate_get("/ui/functions/old/dlq",
                                                        headers=cookie).text


def test_replay_and_discard_forms(tmp_path, monkeypatch):
    client, state = make(tmp_path, monkeypatch)
    cookie = log_in(client)
    for rid in ("a", "b", "c"):
        bury(state, "echo", rid, b"{}")
    csrf = csrf_of(client.simulate_get("/ui/functions/echo/dlq", headers=cookie).text)
    r = post(client, "/ui/functions/echo/dlq/discard", cookie, csrf=csrf, requestId="a")
    assert r.status_code == 303 and r.headers["location"] == "/ui/functions/echo/dlq"
    assert r.cookies["sora_flash"].value == "discarded:1"
    assert dead_ids(state, "echo") == ["b", "c"]
    page = client.simulate_get("/ui/functions/echo/dlq", headers={
        "Cookie": f"{cookie['Cookie']}; sora_flash=discarded:1"})
    assert '<p class="flash">Discarded 1 event</p>' in page.text
    # Discarding one already gone says so; discard has no "all".
    r = post(client, "/ui/functions/echo/dlq/discard", cookie, csrf=csrf, requestId="a")
    assert r.cookies["sora_flash"].value == "nothing:0"
    assert post(client, "/ui/functions/echo/dlq/discard", cookie, csrf=csrf,
                all="1").status_code == 400
    assert post(client, "/ui/functions/echo/dlq/replay", cookie, csrf=csrf).status_code == 400
    r = post(client, "/ui/functions/echo/dlq/replay", cookie, csrf=csrf, all="1")
    assert r.status_code == 303 and r.cookies["sora_flash"].value == "replayed:2"
    assert dead_ids(state, "echo") == []


def test_forms_refuse_without_csrf_or_session(tmp_path, monkeypatch):
    client, state = make(tmp_path, monkeypatch)
    cookie = log_in(client)
    bury(state, "echo", "kept", b"{}")
    for action in ("replay", "discard"):
        assert post(client, f"/ui/functions/echo/dlq/{action}", cookie,
                    requestId="kept").status_code == 403
        assert post(client, f"/ui/functions/echo/dlq/{action}", {},
                    requestId="kept").status_code == 303   # to the login page
    assert dead_ids(state, "echo") == ["kept"]


def test_a_flash_cookie_not_of_our_making_shows_nothing(tmp_path, monkeypatch):
    client, _ = make(tmp_path, monkeypatch)
    cookie = log_in(client)
    for forged in (f"replayed:1{SCRIPT}", "pwned:3", "replayed:99999999"):
        r = client.simulate_get("/ui/functions/echo/dlq", headers={
            "Cookie": f"{cookie['Cookie']}; sora_flash={urllib.parse.quote(forged)}"})
        assert r.status_code == 200 and 'class="flash"' not in r.text


def test_unknown_function_is_the_404_page(tmp_path, monkeypatch):
    client, _ = make(tmp_path, monkeypatch)
    cookie = log_in(client)
    for path in ("logs", "logs/stream", "dlq", "invoke"):
        r = client.simulate_get(f"/ui/functions/nope/{path}", headers=cookie)
        assert r.status_code == 404 and "text/html" in r.headers["content-type"]
    assert client.simulate_get("/ui/functions/a:b/logs", headers=cookie).status_code == 404


def test_invoke_form_runs_as_the_invoke_api_and_shows_the_reply(tmp_path, monkeypatch):
    client, _ = make(tmp_path, monkeypatch)
    cookie = log_in(client)
    broker = client.app._router.find("/ui/functions/echo/invoke")[0].client
    sent = []

    async def invoke(function, request_id, payload, timeout, meta=p.TRIGGER_HTTP):
        sent.append((function, payload, meta))
        rid = request_id.decode()
        tail = f"START RequestId: {rid}\nREPORT RequestId: {rid}\tDuration: 1.00 ms\t(fake)\n" \
               f"{SCRIPT}\nREPORT RequestId: {rid}\tDuration: 12.34 ms\tBilled Duration: 13 ms\t\n"
        return [p.OK, json.dumps({"html": SCRIPT}).encode(), base64.b64encode(tail.encode())]
    broker.invoke = invoke
    csrf = csrf_of(client.simulate_get("/ui/functions/echo/invoke", headers=cookie).text)
    r = post(client, "/ui/functions/echo/invoke", cookie, csrf=csrf, event='{"a": 1}')
    assert r.status_code == 200
    assert_escaped(r.text)
    assert sent == [("echo", b'{"a": 1}', p.meta(p.TRIGGER_INVOKE, True))]
    assert 'data-field="duration">12.34 ms<' in r.text   # the last REPORT line's
    assert 'class="status-ok">ok<' in r.text

    async def throttled(function, request_id, payload, timeout, meta=p.TRIGGER_HTTP):
        return [p.THROTTLED, p.error_body("Sora.Throttled", "all 2 busy")]
    broker.invoke = throttled
    r = post(client, "/ui/functions/echo/invoke", cookie, csrf=csrf, event="{}")
    assert r.status_code == 429 and 'class="error">throttled: all 2 busy' in r.text


def test_invoke_form_refuses_bad_json_too_large_and_unknown_qualifier(tmp_path, monkeypatch):
    client, _ = make(tmp_path, monkeypatch)
    cookie = log_in(client)
    route = client.app._router.find("/ui/functions/echo/invoke")[0]
    sent = []

    async def invoke(*args, **kwargs):
        sent.append(args)
        return [p.OK, b"{}"]
    route.client.invoke = invoke
    csrf = csrf_of(client.simulate_get("/ui/functions/echo/invoke", headers=cookie).text)
    for event, status in (("{", 400), ("NaN", 400), ("[" * 2000 + "]" * 2000, 400),
                          ('"' + "x" * route.max_body + '"', 413)):
        r = post(client, "/ui/functions/echo/invoke", cookie, csrf=csrf, event=event)
        assert r.status_code == status, (event[:20], r.status_code)
        assert 'class="error"' in r.text and 'id="invoke-result"' not in r.text
    r = post(client, "/ui/functions/echo/invoke", cookie, csrf=csrf, event="{}",
             qualifier="nope")
    assert r.status_code == 404
    assert sent == []


def test_reported_duration_takes_the_last_report_of_its_own_request():
    logs = ("REPORT RequestId: other\tDuration: 99.00 ms\t\n"
            "REPORT RequestId: mine\tDuration: 1.00 ms\t(printed by the function)\n"
            "REPORT RequestId: mine\tDuration: 7.25 ms\tBilled Duration: 8 ms\t\n")
    assert actions._reported_duration(logs, "mine") == 7.25
    assert actions._reported_duration(logs, "none") is None
    assert actions._reported_duration("", "mine") is None


def test_the_stream_yields_only_its_functions_lines_then_heartbeats(tmp_path, monkeypatch):
    client, state = make(tmp_path, monkeypatch)
    conn = connect(state)
    now = time.time()
    records.commit(conn, [], [("echo", "r1", now, "stdout", f"mine {SCRIPT}"),
                              ("old", "r2", now, "stdout", "not mine"),
                              ("echo", "r3", now, "stderr", "mine too")])
    conn.close()
    monkeypatch.setattr(actions, "HEARTBEAT_SECONDS", 0.05)
    monkeypatch.setattr(log_follow, "FOLLOW_POLL", 0.01)
    monkeypatch.setattr(actions, "STREAM_SECONDS", 0.3)
    stream = client.app._router.find("/ui/functions/echo/logs/stream")[0]

    async def collect():
        return [event async for event in stream.follow("echo", 0)]
    events = asyncio.run(collect())
    assert events[0].retry == actions.RECONNECT_MS
    data = [json.loads(e.data) for e in events if e.data]
    assert [d["line"] for d in data] == [f"mine {SCRIPT}", "mine too"]
    assert [e.event_id for e in events if e.data] == [str(d["id"]) for d in data]
    assert any(e.comment == "heartbeat" for e in events)   # then it ends by itself


@pytest.mark.parametrize("value,expected", [("12", 12), (None, None), ("-1", None),
                                            ("1e3", None), ("9" * 19, None)])
def test_cursor(value, expected):
    assert actions._cursor(value) == expected


def test_admin_key_header_is_not_a_session(tmp_path, monkeypatch):
    client, _ = make(tmp_path, monkeypatch)
    r = client.simulate_get("/ui/functions/echo/logs",
                            headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 303


def test_a_form_never_reaches_another_functions_dead_letters(tmp_path, monkeypatch):
    client, state = make(tmp_path, monkeypatch)
    cookie = log_in(client)
    bury(state, "old", "theirs", b"{}")
    csrf = csrf_of(client.simulate_get("/ui/functions/echo/dlq", headers=cookie).text)
    for action in ("replay", "discard"):
        r = post(client, f"/ui/functions/echo/dlq/{action}", cookie, csrf=csrf,
                 requestId="theirs")
        assert r.status_code == 303 and r.cookies["sora_flash"].value == "nothing:0"
    r = post(client, "/ui/functions/echo/dlq/replay", cookie, csrf=csrf, all="1")
    assert r.cookies["sora_flash"].value == "replayed:0"
    assert dead_ids(state, "old") == ["theirs"]
