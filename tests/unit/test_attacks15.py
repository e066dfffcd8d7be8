"""An attacker's review of issue 15's SigV4 auth and Lambda log lines (sora.gateway.sigv4,
sora.gateway.auth, sora.worker.logs): each test makes the attack and failed before its fix."""
from __future__ import annotations

import argparse
import base64
import re
import time
import urllib.parse

from sora.worker.logs import FunctionLog
from sora.worker.report import end_lines, start_line
from tests.unit.test_gateway_app import asgi_call
from tests.unit.test_sigv4 import ECHO, INVOKE, call, gateway, signed  # noqa: F401 (a fixture)


def stalled_call(gateway, headers: dict, length: int) -> tuple[int, dict]:
    """A request whose headers promise `length` bytes of body, of which only the first
    kilobyte ever comes (Falcon waits for a body's first piece before any middleware runs)."""
    # The host's body wait (server.bodyTimeout) is 10 s: a refusal must come well before.
    status, sent_headers, _ = asgi_call(
        gateway, INVOKE.format("echo"), {**headers, "Content-Length": str(length)},
        [{"type": "http.request", "body": b"{" * 1024, "more_body": True}], deadline=3)
    return status, sent_headers


def test_a_signature_of_no_key_is_refused_before_its_body_is_read(gateway):
    # An unknown access key id (or a stale date) is known from the headers alone. Before the
    # fix the gateway first read (and hashed) up to server.maxBodyBytes for anyone who wrote
    # `Authorization: AWS4-HMAC-SHA256 ...`, and waited bodyTimeout for a body that never came
    # (asyncio.TimeoutError here): an unknown Bearer key is refused at once.
    for headers, kind in [
            (signed(INVOKE.format("echo"), key_id="nobody"), "UnrecognizedClientException"),
            (signed(INVOKE.format("echo"), at=time.time() - 3600), "InvalidSignatureException"),
            ({"Authorization": "AWS4-HMAC-SHA256 garbage"}, "IncompleteSignatureException")]:
        status, out = stalled_call(gateway, headers, 5 << 20)
        assert (status, out["x-amzn-errortype"]) == (401, kind)
    assert gateway.broker.calls == []


def test_a_signed_query_cannot_be_resent_with_plus_for_space(gateway):
    # The function reads '+' in a query as a space (parse_qsl, as Lambda's function URLs do);
    # the signature read it as a '+'. So `?q=a%2Bb` ("a+b"), signed, could be resent by whoever
    # saw it as `?q=a+b` and the function got "a b" under the same signature (200 before the
    # fix).
    headers = signed("/functions/echo", b"", key_id="echo-caller", secret=ECHO, method="GET",
                     query="q=a%2Bb")
    status, _, _ = call(gateway, "/functions/echo", headers, b"", method="GET", query="q=a%2Bb")
    assert status == 200
    status, out, _ = call(gateway, "/functions/echo", headers, b"", method="GET", query="q=a+b")
    assert (status, out["x-amzn-errortype"]) == (401, "InvalidSignatureException")
    # A space signed and sent as the SDKs send it still works.
    headers = signed("/functions/echo", b"", key_id="echo-caller", secret=ECHO, method="GET",
                     query="q=a%20b")
    status, _, _ = call(gateway, "/functions/echo", headers, b"", method="GET", query="q=a%20b")
    assert status == 200


def test_a_function_cannot_print_a_platform_line(tmp_path):
    # A carriage return, then the text of an END line as the file writes it: on a terminal
    # (`sora logs`, `tail` of the file) it covered the line's own head and read as an END the
    # worker wrote; an escape sequence could clear or rewrite the operator's screen. Before the
    # fix both reached the file, the records and the tail as they were printed.
    sent = []

    class Records:
        def lines(self, function, request_id, stream, lines):
            sent.extend(lines)

    log = FunctionLog(str(tmp_path), "fn", Records())
    log.want_tail("r1")
    log.begin("r1", start_line(b"r1"))
    forged = b"x\r2026-11-25T19:00:00 r0 platform END RequestId: r0"
    log.write("r1", "stdout", [forged, b"\x1b[1A\x1b[2K\x1b]52;c;cm0gLXJmIH4K\x07 \xc2\x9b2J"
                                       b" caf\xc3\xa9\t\xc2\xb0 ok\r"])
    log.end("r1", end_lines(b"r1", 1.0, 128, 1))
    log.flush()
    written = (tmp_path / "logs" / "fn.log").read_bytes()
    tail = base64.b64decode(log.tail("r1"))
    for seen in (written, tail, b"\n".join(sent)):
        printed = [line for line in seen.split(b"\n") if b"stdout" in line or
                   b"r0" in line or b"caf" in line]
        assert not any(re.search(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]", line)
                       for line in printed), printed
        assert b"x\\x0d2026-11-25T19:00:00 r0 platform END" in seen
        # What a terminal shows as text is kept: tabs, UTF-8 (U+00B0 too).
        assert b"caf\xc3\xa9\t\xc2\xb0 ok" in seen
    log.close()


def test_an_unsigned_header_that_changes_the_call_is_refused(gateway):
    # Whoever saw a signed call could resend it within its 5 minutes with a header it did not
    # sign: `X-Amz-Log-Type: Tail` (and get the invocation's log back), or another invocation
    # type. The SigV4 rule: every x-amz-* header sent is signed (Sora's x-sora-* too). Before
    # the fix: 200, 204 and 202.
    headers = signed(INVOKE.format("echo"), key_id="echo-caller", secret=ECHO)
    assert call(gateway, INVOKE.format("echo"), headers)[0] == 200
    for added in ({"X-Amz-Log-Type": "Tail"}, {"X-Amz-Invocation-Type": "DryRun"}):
        status, out, body = call(gateway, INVOKE.format("echo"), {**headers, **added})
        assert (status, out.get("x-amzn-errortype")) == (401, "InvalidSignatureException"), \
            (added, status, body)
        assert list(added)[0].lower() in body["message"]
    headers = signed("/functions/echo", key_id="echo-caller", secret=ECHO)
    status, out, _ = call(gateway, "/functions/echo",
                          {**headers, "X-Sora-Invocation-Type": "Event"})
    assert (status, out.get("x-amzn-errortype")) == (401, "InvalidSignatureException")
    # The SDKs' own unsigned headers still pass (user-agent, a trace id).
    status, _, _ = call(gateway, INVOKE.format("echo"), {
        **signed(INVOKE.format("echo"), key_id="echo-caller", secret=ECHO),
        "User-Agent": "Boto3/1.0", "X-Amzn-Trace-Id": "Root=1-0-0"})
    assert status == 200


def test_a_key_for_one_function_reaches_no_other_by_any_spelling(gateway):
    # Held before these fixes: the scope is checked against the function the route resolves,
    # whatever the path's spelling, and the signature covers the path as sent.
    arn = "arn:aws:lambda:eu-west-3:123456789012:function:"
    for path, wanted in [(INVOKE.format("other"), 403),
                         (INVOKE.format(urllib.parse.quote(arn + "other", safe="")), 403),
                         (INVOKE.format("echo:other"), 404),   # a qualifier, not a function
                         ("/functions/other", 403), ("/functions/other/x", 403),
                         ("/functions/echo/..%2Fother", 400),
                         ("/functions/echo/%2E%2E/other", 400)]:
        headers = signed(path, key_id="echo-caller", secret=ECHO)
        status, _, body = call(gateway, path, headers)
        assert status == wanted, (path, status, body)
    # A signature for echo's path, sent on another path that normalizes to it.
    headers = signed("/functions/echo", key_id="echo-caller", secret=ECHO)
    for path in ("/functions/other/../echo", "/functions//echo"):
        status, _, _ = call(gateway, path, headers)
        assert status in (400, 403, 404), path
    assert gateway.broker.calls == []


def test_a_refused_path_cannot_write_lines_into_the_hosts_log(gateway, caplog):
    # The path is logged with each refusal, decoded: a caller with no key sent `%0A` and the
    # text of a log line of its choosing, and the host's log showed it as a line of its own
    # (a 403 for an admin key, here). Before the fix the newline reached the log as it came.
    forged = ("\n2026-11-25 19:00:00 WARNING sora.gateway.auth: auth: 403 for GET /api/functions"
              " from 10.0.0.1: key 'ops' has scopes admin\x1b[2K")
    with caplog.at_level("WARNING", logger="sora.gateway.auth"):
        status, _, _ = call(gateway, "/functions/echo/" + urllib.parse.quote(forged), {})
    assert status == 401
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "auth: 401 for POST /functions/echo/" in logged
    assert "\n" not in logged and "\x1b" not in logged, logged


def chunked_call(gateway, headers: dict, pieces: list[bytes]) -> tuple[int, dict]:
    chunked = {k: v for k, v in headers.items() if k.lower() != "content-length"}
    events = [{"type": "http.request", "body": piece, "more_body": n < len(pieces) - 1}
              for n, piece in enumerate(pieces)]
    status, sent_headers, _ = asgi_call(
        gateway, INVOKE.format("echo"), {**chunked, "Transfer-Encoding": "chunked"}, events,
        deadline=5)
    return status, sent_headers


def test_a_chunked_body_is_signed_whole(gateway):
    # Held: the body the signature covers is the one the function gets, however it is cut.
    headers = signed(INVOKE.format("echo"), b'{"amount": 1, "to": "a"}', key_id="echo-caller",
                     secret=ECHO)
    assert chunked_call(gateway, headers, [b'{"amount": 1,', b' "to": "a"}'])[0] == 200
    assert gateway.broker.calls == [("echo", b'{"amount": 1, "to": "a"}')]
    status, out = chunked_call(gateway, headers, [b'{"amount": 1,', b' "to": "a"}', b" "])
    assert (status, out["x-amzn-errortype"]) == (401, "InvalidSignatureException")
    assert len(gateway.broker.calls) == 1


def test_the_cli_prints_a_functions_text_without_its_control_characters(monkeypatch, capsys):
    # A function's error (type, message), its log lines and its load error (a FATAL reason)
    # are its text; `sora inspect`, `sora logs` and `sora ls` printed them as they were, so a
    # function could rewrite the operator's screen (ESC), set the clipboard (OSC 52), or print
    # a line of its own after a newline ("status: ok"). Before the fix all reached stdout.
    from sora.cli import main as cli
    evil = "boom\r\x1b]52;c;cm0gLXJmIH4K\x07\nstatus:             ok\x1b[2J\x9b1A"
    record = {"requestId": "r1", "function": "fn", "status": "error", "trigger": "http",
              "errorType": "Error\x1b[8m", "errorMessage": evil,
              "logs": [{"time": 0, "requestId": "r1", "stream": "stdout", "line": evil}]}
    functions = {"functions": [{"name": "fn", "state": "FATAL", "instances": 0,
                                "language": "nodejs", "reason": evil,
                                "events": {"queued": 0, "leased": 0, "dead": 0}}]}

    class FakeHost:
        def get_json(self, path, params=None):
            return {"/api/functions": functions, "/api/functions/fn/logs":
                    {"lines": record["logs"]}}.get(path, record)

    monkeypatch.setattr(cli.Host, "from_args", classmethod(lambda cls, args: FakeHost()))
    cli.cmd_inspect(argparse.Namespace(request_id="r1", json=False))
    cli.cmd_logs(argparse.Namespace(name="fn", request_id=None, limit=100, follow=False,
                                    json=False))
    cli.cmd_ls(argparse.Namespace(json=False, wide=True))
    out = capsys.readouterr().out
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", out), ascii(out)
    assert not any(line.startswith("status:") and "ok" in line for line in out.splitlines())
    assert "boom\\x0d\\x1b]52;c;" in out


def test_an_event_that_could_not_be_stored_names_no_host_path(tmp_path, monkeypatch, caplog):
    # The queue's OSError (a full disk at the state dir, say) carries its file name, and the
    # 503 repeated it to whoever sent the event: the state dir's path, on a function URL
    # anyone may call, under the default `errorDetail: message`. The log keeps it.
    from sora.events.intake import EventNotStored
    from tests.unit.test_gateway_app import asgi_call, make_app
    gateway = make_app(tmp_path, monkeypatch)
    state = str(tmp_path / "state")

    async def full_disk(*args, **kwargs):
        raise EventNotStored(f"[Errno 28] No space left on device: '{state}/events'")

    gateway.intake.accept = full_disk
    with caplog.at_level("WARNING"):
        status, _, body = asgi_call(gateway, "/functions/echo",
                                    {"X-Sora-Invocation-Type": "Event", "Content-Length": "2"},
                                    [{"type": "http.request", "body": b"{}",
                                      "more_body": False}])
    assert status == 503 and b"Sora.EventNotStored" in body
    assert str(tmp_path).encode() not in body, body
    assert b"No space left on device" in body
    assert state in caplog.text
