"""The gateway app through falcon.testing and raw ASGI calls, with a fake broker: HTTP edge
cases (credentials, incomplete bodies, malformed JSON and responses) without a live host."""
from __future__ import annotations

import asyncio
import json
import urllib.parse
from dataclasses import dataclass

import falcon.asgi
import falcon.testing
import pytest
import yaml

from sora import protocol as p
from sora.config import load_host_config
from sora.gateway import app as gateway_app
from sora.gateway.errors import SoraError
from sora.gateway.requests import DRAIN_REFUSED_UP_TO, REQUEST_ID_HEADER, read_body
from tests.support import write_function

ADMIN = "admin-key-0123456789abcdef"


class FakeBroker:
    """Answers every invocation with `result`; remembers what it was sent."""

    def __init__(self):
        self.calls: list[tuple[str, bytes]] = []
        self.result = b'{"ok":true}'

    async def invoke(self, function, request_id, payload, timeout, meta=p.TRIGGER_HTTP):
        self.calls.append((function, payload))
        return [p.OK, self.result]

    def add_members_listener(self, listener):
        self.members_listener = listener   # MEMBERS, for a test to feed (sora.function_table)

    async def members_known(self, timeout=2.0):
        return True


class FakeIntake:
    def __init__(self, state_dir, min_free_disk_mb=0, store=None):
        self.accepted: list[tuple[str, bytes]] = []

    async def accept(self, request_id, function, trigger, payload, caps=None):
        self.accepted.append((function, payload))


@dataclass
class Gateway:
    app: falcon.asgi.App
    broker: FakeBroker
    intake: FakeIntake


def make_app(tmp_path, monkeypatch, keys=False, body_timeout=None):
    fns = tmp_path / "fns"
    dirs = [write_function(fns, "echo", {"index.js": "exports.handler = async (e) => e;"},
                           name="echo"),
            write_function(fns, "public", {"index.js": "exports.handler = async (e) => e;"},
                           name="public", auth="none")]
    server = {"httpPort": 8080}
    if body_timeout is not None:
        server["bodyTimeout"] = body_timeout
    spec = {"functionPaths": [str(d) for d in dirs], "server": server,
            "stateDir": str(tmp_path / "state")}
    if keys:
        spec["auth"] = {"apiKeys": [{"name": "ops", "key": ADMIN, "scopes": ["admin"]}]}
    (tmp_path / "host-config.yaml").write_text(yaml.safe_dump(spec))
    intakes = []
    monkeypatch.setattr(gateway_app, "EventIntake",
                        lambda *args: intakes.append(FakeIntake(*args)) or intakes[-1])
    broker = FakeBroker()
    app = gateway_app.create_app(load_host_config(str(tmp_path / "host-config.yaml")), broker)
    return Gateway(app, broker, intakes[0])


def accepted(app) -> list:
    return app.intake.accepted


@pytest.fixture
def open_app(tmp_path, monkeypatch):
    return make_app(tmp_path, monkeypatch)


@pytest.fixture
def keyed_app(tmp_path, monkeypatch):
    return make_app(tmp_path, monkeypatch, keys=True)


def event_sent(app) -> dict:
    assert len(app.broker.calls) == 1, app.broker.calls
    return json.loads(app.broker.calls[0][1])


def asgi_call(gateway, path, headers, events, method="POST", query="", deadline=10.0):
    """Call the app as gunicorn does, with the given receive() events; after them receive()
    waits forever (a client that stalls). `path` as sent (percent-encoded, as `raw_path`).
    Returns (status, headers, body)."""
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
             "http_version": "1.1", "method": method, "scheme": "http",
             "path": urllib.parse.unquote(path), "raw_path": path.encode(),
             "query_string": query.encode(), "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 4000), "server": ("127.0.0.1", 8080)}
    pending = list(events)
    sent = []

    async def receive():
        if pending:
            return pending.pop(0)
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    asyncio.run(asyncio.wait_for(gateway.app(scope, receive, send), deadline))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, body



# --- issue 14 point 4: the caller's credentials ---
# Through asgi_call: falcon.testing hands the app its headers as an iterator that Falcon's own
# parsing uses up, where gunicorn gives a list (which build_event reads).

NO_BODY = [{"type": "http.request", "body": b"", "more_body": False}]


@pytest.mark.parametrize("headers", [
    {"Authorization": f"Bearer {ADMIN}"},
    {"X-Api-Key": ADMIN},
    {"X-Api-Key": ADMIN, "Authorization": "Basic c29tZTpvdGhlcg=="}])
def test_the_key_sora_consumed_never_reaches_the_function(keyed_app, headers):
    status, _, body = asgi_call(keyed_app, "/functions/echo",
                                {**headers, "X-Other": "kept"}, NO_BODY, method="GET")
    assert status == 200, body
    seen = event_sent(keyed_app)["headers"]
    assert "authorization" not in seen and "x-api-key" not in seen, seen
    assert ADMIN not in json.dumps(event_sent(keyed_app))
    assert seen["x-other"] == "kept"


def test_nor_an_async_event_holds_it(keyed_app):
    status, _, body = asgi_call(keyed_app, "/functions/echo", {
        "Authorization": f"Bearer {ADMIN}", "X-Sora-Invocation-Type": "Event"}, NO_BODY)
    assert status == 202, body
    [(_, payload)] = accepted(keyed_app)
    assert ADMIN.encode() not in payload


def test_a_public_function_gets_its_callers_credentials(keyed_app):
    status, _, body = asgi_call(keyed_app, "/functions/public",
                                {"Authorization": "Bearer callers-own-token"}, NO_BODY,
                                method="GET")
    assert status == 200, body
    assert event_sent(keyed_app)["headers"]["authorization"] == "Bearer callers-own-token"


def test_a_host_without_keys_consumes_nothing(open_app):
    asgi_call(open_app, "/functions/echo", {"Authorization": "Bearer theirs", "X-Api-Key": "k"},
              NO_BODY, method="GET")
    seen = event_sent(open_app)["headers"]
    assert seen["authorization"] == "Bearer theirs" and seen["x-api-key"] == "k"


# --- issue 14 point 7: truncated bodies ---

PART = {"type": "http.request", "body": b"k" * 100, "more_body": True}
GONE = {"type": "http.disconnect"}
ROUTES = [("/functions/echo", {}),
          ("/functions/echo", {"X-Sora-Invocation-Type": "Event"}),
          ("/2015-03-31/functions/echo/invocations", {}),
          ("/2015-03-31/functions/echo/invocations", {"X-Amz-Invocation-Type": "Event"})]


@pytest.mark.parametrize("path,extra", ROUTES)
@pytest.mark.parametrize("framing", [{"Content-Length": "1000"},
                                     {"Transfer-Encoding": "chunked"}])
def test_a_body_cut_short_by_a_disconnect_is_never_invoked_nor_stored(open_app, path, extra,
                                                                      framing):
    status, headers, body = asgi_call(open_app, path, {**framing, **extra}, [PART, GONE])
    assert status == 400, body
    assert json.loads(body)["errorType"] == "Sora.IncompleteBody"
    assert REQUEST_ID_HEADER.lower() in headers
    assert open_app.broker.calls == [] and accepted(open_app) == []


@pytest.mark.parametrize("path,extra", ROUTES)
def test_a_stalled_body_is_408_after_the_body_timeout(tmp_path, monkeypatch, path, extra):
    app = make_app(tmp_path, monkeypatch, body_timeout=0.3)
    status, _, body = asgi_call(app, path, {"Content-Length": "1000", **extra}, [PART])
    assert status == 408, body
    assert json.loads(body)["errorType"] == "Sora.RequestTimeout"
    assert app.broker.calls == [] and accepted(app) == []


def test_a_body_shorter_than_its_length_without_a_disconnect_is_400(open_app):
    last = {"type": "http.request", "body": b"k" * 100, "more_body": False}
    status, _, body = asgi_call(open_app, "/functions/echo", {"Content-Length": "1000"}, [last])
    assert status == 400 and open_app.broker.calls == [], body


def test_a_whole_body_in_many_events_is_invoked_whole(open_app):
    parts = [{"type": "http.request", "body": b"%d" % i, "more_body": i < 9} for i in range(10)]
    status, _, body = asgi_call(open_app, "/functions/echo",
                                {"Content-Length": "10", "Content-Type": "text/plain"}, parts)
    assert status == 200, body
    assert event_sent(open_app)["body"] == "0123456789"


# --- issue 14 point 10: malformed input and output ---

def invoke_api(app, body: bytes):
    return falcon.testing.simulate_post(app.app, "/2015-03-31/functions/echo/invocations",
                                        body=body)


@pytest.mark.parametrize("payload", [b"[" * 1025 + b"]" * 1025, b"[" * 100000 + b"]" * 100000,
                                     b'{"a":' * 5000 + b"1" + b"}" * 5000,
                                     b"NaN", b'{"x":NaN}', b'{"x":Infinity}', b"[-Infinity]"])
def test_the_invoke_api_refuses_what_json_does_not_allow(open_app, payload):
    r = invoke_api(open_app, payload)
    assert r.status_code == 400, r.text[:300]
    assert r.json["errorType"] == "InvalidRequestContentException"
    assert open_app.broker.calls == []


def test_the_invoke_api_still_takes_deep_but_sane_json(open_app):
    assert invoke_api(open_app, b"[" * 200 + b"]" * 200).status_code == 200


def function_url_answer(app, result: dict | bytes):
    app.broker.result = result if isinstance(result, bytes) else json.dumps(result).encode()
    return falcon.testing.simulate_get(app.app, "/functions/echo")


@pytest.mark.parametrize("headers", [
    {"X-Bad\r\nInjected": "1"}, {"X-Bad\n": "1"}, {"X-Bad\x00": "1"}, {" X-Lead": "1"},
    {"X-Trail ": "1"}, {"X Inner": "1"}, {"": "1"}, {"X-Ok": "a\r\nSet-Cookie: evil=1"},
    {"X-Ok": "a\nb"}, {"X-Ok": "a\rb"}, {"X-Ok": "a\x00b"}, {"X-Ok": "euro \u20ac"}])
def test_a_response_header_that_would_break_http_is_502_json(open_app, headers):
    r = function_url_answer(open_app, {"statusCode": 200, "headers": headers, "body": "x"})
    assert r.status_code == 502, (r.status_code, r.headers)
    assert r.json["errorType"] == "Sora.InvalidResponse"
    assert r.headers[REQUEST_ID_HEADER]
    assert "evil" not in str(r.headers)


def test_bad_headers_in_multi_value_headers_and_cookies_are_502_too(open_app):
    for result in ({"statusCode": 200, "multiValueHeaders": {"X-A": ["ok", "b\r\nc"]}},
                   {"statusCode": 200, "cookies": ["a=1\r\nX-Evil: 1"]}):
        r = function_url_answer(open_app, result)
        assert r.status_code == 502 and r.json["errorType"] == "Sora.InvalidResponse", result


def test_hop_by_hop_headers_of_the_function_are_dropped(open_app):
    hop = {"Transfer-Encoding": "chunked", "Connection": "close", "Content-Length": "999",
           "Keep-Alive": "timeout=99", "Upgrade": "h2c", "Proxy-Connection": "close",
           "TE": "trailers", "Trailer": "X-T"}
    r = function_url_answer(open_app, {"statusCode": 201, "headers": {**hop, "X-Kept": "1"},
                                       "multiValueHeaders": {"connection": ["close"]},
                                       "body": "hello"})
    assert r.status_code == 201 and r.text == "hello"
    assert r.headers["X-Kept"] == "1"
    names = {name.lower() for name, _ in r.headers.items()}
    assert not names & {"transfer-encoding", "connection", "keep-alive", "upgrade",
                        "proxy-connection", "te", "trailer"}, r.headers
    assert r.headers.get("Content-Length") in (None, "5")


def test_a_response_nested_too_deep_to_parse_is_502_not_500(open_app):
    deep = b'{"statusCode":200,"body":' + b"[" * 5000 + b"]" * 5000 + b"}"
    r = function_url_answer(open_app, deep)
    assert r.status_code == 502 and r.json["errorType"] == "Sora.InvalidResponse", r.text[:200]


# --- a body refused for its declared size is read first (no reset for its sender) ---

class _BodyRequest:
    """What read_body uses of a Falcon ASGI request."""
    def __init__(self, length: int, events: list):
        self.content_length = length
        self.scope = {"headers": [(b"content-length", str(length).encode())]}
        self._first_event = events[0]
        self.rest = events[1:]

    async def _receive(self):
        return self.rest.pop(0)


@pytest.mark.parametrize("over,drained", [(1000, True), (DRAIN_REFUSED_UP_TO + 1, False)])
def test_a_body_over_the_limit_is_read_and_dropped_before_the_413(over, drained):
    """Closing with unread bytes resets the connection: the client, still writing, saw
    ECONNRESET instead of the 413 (test_records_truth flaked on it). A body at most
    DRAIN_REFUSED_UP_TO over the limit is read to its end first; a far larger one is not."""
    limit = 64 * 1024
    chunks = [{"type": "http.request", "body": b"x" * 1000, "more_body": i < 9}
              for i in range(10)]
    req = _BodyRequest(limit + over, chunks)
    with pytest.raises(SoraError) as refused:
        asyncio.run(read_body(req, limit, stall_timeout=1.0))
    assert refused.value.status == 413
    assert (req.rest == []) is drained


# --- issue 18: a function without an `http` trigger ---

def test_a_function_without_http_has_no_url_but_the_invoke_api_reaches_it(tmp_path,
                                                                            monkeypatch):
    fns = tmp_path / "fns"
    write_function(fns, "nightly", {"index.js": "exports.handler = async (e) => e;"},
                   name="nightly", auth="none", trigger=[{"schedule": "rate(1 day)"}])
    make_app(tmp_path, monkeypatch)    # writes the host config with echo and public
    spec = yaml.safe_load((tmp_path / "host-config.yaml").read_text())
    spec["functionPaths"].append(str(fns / "nightly"))
    (tmp_path / "host-config.yaml").write_text(yaml.safe_dump(spec))
    config = load_host_config(str(tmp_path / "host-config.yaml"))
    assert not config.function("nightly").http and config.function("echo").http
    broker = FakeBroker()
    app = gateway_app.create_app(config, broker)
    for method in ("GET", "POST"):
        r = falcon.testing.simulate_request(app, method, "/functions/nightly/any/path")
        # What an unknown name gets (the control plane's NOT_FOUND), before any call is made.
        assert r.status_code == 404 and r.json["errorType"] == "ResourceNotFoundException"
        assert r.json["errorMessage"] == "Function not found: nightly"
    assert broker.calls == []
    r = falcon.testing.simulate_post(app, "/2015-03-31/functions/nightly/invocations",
                                     body=b'{"x":1}')
    assert r.status_code == 200, r.text
    assert [call[0] for call in broker.calls] == ["nightly"]
    assert falcon.testing.simulate_get(app, "/functions/echo").status_code == 200
