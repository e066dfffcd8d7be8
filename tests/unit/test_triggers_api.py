"""`GET /api/functions/{name}/triggers`, `POST /api/functions/{name}/triggers/{index}/fire` and
/healthz's `triggers` (issue 18 point 5) through falcon.testing, with the trigger service faked:
what is shown when it answers and when it does not, each last firing's run status from the
queue and the records, the checks before a firing reaches the service, and who may call them
(the attacker's tests: another function's key sees and fires nothing of this one's, a key path
out of the folder is refused). On both store backends: the last firings and run statuses come
from the host's store, queue.db and sora.db or the PostgreSQL database."""
from __future__ import annotations

import json
import time

import falcon.testing
import pytest
import yaml

from sora.config import load_host_config
from sora.function_table import FunctionTable
from sora.gateway import app as gateway_app
from sora.gateway import triggers_api
from sora.gateway.triggers_api import ServiceDown, key_problem, refused_by_service
from sora.store import backend, queue, records
from sora.triggers import listing, schedule
from tests.support import write_function
from tests.unit.test_gateway_app import FakeBroker, FakeIntake

ADMIN = "admin-key-0123456789abcdef"
ECHO_KEY = "echo-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"


class FakeService:
    """The trigger service's control socket: `answers` per op (a dict, or ServiceDown)."""

    def __init__(self):
        self.answers: dict = {}
        self.asked: list[tuple[str, dict]] = []

    async def ask(self, op, body, wait=triggers_api.SERVICE_WAIT):
        self.asked.append((op, body))
        answer = self.answers.get(op, ServiceDown())
        if isinstance(answer, Exception):
            raise answer
        return answer


TRIGGERS_PROCESS = {"kind": "triggers", "state": "RUNNING", "reason": "started", "pid": 7,
                    "restarts": 0, "since": 1.0}


class Health(FakeBroker):
    """The control plane's /healthz: the main host's has the `triggers` process, a joined
    host's (`joined`) has none."""
    joined = False

    async def status(self, request_id, timeout=3.0):
        health = {"status": "ok", "functions": {}}
        if not self.joined:
            health["triggers"] = dict(TRIGGERS_PROCESS)
        return json.dumps(health).encode()


@pytest.fixture
def host(tmp_path, monkeypatch, store_backend):
    """A host with `echo` (http, a schedule, a file trigger) and `other` (http only), API keys
    for admin, for echo only and for other only, and the fake service."""
    fns = tmp_path / "fns"
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    handler = {"index.js": "exports.handler = async (e) => e;"}
    dirs = [write_function(fns, "echo", handler, name="echo", trigger=[
                "http", {"schedule": "rate(1 minute)"},
                {"file": {"path": str(inbox), "pattern": "*.csv"}},
                {"schedule": "cron(0 9 * * ? *)", "timezone": "Europe/Paris",
                 "enabled": False}]),
            write_function(fns, "other", handler, name="other")]
    spec = {"functionPaths": [str(d) for d in dirs], "server": {"httpPort": 8080},
            "stateDir": str(tmp_path / "state"), "store": store_setting(store_backend),
            "auth": {"apiKeys": [{"name": "ops", "key": ADMIN, "scopes": ["admin"]},
                                 {"name": "echo", "key": ECHO_KEY, "scopes": ["invoke:echo"]},
                                 {"name": "other", "key": OTHER_KEY,
                                  "scopes": ["invoke:other"]}]}}
    (tmp_path / "host-config.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setattr(gateway_app, "EventIntake", FakeIntake)
    service = FakeService()
    monkeypatch.setattr(gateway_app, "TriggerService", lambda state_dir: service)
    config = load_host_config(str(tmp_path / "host-config.yaml"))
    broker = Health()
    client = falcon.testing.TestClient(gateway_app.create_app(config, broker))
    client.broker = broker
    client.service = service
    client.state_dir = config.stateDir
    client.store = config.store
    client.config = config
    client.inbox = str(inbox)
    return client


def store_setting(store) -> object:
    """host-config.yaml's `store:` for a StoreConfig."""
    return "sqlite" if store.kind == "sqlite" else {"url": store.url}


def connections(store, state_dir: str):
    """(the queue's, the records') connections to the store."""
    return (backend.connect(store, state_dir, "queue"),
            backend.connect(store, state_dir, "records"))


def as_key(key):
    return {"Authorization": f"Bearer {key}"}


def status_entry(index, kind, **extra):
    return {"index": index, "kind": kind, "enabled": True, "state": "active", "detail": None,
            "next": [], "lastFiring": None, **extra}


def test_the_services_entries_with_http_and_each_runs_status(host):
    q, r = connections(host.store, host.state_dir)
    queue.enqueue(q, [("r-queued", "echo", "schedule:1", b"{}", time.time())])
    records.commit(r, [
        ("r-ok", "echo", "$LATEST", "schedule:1", time.time(), 3.0, "ok", None, 0, None, 60,
         None)], [])
    host.service.answers["status"] = {"scheduler": {"state": "running"}, "functions": {
        "echo": [
            status_entry(1, "schedule", expression="rate(1 minute)", timezone="UTC",
                         next=["a", "b", "c"], lastFiring={"requestId": "r-ok", "due": 1}),
            status_entry(2, "file", watching={"path": host.inbox}, lastFiring={
                "requestId": "r-queued", "due": 2}),
            status_entry(3, "schedule", enabled=False, state="disabled",
                         lastFiring={"requestId": None, "outcome": "skipped"})]}}
    body = host.simulate_get("/api/functions/echo/triggers", headers=as_key(ADMIN)).json
    assert body["function"] == "echo" and body["service"] == "up"
    assert [e["index"] for e in body["triggers"]] == [0, 1, 2, 3]
    assert body["triggers"][0] == {"index": 0, "kind": "http", "enabled": True,
                                   "state": "active", "detail": None, "url": "/functions/echo",
                                   "next": [], "lastFiring": None}
    assert body["triggers"][1]["lastFiring"]["status"] == "ok"
    assert body["triggers"][2]["lastFiring"]["status"] == "queued"
    assert body["triggers"][3]["lastFiring"]["status"] is None
    assert host.service.asked == [("status", {"function": "echo"})]


def test_a_trigger_the_service_does_not_run_yet_comes_from_the_config(host):
    host.service.answers["status"] = {"functions": {}}
    body = host.simulate_get("/api/functions/echo/triggers", headers=as_key(ECHO_KEY)).json
    states = [(e["kind"], e["state"]) for e in body["triggers"]]
    assert states == [("http", "active"), ("schedule", "unknown"), ("file", "unknown"),
                      ("schedule", "disabled")]


def test_a_joined_hosts_function_says_its_triggers_do_not_run_here(host, monkeypatch):
    host.service.answers["status"] = {"functions": {}}
    monkeypatch.setattr(FunctionTable, "is_remote", lambda self, name: name == "echo")
    body = host.simulate_get("/api/functions/echo/triggers", headers=as_key(ADMIN)).json
    assert body["triggers"][1]["state"] == "unknown"
    assert body["triggers"][1]["detail"] == listing.ELSEWHERE


def test_a_watcher_that_failed_to_start_still_shows_what_it_watches(host):
    host.service.answers["status"] = {"functions": {"echo": [
        status_entry(2, "file", state="error", detail="ModuleNotFoundError: ...")]}}
    body = host.simulate_get("/api/functions/echo/triggers", headers=as_key(ADMIN)).json
    files = body["triggers"][2]
    assert files["state"] == "error"
    assert files["watching"]["path"] == host.inbox and files["watching"]["pattern"] == "*.csv"


def test_when_the_service_does_not_answer_the_config_and_local_next_times(host):
    before = time.time()
    body = host.simulate_get("/api/functions/echo/triggers", headers=as_key(ADMIN)).json
    assert body["service"] == "down"
    http, rate, files, paris = body["triggers"]
    assert http["kind"] == "http"
    assert rate["state"] == "down" and rate["detail"] == listing.DOWN_DETAIL
    assert rate["expression"] == "rate(1 minute)" and len(rate["next"]) == 3
    # No persisted anchor (the service never saw it): every minute from now.
    first = schedule.iso(before + 60)[:16]
    assert rate["next"][0][:16] in (first, schedule.iso(before + 61)[:16])
    assert files["watching"] == {"path": host.inbox, "pattern": "*.csv", "recursive": False,
                                 "events": ["created"]}
    assert paris["state"] == "disabled" and paris["next"] == []


def test_when_the_service_does_not_answer_the_stored_anchor_and_last_firing(host):
    """What a trigger service stored (on this host or, on a shared store, any other) shows:
    the rate()'s anchor sets the next times, the last firing its run status."""
    from sora.store import triggers as trigger_store
    fn = next(f for f in host.config.functions if f.name == "echo")
    key = fn.schedules[0].key
    q, _ = connections(host.store, host.state_dir)
    anchor = float(int(time.time()) // 60 * 60 - 3600 + 17)   # :17 past a minute, an hour ago
    trigger_store.first_seen(q, "echo", key, anchor)
    rid = trigger_store.fire(q, "echo", "schedule:1", key, b"{}", anchor + 60, anchor + 60,
                             None, once=True)
    body = host.simulate_get("/api/functions/echo/triggers", headers=as_key(ADMIN)).json
    rate = body["triggers"][1]
    assert rate["state"] == "down"
    assert rate["next"][0][17:19] == "17"                  # anchored: :17 past each minute
    assert rate["lastFiring"]["requestId"] == rid
    assert (rate["lastFiring"]["due"], rate["lastFiring"]["status"]) == (anchor + 60, "queued")


def test_an_unknown_function_is_a_404_in_json(host):
    for path in ("/api/functions/nope/triggers", "/api/functions/nope:1/triggers"):
        resp = host.simulate_get(path, headers=as_key(ADMIN))
        assert resp.status_code == 404
        assert resp.json["errorType"] == "ResourceNotFoundException"
    resp = host.simulate_post("/api/functions/nope/triggers/1/fire", headers=as_key(ADMIN))
    assert resp.status_code == 404
    assert host.service.asked == []


def test_fire_passes_the_firing_to_the_service(host):
    host.service.answers["fire"] = {"requestIds": ["r-1"]}
    resp = host.simulate_post("/api/functions/echo/triggers/1/fire", headers=as_key(ECHO_KEY))
    assert resp.status_code == 202 and resp.json == {"requestIds": ["r-1"]}
    resp = host.simulate_post("/api/functions/echo/triggers/2/fire", headers=as_key(ADMIN),
                              json={"key": "in/red flower.csv"})
    assert resp.status_code == 202
    assert host.service.asked == [("fire", {"function": "echo", "index": 1}),
                                  ("fire", {"function": "echo", "index": 2,
                                            "key": "in/red flower.csv"})]


@pytest.mark.parametrize("index, body, status, words", [
    ("x", None, 400, "index: expected the trigger's position"),
    ("+1", None, 400, "index: expected the trigger's position"),
    ("1_0", None, 400, "index: expected the trigger's position"),
    ("%D9%A1", None, 400, "index: expected the trigger's position"),
    ("9", None, 404, "Function echo has no trigger 9; its triggers: 0 (http), 1 (schedule)"),
    ("0", None, 400, "trigger 0 of echo is http: call its function URL"),
    ("1", {"key": "a.csv"}, 400, "key: only a file trigger takes a key"),
    ("2", {"key": "../outside.csv"}, 400, "without '..'"),
    ("2", {"key": "in/../../outside.csv"}, 400, "without '..'"),
    ("2", {"key": "/etc/shadow"}, 400, "not an absolute one"),
    ("2", {"key": "a\x00b"}, 400, "NUL"),
    ("2", {"key": ""}, 400, "non-empty string"),
    ("2", {"key": ["a"]}, 400, "non-empty string"),
    ("2", {"path": "a.csv"}, 400, "body: expected"),
    ("2", [1], 400, "body: expected"),
])
def test_what_never_reaches_the_service(host, index, body, status, words):
    resp = host.simulate_post(f"/api/functions/echo/triggers/{index}/fire",
                              headers=as_key(ADMIN), json=body)
    assert resp.status_code == status, resp.text
    assert words in resp.json["errorMessage"]
    assert host.service.asked == []


def test_a_body_that_is_not_json_is_refused(host):
    resp = host.simulate_post("/api/functions/echo/triggers/2/fire", headers={
        **as_key(ADMIN), "Content-Type": "application/json"}, body=b"{key")
    assert resp.status_code == 400


def test_the_services_refusal_is_passed_on(host):
    host.service.answers["fire"] = {"error": "no file in.csv in /srv/inbox",
                                    "errorType": "ResourceNotFoundException"}
    resp = host.simulate_post("/api/functions/echo/triggers/2/fire", headers=as_key(ADMIN),
                              json={"key": "in.csv"})
    assert resp.status_code == 404
    assert resp.json == {"errorType": "ResourceNotFoundException",
                         "errorMessage": "no file in.csv in /srv/inbox"}


def test_a_service_that_does_not_answer_is_a_503_and_nothing_is_enqueued(host):
    resp = host.simulate_post("/api/functions/echo/triggers/1/fire", headers=as_key(ADMIN))
    assert resp.status_code == 503
    assert resp.json["errorType"] == "Sora.TriggerServiceUnavailable"
    assert resp.headers["Retry-After"] == "1"


def test_another_functions_key_cannot_see_or_fire_this_functions_triggers(host):
    host.service.answers["fire"] = {"requestIds": ["r-1"]}
    host.service.answers["status"] = {"functions": {}}
    for key in (OTHER_KEY, None, "not-a-key"):
        headers = as_key(key) if key else {}
        seen = host.simulate_get("/api/functions/echo/triggers", headers=headers)
        fired = host.simulate_post("/api/functions/echo/triggers/1/fire", headers=headers)
        assert seen.status_code == fired.status_code == (403 if key == OTHER_KEY else 401)
    assert host.service.asked == []
    # Its own function's, yes.
    assert host.simulate_get("/api/functions/other/triggers",
                             headers=as_key(OTHER_KEY)).status_code == 200
    assert host.simulate_get("/api/functions/echo/triggers",
                             headers=as_key(ECHO_KEY)).status_code == 200
    assert [op for op, _ in host.service.asked] == ["status", "status"]


def test_healthz_shows_the_scheduler_and_each_watcher_to_an_admin(host):
    host.service.answers["status"] = {"scheduler": {"state": "running", "since": 5.0},
                                      "functions": {"echo": [
                                          status_entry(1, "schedule"),
                                          status_entry(3, "schedule", state="disabled"),
                                          status_entry(2, "file", state="error",
                                                       detail="gone",
                                                       watching={"path": host.inbox})]}}
    body = host.simulate_get("/healthz", headers=as_key(ADMIN)).json
    assert body["triggers"] == {
        **TRIGGERS_PROCESS, "scheduler": {"state": "running", "since": 5.0},
        "schedules": {"active": 1, "disabled": 1},
        "watchers": [{"function": "echo", "index": 2, "path": host.inbox, "state": "error",
                      "detail": "gone"}]}
    assert host.service.asked[-1] == ("status", {})
    assert host.simulate_get("/healthz").json == {"status": "ok"}
    assert host.simulate_get("/healthz", headers=as_key(ECHO_KEY)).json == {"status": "ok"}
    del host.service.answers["status"]
    body = host.simulate_get("/healthz", headers=as_key(ADMIN)).json
    assert body["triggers"] == {**TRIGGERS_PROCESS, "scheduler": {"state": "down"},
                                "schedules": {}, "watchers": []}


def test_healthz_of_a_joined_host_has_no_triggers(host):
    host.broker.joined = True
    assert "triggers" not in host.simulate_get("/healthz", headers=as_key(ADMIN)).json


def test_key_problems():
    assert key_problem("a/b c+d.csv") is None
    assert key_problem("..hidden") is None and key_problem("a..b") is None
    for bad in ("..", "a/..", "/a", "", None, 3, "a\x00", "x" * 2000):
        assert key_problem(bad), bad


def test_the_services_refusals_and_their_statuses():
    assert refused_by_service({"requestIds": ["r-1"]}) is None
    error = refused_by_service({"error": "bad request: 'function'", "errorType": "InvalidRequest"})
    assert (error.status, error.error_type, str(error)) == (400, "InvalidRequest",
                                                            "bad request: 'function'")
    assert refused_by_service({"error": "x", "errorType": "ResourceNotFoundException"}
                              ).status == 404
    assert refused_by_service({"error": "x", "errorType": "ResourceConflictException"}
                              ).status == 409
    full = refused_by_service({"requestIds": [], "error": "not stored",
                               "errorType": "TooManyRequestsException"})
    assert full.status == 429 and full.headers == {"Retry-After": "1"}
    assert refused_by_service({"error": "?"}).status == 400


def test_run_status_prefers_the_queue_then_the_record(tmp_path, store_backend):
    q, r = connections(store_backend, str(tmp_path))
    assert listing.run_status(q, r, None) is None
    assert listing.run_status(q, r, "r-none") is None
    records.commit(r, [("r-1", "f", "$LATEST", "file:1", 1.0, 3.0, "timeout", "Sora.Timeout",
                        0, "late", None, None)], [])
    assert listing.run_status(q, r, "r-1") == "timeout"
    queue.enqueue(q, [("r-1", "f", "file:1", b"{}", 1.0)])   # retried: queued again
    assert listing.run_status(q, r, "r-1") == "queued"
