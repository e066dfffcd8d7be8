"""`server.errorDetail` (issue 15 point 4) through falcon.testing with a fake broker: what a
function URL caller and an Invoke API caller see of each kind of failure at each level. The
live host's view (real traces, a real setup failure) is tests/integration/test_error_detail.py."""
from __future__ import annotations

import json
import os
from pathlib import Path

import falcon.testing
import pytest
import yaml

import sora
from sora import protocol as p
from sora.config import ConfigError, load_host_config
from sora.gateway import app as gateway_app
from sora.gateway.error_detail import ErrorDetail
from sora.worker.main import checked_url_result
from tests.support import write_function
from tests.unit.test_gateway_app import FakeIntake

SORA_DIR = os.path.dirname(os.path.abspath(sora.__file__))
ROOT = Path(__file__).resolve().parents[2]


class AnsweringBroker:
    """Answers every invocation with (`status`, `body`)."""

    def __init__(self):
        self.status, self.body = p.OK, b"{}"

    async def invoke(self, function, request_id, payload, timeout, meta=p.TRIGGER_HTTP):
        return [self.status, self.body]

    def add_members_listener(self, listener):
        pass

    async def members_known(self, timeout=2.0):
        return True


def make(tmp_path, monkeypatch, level: str | None):
    fn_dir = write_function(tmp_path / "fns", "echo", {"index.js": ""}, name="echo")
    server = {"httpPort": 8080} | ({"errorDetail": level} if level else {})
    (tmp_path / "host-config.yaml").write_text(yaml.safe_dump({
        "functionPaths": [str(fn_dir)], "server": server,
        "stateDir": str(tmp_path / "state")}))
    monkeypatch.setattr(gateway_app, "EventIntake", FakeIntake)
    broker = AnsweringBroker()
    config = load_host_config(str(tmp_path / "host-config.yaml"))
    return gateway_app.create_app(config, broker), broker, config


def thrown(fn_dir: str, state_dir: str) -> bytes:
    """An error as the Node shim reports it: a message and a trace full of host paths."""
    return p.error_body("Error", f"ENOENT: no such file, open '{fn_dir}/data.json'", trace=[
        f"Error: ENOENT: no such file, open '{fn_dir}/data.json'",
        f"    at handler ({fn_dir}/index.js:3:9)",
        f"    at run ({SORA_DIR}/runtimes/nodejs/bootstrap.cjs:200:5)",
        f"    at cache ({state_dir}/setup/echo.log)"])


def setup_failed(state_dir: str) -> bytes:
    return p.error_body("Sora.FunctionUnavailable", (
        f"Function echo cannot serve: setup command 'exit 7' failed with exit status 7 "
        f"(log: {state_dir}/setup/echo.log)"))


def host_paths(config) -> list[str]:
    return [config.functions[0].directory, config.stateDir, SORA_DIR,
            os.path.dirname(config.path)]


def test_message_is_the_default_and_gives_type_and_message_without_host_paths(
        tmp_path, monkeypatch):
    app, broker, config = make(tmp_path, monkeypatch, None)
    assert config.server.errorDetail == "message"
    fn_dir = config.functions[0].directory
    broker.status, broker.body = p.FUNCTION_ERROR, thrown(fn_dir, config.stateDir)
    r = falcon.testing.simulate_get(app, "/functions/echo")
    assert r.status_code == 502 and r.headers["content-type"] == "application/json"
    assert r.json == {"errorType": "Error",
                      "errorMessage": "ENOENT: no such file, open './data.json'"}
    broker.status, broker.body = p.UNAVAILABLE, setup_failed(config.stateDir)
    r = falcon.testing.simulate_get(app, "/functions/echo")
    assert r.status_code == 503 and r.json["errorType"] == "Sora.FunctionUnavailable"
    assert "/healthz" in r.json["errorMessage"] and "exit 7" not in r.json["errorMessage"]
    broker.status, broker.body = p.INIT_ERROR, p.error_body(
        "Sora.ConfigError", f"{fn_dir}/sora.yaml: secrets.DB: /etc/sora/db: not found")
    r = falcon.testing.simulate_get(app, "/functions/echo")
    assert r.status_code == 502 and "/etc/sora" not in r.text
    for answer in (thrown(fn_dir, config.stateDir), setup_failed(config.stateDir)):
        broker.status, broker.body = p.FUNCTION_ERROR, answer
        text = falcon.testing.simulate_get(app, "/functions/echo").text
        assert not [path for path in host_paths(config) if path in text], text


def test_none_answers_as_lambda_function_urls_do(tmp_path, monkeypatch):
    app, broker, config = make(tmp_path, monkeypatch, "none")
    broker.status, broker.body = p.FUNCTION_ERROR, thrown(config.functions[0].directory,
                                                           config.stateDir)
    r = falcon.testing.simulate_get(app, "/functions/echo")
    assert (r.status_code, r.text) == (502, "Internal Server Error")
    assert r.headers["content-type"].startswith("text/plain")
    assert r.headers[gateway_app.REQUEST_ID_HEADER]   # the operator can still look it up
    broker.status, broker.body = p.UNAVAILABLE, setup_failed(config.stateDir)
    r = falcon.testing.simulate_get(app, "/functions/echo")
    assert (r.status_code, r.text) == (503, "Service Unavailable")
    broker.status, broker.body = p.TIMEOUT, p.error_body("Sora.Timeout", "Task timed out")
    assert falcon.testing.simulate_get(app, "/functions/echo").text == "Gateway Timeout"
    # The gateway's own 5xx too (an invalid response object); 4xx keep their JSON message.
    broker.status, broker.body = p.OK, b'{"statusCode": "teapot"}'
    r = falcon.testing.simulate_get(app, "/functions/echo")
    assert (r.status_code, r.text) == (502, "Internal Server Error")
    r = falcon.testing.simulate_get(app, "/functions/echo/../x")
    assert r.status_code == 400 and r.json["errorType"] == "Sora.InvalidPath"
    # A successful call is untouched.
    broker.body = b'{"hello":"world"}'
    assert falcon.testing.simulate_get(app, "/functions/echo").json == {"hello": "world"}


def test_full_passes_the_error_through_with_its_trace(tmp_path, monkeypatch):
    app, broker, config = make(tmp_path, monkeypatch, "full")
    body = thrown(config.functions[0].directory, config.stateDir)
    broker.status, broker.body = p.FUNCTION_ERROR, body
    r = falcon.testing.simulate_get(app, "/functions/echo")
    assert r.status_code == 502 and r.content == body and len(r.json["trace"]) == 4
    broker.status, broker.body = p.UNAVAILABLE, setup_failed(config.stateDir)
    assert "exit status 7" in falcon.testing.simulate_get(app, "/functions/echo").json[
        "errorMessage"]


def test_the_invoke_api_keeps_lambdas_error_payload(tmp_path, monkeypatch):
    app, broker, config = make(tmp_path, monkeypatch, "none")
    body = thrown(config.functions[0].directory, config.stateDir)
    broker.status, broker.body = p.FUNCTION_ERROR, body
    r = falcon.testing.simulate_post(app, "/2015-03-31/functions/echo/invocations", body=b"{}")
    assert r.status_code == 200 and r.headers["X-Amz-Function-Error"] == "Unhandled"
    assert r.content == body
    # Why a function cannot start names the host's files: never there either.
    broker.status, broker.body = p.UNAVAILABLE, setup_failed(config.stateDir)
    r = falcon.testing.simulate_post(app, "/2015-03-31/functions/echo/invocations", body=b"{}")
    assert r.headers["x-amzn-ErrorType"] == "ResourceNotReadyException"
    assert config.stateDir not in r.text and "/healthz" in r.json["message"]


def test_an_unknown_level_is_a_config_error_naming_the_field(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="server.errorDetail: expected one of: full"):
        make(tmp_path, monkeypatch, "verbose")


def test_examples_and_development_use_full():
    examples = yaml.safe_load((ROOT / "examples" / "host-config.yaml").read_text())
    assert examples["server"]["errorDetail"] == "full"


def test_redact_replaces_the_longest_known_path_first():
    detail = ErrorDetail("message", [("/srv", "<config>"), ("/srv/fns/echo", "."),
                                     ("/var/lib/sora", "<stateDir>"), ("/", "x")])
    assert detail.redact("at /srv/fns/echo/index.js and /srv/host-config.yaml, "
                         "/var/lib/sora/setup/echo.log") == (
        "at ./index.js and <config>/host-config.yaml, <stateDir>/setup/echo.log")
    # Only whole names: another folder that starts the same is the config's, not the function.
    assert detail.redact("/srv/fns/echo-data/x and /srv/fns/echo.bak, in /srv/fns/echo.") == (
        "<config>/fns/echo-data/x and <config>/fns/echo.bak, in ..")


def test_the_worker_checks_a_function_url_result_as_the_gateway_would():
    assert checked_url_result(b'{"statusCode":200,"body":"hi"}') == (
        p.OK, b'{"statusCode":200,"body":"hi"}')
    status, body = checked_url_result(b'{"statusCode":"teapot"}')
    assert status == p.FUNCTION_ERROR
    assert json.loads(body)["errorType"] == "Sora.InvalidResponse"
    assert "teapot" in json.loads(body)["errorMessage"]


def test_a_container_the_engine_could_not_make_is_not_described_to_callers():
    """The engine's words name host folders (the secrets', its storage), its socket, a
    worker's pid: the operator's, not a caller's."""
    detail = ErrorDetail("message", [])
    engine_text = ("could not start container: error mounting \"/dev/shm/sora-secrets-fn-12-x\" "
                   "to rootfs at \"/var/lib/docker/overlay2/abc/merged/run/sora-secrets\"")
    shown = detail.message("fn", "Sora.ContainerError", engine_text)
    assert "/dev/shm" not in shown and "overlay2" not in shown and "fn" in shown
