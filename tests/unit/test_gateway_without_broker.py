"""The gateway's answers when nothing can take a call (issue 14, point 8; issue 16: no broker,
a control plane and workers reached directly), through falcon.testing with a fake invocation
client: never a 404 for a configured function, a fast 503 with Retry-After instead of a wait,
and the answers the client makes itself (its FIFO full or timed out, a lost worker) mapped to
their HTTP status."""
import falcon.testing
import pytest
import yaml

from sora import protocol as p
from sora.config import load_host_config
from sora.gateway.app import create_app
from sora.messaging.client import BrokerTimeout, BrokerUnavailable
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

    def add_members_listener(self, listener):
        self.members_listener = listener   # MEMBERS, for a test to feed (sora.function_table)

    async def members_known(self, timeout=2.0):
        return True


@pytest.fixture
def config(tmp_path):
    fn = write_function(tmp_path / "fns", "known", {"index.js": "exports.handler = async () => 1;"},
                        name="known")
    path = tmp_path / "host-config.yaml"
    path.write_text(yaml.safe_dump({"functionPaths": [str(fn)], "stateDir": str(tmp_path / "state"),
                                    "server": {"httpPort": 1, "bind": "127.0.0.1"}}))
    return load_host_config(str(path))


ROUTES = ["/functions/{}", "/2015-03-31/functions/{}/invocations"]


def post(config, answer, route, name="known"):
    app = create_app(config, FakeClient(answer))
    return falcon.testing.TestClient(app).simulate_post(route.format(name), body="{}")


@pytest.mark.parametrize("route", ROUTES)
def test_a_control_plane_that_does_not_know_a_configured_function_is_a_503_not_a_404(config,
                                                                                    route):
    r = post(config, [p.NOT_FOUND, p.error_body("ResourceNotFoundException",
                                                "Function not found: known")], route)
    assert r.status_code == 503 and r.headers["Retry-After"], r.text
    assert r.json["errorType"] in ("Sora.BrokerUnavailable", "ServiceException")
    assert "/" not in r.json["errorMessage"].replace("stopping or restarting", "")


@pytest.mark.parametrize("route", ROUTES)
def test_no_control_plane_and_no_worker_is_a_503_with_retry_after(config, route):
    r = post(config, BrokerUnavailable(), route)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
    assert r.json["errorType"] in ("Sora.BrokerUnavailable", "ServiceException")


def test_an_unknown_function_is_still_a_404(config):
    answer = [p.NOT_FOUND, p.error_body("ResourceNotFoundException", "Function not found: x")]
    assert post(config, answer, ROUTES[0], "nobody").status_code == 404
    assert post(config, answer, ROUTES[1], "nobody").status_code == 404


@pytest.mark.parametrize("status,http,error_type", [
    (p.THROTTLED, 429, "TooManyRequestsException"),   # the client's FIFO is full
    (p.NO_CAPACITY, 503, "Sora.NoCapacity"),           # nothing freed up within maxWait
])
def test_the_clients_own_refusals_carry_retry_after(config, status, http, error_type):
    r = post(config, [status, p.error_body(error_type, "no room")], ROUTES[0])
    assert r.status_code == http and r.headers["Retry-After"] == "1", r.text
    r = post(config, [status, p.error_body(error_type, "no room")], ROUTES[1])
    assert r.status_code == 429 and r.headers["Retry-After"] == "1", r.text


def test_an_unavailable_function_is_a_503_on_its_url(config):
    r = post(config, [p.UNAVAILABLE, p.error_body("Sora.FunctionUnavailable",
                                                  "Function known cannot serve: x")], ROUTES[0])
    assert r.status_code == 503 and r.json["errorType"] == "Sora.FunctionUnavailable"


def test_a_lost_worker_is_a_502_worker_lost(config):
    answer = [p.WORKER_LOST, p.error_body("Sora.WorkerLost", "The worker running known was "
                                          "lost (its connection dropped)")]
    r = post(config, answer, ROUTES[0])
    assert r.status_code == 502 and r.json["errorType"] == "Sora.WorkerLost", r.text
    r = post(config, answer, ROUTES[1])   # the function ran and failed: 200, as Lambda does
    assert r.status_code == 200 and r.headers["X-Amz-Function-Error"] == "Unhandled"


def test_no_answer_in_time_is_a_504(config):
    r = post(config, BrokerTimeout(), ROUTES[0])
    assert r.status_code == 504 and r.json["errorType"] == "Sora.GatewayTimeout"
