"""The dashboard's live and state-changing pages against a real host with keys: the live log
tail (Server-Sent Events), the dead-letter list's replay and discard, and the invoke form; with
the attacker's side: no CSRF token, a foreign Origin, a function printing `<script>`, one
function's stream read for another's lines."""
from __future__ import annotations

import html
import json
import re
import threading
import time
import uuid

import psutil
import pytest
import requests

from tests.integration import functions as F
from tests.support import json_of, served, wait_for, write_function

pytestmark = pytest.mark.integration

ADMIN = "admin-key-0123456789abcdef"
SCRIPT = "<script>alert('pwned')</script>"

# Prints what it is given; fails with the message it is given.
PRINTER = """
exports.handler = async (event) => {
  if (event.line !== undefined) console.log(event.line);
  if (event.fail) throw new Error(event.fail);
  return { echo: event.line };
};
"""


@pytest.fixture(scope="module")
def marks(tmp_path_factory):
    return tmp_path_factory.mktemp("marks")


@pytest.fixture(scope="module")
def host(tmp_path_factory, marks):
    base = tmp_path_factory.mktemp("dashboard-actions")
    fns = base / "fns"
    dirs = [
        write_function(fns, "printer", {"index.js": PRINTER}, name="printer"),
        # `isolation: none`: it reads its fail switch from a folder of the test's.
        write_function(fns, "sink", {"index.js": F.EVENT_SINK}, name="sink",
                       env={"MARKS": str(marks)}, isolation="none",
                       eventInvoke={"maximumRetryAttempts": 0}),
    ]
    yield from served(base, dirs, https=False, api_key=ADMIN, extra={
        "auth": {"apiKeys": [{"name": "ops", "key": ADMIN, "scopes": ["admin"]}]}})


@pytest.fixture(scope="module")
def ui(host):
    """A browser-like session logged in with the admin key (no Authorization header)."""
    session = requests.Session()
    form = session.get(f"{host.url}/ui/login", timeout=10).text
    r = session.post(f"{host.url}/ui/login", data={"key": ADMIN, "csrf": csrf_of(form)},
                     allow_redirects=False, timeout=10)
    assert r.status_code == 303, r.text[:500]
    assert session.cookies.get("sora_session")
    yield session
    session.close()


def page(ui, host, path: str) -> str:
    r = ui.get(host.url + path, timeout=10, allow_redirects=False)
    assert r.status_code == 200, (r.status_code, r.text[:500])
    assert "text/html" in r.headers["Content-Type"]
    return r.text


def csrf_of(text: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', text).group(1)


def api(host, path: str, method: str = "GET", **kwargs):
    r = host.session.request(method, f"{host.url}/api{path}", timeout=10, **kwargs)
    return r.status_code, json_of(r)


def invoke(host, name: str, event: dict, kind: str = "RequestResponse") -> requests.Response:
    return host.session.post(f"{host.url}/2015-03-31/functions/{name}/invocations",
                             data=json.dumps(event), timeout=30,
                             headers={"X-Amz-Invocation-Type": kind})


def dead_letter(host, marks) -> tuple[str, str]:
    """(request id, key) of a new event of `sink` that failed into the dead-letter list."""
    k = uuid.uuid4().hex[:12]
    (marks / f"{k}.fail").write_text("")
    r = invoke(host, "sink", {"key": k, "note": SCRIPT}, "Event")
    assert r.status_code == 202, r.text
    request_id = r.headers["x-amzn-RequestId"]
    wait_for(lambda: request_id in [e["requestId"] for e in
                                    api(host, "/functions/sink/dlq")[1]["events"]],
             what="the dead letter")
    return request_id, k


class Stream:
    """An SSE stream read on a thread: the `data:` events it has delivered so far."""

    def __init__(self, url: str, session: requests.Session):
        self.response = session.get(url, stream=True, timeout=(5, 30),
                                    headers={"Accept": "text/event-stream"})
        self.events: list[dict] = []
        self.comments = 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for raw in self.response.iter_lines():
                line = raw.decode()
                if line.startswith("data:"):
                    self.events.append(json.loads(line[5:].strip()))
                elif line.startswith(":"):
                    self.comments += 1
        except (requests.RequestException, ValueError, AttributeError):
            pass   # closed by the test

    def close(self) -> None:
        self.response.close()

    def lines(self) -> list[str]:
        return [e["line"] for e in list(self.events)]


def test_the_stream_delivers_a_line_printed_after_it_opened_and_only_its_function(
        host, ui, marks):
    stream = Stream(f"{host.url}/ui/functions/printer/logs/stream", ui)
    other = Stream(f"{host.url}/ui/functions/sink/logs/stream", ui)
    try:
        assert stream.response.status_code == 200
        assert stream.response.headers["Content-Type"].startswith("text/event-stream")
        wait_for(lambda: stream.comments and other.comments, what="the streams to open")
        marker = f"hello {uuid.uuid4().hex} {SCRIPT}"
        r = invoke(host, "printer", {"line": marker})
        assert r.status_code == 200, r.text
        printer_id = r.headers["x-amzn-RequestId"]
        k = uuid.uuid4().hex[:12]
        assert invoke(host, "sink", {"key": k}).status_code == 200
        wait_for(lambda: any(marker in line for line in stream.lines()), what="the line")
        wait_for(lambda: any(k in line for line in other.lines()), what="sink's line")
        # Each stream holds only its function's lines: the printer's never sink's, and back.
        assert not any(k in line for line in stream.lines())
        assert not any(marker in line for line in other.lines())
        assert {e["requestId"] for e in stream.events} == {printer_id}
        assert printer_id not in {e["requestId"] for e in other.events}
        # The line as printed, as data (tail.js sets it as text); the id resumes a reconnect.
        line = next(e for e in stream.events if marker in e["line"])
        assert line["requestId"] == printer_id and isinstance(line["id"], int)
    finally:
        stream.close()
        other.close()


def test_a_reconnect_resumes_after_the_last_event_id(host, ui):
    marker = f"resume {uuid.uuid4().hex}"
    r = invoke(host, "printer", {"line": marker})
    request_id = r.headers["x-amzn-RequestId"]
    lines = wait_for(lambda: [x for x in api(host, "/functions/printer/logs",
                                             params={"requestId": request_id})[1]["lines"]
                              if marker in x["line"]], what="the stored line")
    stream = Stream(f"{host.url}/ui/functions/printer/logs/stream", ui)
    resumed = ui.get(f"{host.url}/ui/functions/printer/logs/stream", stream=True,
                     timeout=(5, 30), headers={"Last-Event-ID": str(lines[0]["id"] - 1)})
    try:
        text = ""
        for chunk in resumed.iter_content(None):
            text += chunk.decode()
            if marker in text:
                break
        assert marker in text
    finally:
        resumed.close()
        stream.close()


def test_the_logs_page_shows_lines_escaped_and_loads_tail_js(host, ui):
    marker = f"page {uuid.uuid4().hex}"
    r = invoke(host, "printer", {"line": f"{marker} {SCRIPT}"})
    assert r.status_code == 200
    wait_for(lambda: marker in page(ui, host, "/ui/functions/printer/logs"), what="the line")
    text = page(ui, host, "/ui/functions/printer/logs")
    assert SCRIPT not in text and html.escape(SCRIPT, quote=False) in text.replace(
        "&#39;", "'")
    assert 'id="log-tail"' in text and '<script src="/ui/static/tail.js"' in text
    js = ui.get(f"{host.url}/ui/static/tail.js", timeout=10)
    assert js.status_code == 200 and "textContent" in js.text
    # Nothing that parses a string as markup.
    assert not re.search(r"\.(innerHTML|outerHTML)\b|insertAdjacentHTML|document\.write|eval\(",
                         js.text)


def test_a_closed_stream_ends_on_the_gateway(host, ui):
    def open_on_gateway() -> set:
        return {c.raddr.port for c in psutil.net_connections("tcp")
                if c.laddr and c.laddr.port == host.http_port and c.raddr
                and c.status in (psutil.CONN_ESTABLISHED, psutil.CONN_CLOSE_WAIT)}
    stream = Stream(f"{host.url}/ui/functions/printer/logs/stream", ui)
    wait_for(lambda: stream.comments, what="the stream to open")
    mine = {stream.response.raw._connection.sock.getsockname()[1]}
    assert mine <= open_on_gateway()
    stream.close()
    # The gateway learns it at its next heartbeat (5 s) and closes its end.
    wait_for(lambda: not mine & open_on_gateway(), timeout=20, what="the stream to end")


def test_replay_puts_the_event_back_and_it_runs(host, ui, marks):
    request_id, k = dead_letter(host, marks)
    text = page(ui, host, "/ui/functions/sink/dlq")
    assert f'data-request-id="{request_id}"' in text
    # The payload came from a caller: shown as text.
    assert SCRIPT not in text and "&lt;script&gt;" in text
    (marks / f"{k}.fail").unlink()
    r = ui.post(f"{host.url}/ui/functions/sink/dlq/replay", allow_redirects=False,
                data={"csrf": csrf_of(text), "requestId": request_id}, timeout=10)
    assert r.status_code == 303 and r.headers["Location"].endswith("/ui/functions/sink/dlq")
    after = page(ui, host, "/ui/functions/sink/dlq")
    assert re.search(r'class="flash">Replayed 1 event', after)
    assert f'data-request-id="{request_id}"' not in after
    # It runs again, and this time succeeds.
    wait_for(lambda: (marks / f"{k}.2.end").exists(), what="the replayed event to run")
    wait_for(lambda: api(host, f"/invocations/{request_id}")[1].get("status") == "ok"
             and not api(host, f"/invocations/{request_id}")[1].get("event"),
             what="the replayed event's record")
    # The flash is shown once.
    assert 'class="flash"' not in page(ui, host, "/ui/functions/sink/dlq")


def test_replay_all(host, ui, marks):
    first, k1 = dead_letter(host, marks)
    second, k2 = dead_letter(host, marks)
    (marks / f"{k1}.fail").unlink()
    (marks / f"{k2}.fail").unlink()
    text = page(ui, host, "/ui/functions/sink/dlq")
    assert 'id="replay-all"' in text
    r = ui.post(f"{host.url}/ui/functions/sink/dlq/replay", allow_redirects=False,
                data={"csrf": csrf_of(text), "all": "1"}, timeout=10)
    assert r.status_code == 303
    wait_for(lambda: (marks / f"{k1}.2.end").exists() and (marks / f"{k2}.2.end").exists(),
             what="both replayed events to run")


def test_discard_removes_it(host, ui, marks):
    request_id, _ = dead_letter(host, marks)
    text = page(ui, host, "/ui/functions/sink/dlq")
    r = ui.post(f"{host.url}/ui/functions/sink/dlq/discard", allow_redirects=False,
                data={"csrf": csrf_of(text), "requestId": request_id}, timeout=10)
    assert r.status_code == 303
    assert re.search(r'class="flash">Discarded 1 event', page(ui, host, "/ui/functions/sink/dlq"))
    assert request_id not in [e["requestId"] for e in api(host, "/functions/sink/dlq")[1]["events"]]


def test_a_post_without_csrf_or_from_another_origin_is_403_and_changes_nothing(host, ui, marks):
    request_id, _ = dead_letter(host, marks)
    text = page(ui, host, "/ui/functions/sink/dlq")
    forged = [
        {"data": {"requestId": request_id}},                                  # no token
        {"data": {"requestId": request_id, "csrf": "0" * 64}},                # a wrong one
        {"data": {"requestId": request_id, "csrf": csrf_of(text)},            # another site
         "headers": {"Origin": "https://evil.example"}},
    ]
    for action in ("replay", "discard"):
        for attempt in forged:
            r = ui.post(f"{host.url}/ui/functions/sink/dlq/{action}", allow_redirects=False,
                        timeout=10, **attempt)
            assert r.status_code == 403, (action, attempt, r.status_code)
    for attempt in forged:
        marker = uuid.uuid4().hex
        data = {**attempt["data"], "event": json.dumps({"line": marker})}
        r = ui.post(f"{host.url}/ui/functions/printer/invoke", allow_redirects=False,
                    timeout=10, data=data, headers=attempt.get("headers", {}))
        assert r.status_code == 403
    dead = [e["requestId"] for e in api(host, "/functions/sink/dlq")[1]["events"]]
    assert request_id in dead
    # No session at all: to the login page, nothing done.
    r = requests.post(f"{host.url}/ui/functions/sink/dlq/discard", allow_redirects=False,
                      data={"requestId": request_id}, timeout=10)
    assert r.status_code in (303, 401, 403)
    assert request_id in [e["requestId"] for e in api(host, "/functions/sink/dlq")[1]["events"]]


def test_invoke_form_shows_result_status_duration_and_logs_escaped(host, ui):
    text = page(ui, host, "/ui/functions/printer/invoke")
    assert 'id="invoke-form"' in text and 'name="event"' in text
    marker = uuid.uuid4().hex
    r = ui.post(f"{host.url}/ui/functions/printer/invoke", timeout=30, data={
        "csrf": csrf_of(text), "event": json.dumps({"line": f"{marker} {SCRIPT}"})})
    assert r.status_code == 200, r.text[:500]
    body = r.text
    assert re.search(r'data-field="status"[^>]*>ok<', body)
    duration = re.search(r'data-field="duration">([0-9.]+) ms<', body)
    assert duration and 0 < float(duration.group(1)) < 10000
    output = re.search(r'<pre id="invoke-output">(.*?)</pre>', body, re.S).group(1)
    logs = re.search(r'<pre id="invoke-logs">(.*?)</pre>', body, re.S).group(1)
    assert marker in output and marker in logs and "REPORT RequestId" in logs
    assert SCRIPT not in body and "&lt;script&gt;" in output and "&lt;script&gt;" in logs
    # It ran as the Invoke API's RequestResponse: its record says trigger `invoke`.
    request_id = re.search(r'href="/ui/invocations/([0-9a-f-]+)"', body).group(1)
    record = host.record(request_id)
    assert record["trigger"] == "invoke" and record["status"] == "ok"


def test_invoke_form_shows_a_function_error(host, ui):
    text = page(ui, host, "/ui/functions/printer/invoke")
    r = ui.post(f"{host.url}/ui/functions/printer/invoke", timeout=30, data={
        "csrf": csrf_of(text), "event": json.dumps({"fail": SCRIPT})})
    assert r.status_code == 200
    assert re.search(r'data-field="status"[^>]*>error<', r.text)
    assert SCRIPT not in r.text and "&lt;script&gt;" in r.text


def test_invoke_form_bad_json_is_an_error_on_the_page(host, ui):
    text = page(ui, host, "/ui/functions/printer/invoke")
    r = ui.post(f"{host.url}/ui/functions/printer/invoke", timeout=30, data={
        "csrf": csrf_of(text), "event": '{"line": <script>'})
    assert r.status_code == 400
    assert re.search(r'class="error">The event is not valid JSON', r.text)
    assert 'id="invoke-result"' not in r.text
    # What was typed comes back in the form, escaped.
    assert "&lt;script&gt;" in r.text and '{"line": <script>' not in r.text


def test_unknown_function_and_no_session(host, ui):
    for path in ("/logs", "/logs/stream", "/dlq", "/invoke"):
        assert ui.get(f"{host.url}/ui/functions/nope{path}", timeout=10,
                      allow_redirects=False).status_code == 404
        r = requests.get(f"{host.url}/ui/functions/printer{path}", timeout=10,
                         allow_redirects=False)
        assert r.status_code == 303 and "/ui/login" in r.headers["Location"]


def test_an_open_stream_does_not_hold_up_the_hosts_stop(host, ui):
    """Last: it stops the module's host. A browser tab left on the logs page must not make a
    graceful stop wait `gracefulTimeout` (10 s here)."""
    stream = Stream(f"{host.url}/ui/functions/printer/logs/stream", ui)
    try:
        wait_for(lambda: stream.comments, what="the stream to open")
        began = time.monotonic()
        assert host.stop() == 0
        assert time.monotonic() - began < 8
        stream.thread.join(5)
        assert not stream.thread.is_alive()   # the stream ended
    finally:
        stream.close()
