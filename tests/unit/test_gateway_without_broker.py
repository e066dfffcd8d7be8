"""The gateway's answers when no broker can answer (issue 14, point 8), through
falcon.testing with a fake broker client: never a 404 for a configured function, and a
fast 503 with Retry-After instead of a wait."""
import falcon.testing
import pytest
import yaml

from sora import protocol as p
from sora.config import load_host_config
from sora.gateway.app import create_app
from sora.messaging.client import BrokerUnavailable
from tests.support import write_function


class FakeClient:
    def __init__(self, answer):
        self.answer = answer
        self.calls = []

    async def invoke(self, function, request_id, payload, timeout, meta=p.TRIGGER_HTTP):
        self.calls.append(function)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    async def status(self, request_id, timeout=3.0):
        raise BrokerUnavailable()


@pytest.fixture
def config(tmp_path):
    fn = write_function(tmp_path / "fns", "known", {"index.js": "exports.handler = async () => 1;"},
                        name="known")
    path = tmp_path / "host-config.yaml"
    path.write_text(yaml.safe_dump({"functionPaths": [str(fn)], "stateDir": str(tmp_path / "state"),
                                    "server": {"httpPort": 1, "bind": "127.0.0.1"}}))
    return load_host_config(str(path))


ROUTES = ["/functions/{}", "/2015-03-31/functions/{}/invocations"]


@pytest.mark.parametrize("route", ROUTES)
def test_a_broker_that_does_not_know_a_configured_function_is_a_503_not_a_404(config, route):
    app = create_app(config, FakeClient([p.NOT_FOUND, p.error_body(
        "ResourceNotFoundException", "Function not found: known")]))
    r = falcon.testing.TestClient(app).simulate_post(route.format("known"), body="{}")
    assert r.status_code == 503 and r.headers["Retry-After"], r.text
    assert r.json["errorType"] in ("Sora.BrokerUnavailable", "ServiceException")
    assert "/" not in r.json["errorMessage"].replace("stopping or restarting", "")


@pytest.mark.parametrize("route", ROUTES)
def test_no_broker_connected_is_a_503_with_retry_after(config, route):
    app = create_app(config, FakeClient(BrokerUnavailable()))
    r = falcon.testing.TestClient(app).simulate_post(route.format("known"), body="{}")
    assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
    assert r.json["errorType"] in ("Sora.BrokerUnavailable", "ServiceException")


def test_an_unknown_function_is_still_a_404(config):
    app = create_app(config, FakeClient([p.NOT_FOUND, p.error_body(
        "ResourceNotFoundException", "Function not found: nobody")]))
    client = falcon.testing.TestClient(app)
    assert client.simulate_get("/functions/nobody").status_code == 404
    assert client.simulate_post("/2015-03-31/functions/nobody/invocations",
                                body="{}").status_code == 404
