"""An attacker's review of issue 15's SigV4 auth and Lambda log lines (sora.gateway.sigv4,
sora.gateway.auth, sora.worker.logs): each test makes the attack and failed before its fix."""
from __future__ import annotations

import asyncio
import time

from tests.unit.test_sigv4 import ECHO, INVOKE, call, gateway, signed  # noqa: F401 (a fixture)


def stalled_call(gateway, headers: dict, length: int) -> tuple[int, dict]:
    """A request whose headers promise `length` bytes of body, of which only the first
    kilobyte ever comes (Falcon waits for a body's first piece before any middleware runs)."""
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
             "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": INVOKE.format("echo"), "raw_path": INVOKE.format("echo").encode(),
             "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in
                         {**headers, "Content-Length": str(length)}.items()],
             "client": ("127.0.0.1", 4000), "server": ("127.0.0.1", 8080)}
    sent = []
    events = [{"type": "http.request", "body": b"{" * 1024, "more_body": True}]

    async def receive():
        if events:
            return events.pop(0)
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    # The host's body wait (server.bodyTimeout) is 10 s: a refusal must come well before.
    asyncio.run(asyncio.wait_for(gateway.app(scope, receive, send), 3))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}


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
