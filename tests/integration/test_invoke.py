"""One real host (supervisor, gunicorn over HTTP and HTTPS, Node) serving many functions: the
handler contract, the function URL event and response formats, and the error responses."""
from __future__ import annotations

import base64
import json
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.integration import functions as F
from tests.support import SoraHost, json_of, processes_in, wait_for, write_function

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("invoke")
    fns = base / "fns"
    dirs = [
        write_function(fns, "echo", {"index.js": F.ECHO}, name="echo", memory=192,
                       env={"GREETING": "hi", "FLAG": True, "COUNT": 3}),
        write_function(fns, "callback", {"index.js": F.CALLBACK}, name="callback"),
        write_function(fns, "promise", {"index.js": F.PROMISE}, name="promise"),
        write_function(fns, "esm-mjs", {"handler.mjs": F.ESM_MJS}, name="esm-mjs",
                       entrypoint="handler.mjs"),
        write_function(fns, "esm-type", {"index.js": F.ESM_TYPE_MODULE,
                                         "package.json": '{"type": "module"}'},
                       name="esm-type"),
        write_function(fns, "nested", {"app.js": F.NESTED}, name="nested", entrypoint="app.js",
                       handler="routes.main"),
        write_function(fns, "errors", {"index.js": F.ERRORS}, name="errors"),
        write_function(fns, "response", {"index.js": F.RESPONSE}, name="response"),
        write_function(fns, "slow", {"index.js": F.SLOW}, name="slow", timeout=1, instances=2),
        write_function(fns, "crash", {"index.js": F.CRASH}, name="crash", timeout=2),
        write_function(fns, "printer", {"index.js": F.PRINTER}, name="printer"),
        write_function(fns, "counter", {"index.js": F.COUNTER}, name="counter"),
        write_function(fns, "fast-crash", {"index.js": F.CRASH}, name="fast-crash"),
    ]
    # errorDetail full: these tests read the traces the shim reports (the default, message,
    # leaves them out: tests/integration/test_error_detail.py).
    h = SoraHost(base, dirs, server={"maxBodyBytes": 64 * 1024, "gatewayWorkers": 2,
                                     "errorDetail": "full"},
                 env={"SORA_TEST_HOST_SECRET": "must-not-leak"})
    h.start()
    yield h
    code = h.stop()
    assert code == 0, h.log()
    assert not h.leftovers(), h.leftovers()


# --- transport -------------------------------------------------------------------------------

def test_http_and_https_serve_the_same_function(host):
    plain = json_of(host.invoke("echo"))
    secure = requests.get(f"{host.https_url}/functions/echo", verify=str(host.cert), timeout=10)
    assert secure.status_code == 200
    assert json_of(secure)["context"]["functionName"] == "echo"
    assert plain["context"]["functionName"] == "echo"


def test_https_refuses_tls_below_1_2(host):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(host.cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", host.https_port), timeout=5) as raw:
        with pytest.raises(ssl.SSLError):
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                pass


def test_health_reports_every_function(host):
    health = host.health()
    assert health["status"] == "ok"
    assert health["functions"]["echo"]["state"] == "RUNNING"
    assert set(health["gateways"]) == {"http", "https"}


# --- handler contract -------------------------------------------------------------------------

def test_context_carries_lambda_fields_and_request_id(host):
    r = host.invoke("echo")
    body = json_of(r)
    ctx = body["context"]
    assert r.headers["X-Sora-Request-Id"] == ctx["awsRequestId"]
    assert ctx["functionVersion"] == "$LATEST"
    assert ctx["memoryLimitInMB"] == "192"
    assert ctx["invokedFunctionArn"].endswith(":function:echo")
    assert 0 < ctx["remaining"] <= 30_000
    assert ctx["callbackWaitsForEmptyEventLoop"] is True


def test_env_reaches_function_and_host_env_does_not(host):
    env = json_of(host.invoke("echo"))["env"]
    assert env["GREETING"] == "hi" and env["FLAG"] == "true" and env["COUNT"] == "3"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "echo"
    assert "PATH" in env and "HOME" in env
    assert "SORA_TEST_HOST_SECRET" not in env
    assert not any(k.startswith("SORA_") for k in env), env


@pytest.mark.parametrize("name, expected", [
    ("callback", "callback"), ("promise", "promise"), ("esm-mjs", "mjs"),
    ("esm-type", "type-module"), ("nested", "nested")])
def test_handler_forms(host, name, expected):
    r = host.invoke(name)
    assert r.status_code == 200, r.text
    assert json_of(r)["via"] == expected


def test_module_is_loaded_once_per_instance(host):
    first, second, third = (json_of(host.invoke("counter")) for _ in range(3))
    assert [first["calls"], second["calls"], third["calls"]] == [1, 2, 3]
    assert first["loadedAt"] == third["loadedAt"] and first["instance"] == third["instance"]


def test_thrown_error_is_502_with_class_name_and_trace(host):
    r = host.invoke("errors")
    assert r.status_code == 502
    body = json_of(r)
    assert body["errorType"] == "ValidationError"
    assert body["errorMessage"] == "name is required"
    assert isinstance(body["trace"], list) and any("index.js" in line for line in body["trace"])
    assert r.headers["X-Amz-Function-Error"] == "Unhandled"


def test_rejected_promise_is_502(host):
    body = json_of(host.invoke("errors", params={"kind": "reject"}))
    assert body["errorType"] == "TypeError" and body["errorMessage"] == "rejected on purpose"


def test_thrown_string_is_502(host):
    r = host.invoke("errors", params={"kind": "string"})
    assert r.status_code == 502
    assert json_of(r) == {"errorType": "string", "errorMessage": "plain string", "trace": []}


# --- function URL event -----------------------------------------------------------------------

def test_event_has_function_url_shape(host):
    r = host.invoke("echo", "/items/42", method="POST", params=[("a", "1"), ("a", "2"), ("b", "")],
                    headers={"X-Custom": "v", "Cookie": "s=abc; theme=dark",
                             "Content-Type": "application/json"},
                    data=b'{"x": 1}')
    event = json_of(r)["event"]
    assert event["version"] == "2.0" and event["routeKey"] == "$default"
    assert event["rawPath"] == "/items/42"
    assert event["rawQueryString"] == "a=1&a=2&b="
    assert event["queryStringParameters"] == {"a": "1,2", "b": ""}
    assert event["cookies"] == ["s=abc", "theme=dark"]
    assert event["headers"]["x-custom"] == "v" and "cookie" not in event["headers"]
    assert all(k == k.lower() for k in event["headers"])
    assert event["body"] == '{"x": 1}' and event["isBase64Encoded"] is False
    rc = event["requestContext"]
    assert rc["http"] == {"method": "POST", "path": "/items/42", "protocol": "HTTP/1.1",
                          "sourceIp": "127.0.0.1",
                          "userAgent": event["headers"]["user-agent"]}
    assert rc["requestId"] == r.headers["X-Sora-Request-Id"]
    for field in ("accountId", "apiId", "domainName", "domainPrefix", "stage", "time",
                  "timeEpoch", "routeKey", "authentication"):
        assert field in rc
    assert event["pathParameters"] is None and event["stageVariables"] is None


def test_event_without_query_or_body(host):
    event = json_of(host.invoke("echo"))["event"]
    assert event["rawPath"] == "/" and event["rawQueryString"] == ""
    assert "queryStringParameters" not in event and "body" not in event
    assert "cookies" not in event


def test_binary_body_is_base64(host):
    raw = bytes(range(256))
    event = json_of(host.invoke("echo", method="PUT", data=raw,
                                headers={"Content-Type": "application/octet-stream"}))["event"]
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == raw


# --- responses --------------------------------------------------------------------------------

def test_structured_response_maps_status_headers_cookies(host):
    r = host.invoke("response")
    assert r.status_code == 418
    assert r.text == "short and stout"
    assert r.headers["content-type"] == "text/plain"
    assert r.headers["x-custom"] == "yes"
    assert r.raw.headers.getlist("Set-Cookie") == ["a=1; Path=/", "b=2; HttpOnly"]


def test_base64_response_body_is_decoded(host):
    r = host.invoke("response", params={"kind": "binary"})
    assert r.status_code == 200 and r.content == bytes([0, 1, 2, 250, 255])
    assert r.headers["content-type"] == "image/png"


@pytest.mark.parametrize("kind, expected", [("string", "just a string"), ("array", [1, 2, 3]),
                                            ("null", None)])
def test_other_values_are_json_200(host, kind, expected):
    r = host.invoke("response", params={"kind": kind})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == expected


def test_invalid_response_object_is_502(host):
    r = host.invoke("response", params={"kind": "bad-status"})
    assert r.status_code == 502
    assert json_of(r)["errorType"] == "Sora.InvalidResponse"


# --- errors -----------------------------------------------------------------------------------

def test_unknown_function_is_404_json(host):
    r = host.invoke("no-such-function")
    assert r.status_code == 404
    assert json_of(r)["errorType"] == "ResourceNotFoundException"
    assert r.headers["X-Sora-Request-Id"]


def test_unknown_route_is_404_json(host):
    r = host.session.get(host.url + "/nothing-here", timeout=5)
    assert r.status_code == 404 and "errorType" in json_of(r)
    assert r.headers["X-Sora-Request-Id"]


def test_body_over_limit_is_413(host):
    r = host.invoke("echo", method="POST", data=b"x" * (64 * 1024 + 1))
    assert r.status_code == 413
    assert json_of(r)["errorType"] == "Sora.RequestTooLarge"


def test_chunked_body_over_limit_is_413(host):
    def chunks():
        for _ in range(20):
            yield b"y" * 8192
    r = host.invoke("echo", method="POST", data=chunks())
    assert r.status_code == 413


def test_timeout_is_504_and_instance_is_replaced(host):
    r = host.invoke("slow", params={"forever": "1"})
    assert r.status_code == 504
    assert json_of(r) == {"errorType": "Sora.Timeout",
                          "errorMessage": "Task timed out after 1.00 seconds"}
    again = host.invoke("slow", params={"ms": "1"})
    assert again.status_code == 200


def test_busy_loop_is_killed_at_timeout(host):
    r = host.invoke("slow", params={"spin": "1"})
    assert r.status_code == 504
    assert host.invoke("slow", params={"ms": "1"}).status_code == 200


def test_instances_run_in_parallel(host):
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: json_of(host.invoke("slow", params={"ms": "400"})),
                                range(4)))
    assert len({r["instance"] for r in results}) == 2  # `instances: 2` in sora.yaml


def test_process_exit_is_502_runtime_exited_and_next_call_works(host):
    r = host.invoke("crash", params={"exit": "3"})
    assert r.status_code == 502
    body = json_of(r)
    assert body["errorType"] == "Sora.RuntimeExited"
    assert "exit status 3" in body["errorMessage"]
    assert host.invoke("crash").status_code == 200


def test_uncaught_exception_fails_the_invocation(host):
    r = host.invoke("crash", params={"uncaught": "1"})
    assert r.status_code == 502
    assert json_of(r)["errorMessage"] == "uncaught boom"
    assert host.invoke("crash").status_code == 200


def test_kill_9_of_node_instance_mid_invocation(host):
    instance = json_of(host.invoke("crash"))["instance"]
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(host.invoke, "crash", params={"hang": "1"})
        wait_for(lambda: host.function_state("crash")["inFlight"] == 1, what="in flight")
        nodes = processes_in(host.base / "fns" / "crash", "node")
        assert nodes
        for node in nodes:   # the one running the call (and any idle one beside it)
            node.kill()
        r = pending.result(timeout=10)
    assert r.status_code == 502
    assert json_of(r)["errorType"] == "Sora.RuntimeExited"
    assert "SIGKILL" in json_of(r)["errorMessage"]
    fresh = json_of(host.invoke("crash"))["instance"]
    assert fresh != instance


def test_function_output_is_logged_with_request_id(host):
    r = host.invoke("printer")
    rid = r.headers["X-Sora-Request-Id"]
    log = host.base / "state" / "logs" / "printer.log"
    # All its lines are in once its REPORT line is (issue 15 point 5).
    text = wait_for(lambda: f"REPORT RequestId: {rid}" in (x := log.read_text()) and x,
                    what="log lines")
    lines = [line for line in text.splitlines() if rid in line]
    assert any("stdout" in line and f"hello from {rid}" in line for line in lines)
    assert any("stderr" in line and f"an error line for {rid}" in line for line in lines)


def test_printing_never_corrupts_the_result(host):
    # Output goes to logs, results to the control fd: the JSON result stays intact.
    assert json_of(host.invoke("printer")) == {"ok": True}


def test_two_hundred_concurrent_requests_all_succeed(host):
    def call(i):
        r = host.invoke("echo", params={"i": str(i)})
        return r.status_code, json_of(r)["event"]["queryStringParameters"]["i"]
    with ThreadPoolExecutor(200) as pool:
        results = list(pool.map(call, range(200)))
    assert [code for code, _ in results] == [200] * 200
    assert sorted(int(i) for _, i in results) == list(range(200))


def test_request_ids_are_unique(host):
    ids = {host.invoke("echo").headers["X-Sora-Request-Id"] for _ in range(20)}
    assert len(ids) == 20
    json.dumps(list(ids))


def test_invocations_queued_behind_a_crash_are_not_lost(host):
    # A fast function's instance holds several invocations (one running, the rest waiting in
    # its input). When the running one kills the process, the waiting ones run elsewhere.
    for _ in range(80):
        assert host.invoke("fast-crash").status_code == 200
    with ThreadPoolExecutor(24) as pool:
        calls = [pool.submit(host.invoke, "fast-crash", params={"i": str(i)})
                 for i in range(10)]
        crash = pool.submit(host.invoke, "fast-crash", params={"exit": "9"})
        calls += [pool.submit(host.invoke, "fast-crash", params={"i": str(i)})
                  for i in range(10, 40)]
        results = [c.result(timeout=20) for c in calls]
        crashed = crash.result(timeout=20)
    assert crashed.status_code == 502 and json_of(crashed)["errorType"] == "Sora.RuntimeExited"
    assert [r.status_code for r in results] == [200] * 40
