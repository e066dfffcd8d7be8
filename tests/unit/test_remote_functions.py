"""Functions known only from MEMBERS (issue 16 point 3): a function only a joined host serves
comes with its config (its host's config snapshot entry), and the gateways' routes, auth, caps
and waits, the records API and the dispatcher take it from the one table of functions
(sora.function_table), through falcon.testing and the dispatcher with a fake client whose
MEMBERS the test writes. A function both local and remote runs by the local config."""
import asyncio
import dataclasses
import json
import time

import falcon.testing
import pytest
import yaml

from sora import protocol as p
from sora.config import ClusterConfig, EventInvokeConfig, load_function_config, load_host_config
from sora.events.dispatcher import Dispatcher
from sora.function_table import FunctionTable
from sora.gateway import app as gateway_app
from sora.messaging.client import BROKER_SLACK
from sora.store import queue
from sora.store.db import connect_queue
from tests.support import write_function
from tests.unit.test_gateway_app import FakeIntake
from tests.unit.test_queue import accept

ADMIN = "admin-key-0123456789abcdef"
INVOKER = "invoke-key-0123456789abcdef"


class MembersClient:
    """A fake invocation client: MEMBERS as the test gives them, answers as it sets them."""

    def __init__(self):
        self.listeners = []
        self.calls: list[tuple[str, float, bytes]] = []
        self.answer = [p.OK, b'"done"']
        self.members_version = None

    def add_members_listener(self, listener):
        self.listeners.append(listener)

    async def members_known(self, timeout=2.0):
        return self.members_version is not None

    def start(self):
        pass

    def members(self, **functions):
        """functions: name -> config entry (None: served, no config)."""
        self.members_version = (self.members_version or 0) + 1
        table = {name: {"available": True, "reason": "", "maxQueued": 100, "maxWait": 3.0,
                        "workers": [{"id": f"{name}/1", "endpoint": "tcp://10.0.0.2:4000",
                                     "host": "h2", "serverKey": "k" * 40}],
                        **({"config": entry} if entry is not None else {})}
                 for name, entry in functions.items()}
        for listener in self.listeners:
            listener({"version": self.members_version, "functions": table})

    async def invoke(self, function, request_id, payload, timeout, meta=p.TRIGGER_HTTP):
        self.calls.append((function, timeout, meta))
        return self.answer


def remote_entry(tmp_path, name, **config) -> dict:
    """What a joined host sends for one of its functions: `dataclasses.asdict` of its config
    (read here from a folder this host does not serve)."""
    folder = write_function(tmp_path / "elsewhere", name,
                            {"index.js": "exports.handler = async () => 1;"}, name=name,
                            **config)
    return json.loads(json.dumps(dataclasses.asdict(load_function_config(str(folder)))))


@pytest.fixture
def gateway(tmp_path, monkeypatch):
    local = write_function(tmp_path / "fns", "echo", {"index.js": ""}, name="echo")
    (tmp_path / "host-config.yaml").write_text(yaml.safe_dump({
        "functionPaths": [str(local)], "server": {"httpPort": 8080},
        "stateDir": str(tmp_path / "state"),
        "auth": {"apiKeys": [{"name": "ops", "key": ADMIN, "scopes": ["admin"]},
                             {"name": "caller", "key": INVOKER, "scopes": ["invoke"]}]}}))
    intakes = []
    monkeypatch.setattr(gateway_app, "EventIntake",
                        lambda *args: intakes.append(FakeIntake(*args)) or intakes[-1])
    client = MembersClient()
    app = gateway_app.create_app(load_host_config(str(tmp_path / "host-config.yaml")), client)
    return falcon.testing.TestClient(app), client, intakes[0]


def test_a_function_only_a_joined_host_serves_takes_its_auth_waits_and_caps_from_members(
        gateway, tmp_path):
    http, client, intake = gateway
    # Not known yet: not public, and the Invoke API does not know it.
    assert http.simulate_post("/functions/far", body="{}").status_code == 401
    r = http.simulate_post("/2015-03-31/functions/far/invocations", body="{}",
                           headers={"X-Api-Key": INVOKER})
    assert r.status_code == 404, r.text
    client.members(far=remote_entry(tmp_path, "far", auth="none", timeout=7,
                                    eventInvoke={"maxQueuedEvents": 5, "maxQueuedMB": 2}))
    # `auth: none` on its host: its function URL is public here too.
    r = http.simulate_post("/functions/far", body="{}")
    assert r.status_code == 200, r.text
    assert client.calls[-1][:2] == ("far", 7 * 2 + BROKER_SLACK)   # its timeout's wait
    r = http.simulate_post("/2015-03-31/functions/far/invocations", body="{}",
                           headers={"X-Api-Key": INVOKER})
    assert r.status_code == 200 and r.json == "done", r.text
    # An event is stored under its own caps.
    r = http.simulate_post("/functions/far", body="{}",
                           headers={"X-Sora-Invocation-Type": "Event"})
    assert r.status_code == 202, r.text
    assert intake.accepted[-1][0] == "far"
    # The records API knows it (its records come to this host's store over tcp).
    for path in ("/api/functions/far/logs", "/api/functions/far/invocations",
                 "/api/functions/far/dlq"):
        r = http.simulate_get(path, headers={"X-Api-Key": ADMIN})
        assert r.status_code == 200, (path, r.text)
    assert http.simulate_get("/api/functions/nobody/logs",
                             headers={"X-Api-Key": ADMIN}).status_code == 404
    # Its host left: no longer in MEMBERS, so the client knows it not; its callers are told
    # to come back (503 Retry-After), not that it never existed.
    client.members()
    client.answer = [p.NOT_FOUND, p.error_body("ResourceNotFoundException",
                                               "Function not found: far")]
    r = http.simulate_post("/functions/far", body="{}")
    assert r.status_code == 503 and r.headers["Retry-After"], r.text
    assert "No host that serves function far" in r.json["errorMessage"]
    # A name known nowhere is still a 404.
    r = http.simulate_post("/2015-03-31/functions/nobody/invocations", body="{}",
                           headers={"X-Api-Key": INVOKER})
    assert r.status_code == 404


def test_the_caps_of_a_remote_function_reach_the_intake(tmp_path):
    config = load_host_config_without_functions(tmp_path)
    table = FunctionTable(config, client := MembersClient())
    client.members(far=remote_entry(tmp_path, "far", eventInvoke={"maxQueuedEvents": 5,
                                                                  "maxQueuedMB": 2}))
    assert table.event_caps("far") == (5, 2 << 20)
    assert table.names() == ["own", "far"] and table.is_remote("far")
    assert not table.is_remote("own")


def test_a_function_both_local_and_remote_runs_by_the_local_config(gateway, tmp_path):
    http, client, _ = gateway
    client.members(echo=remote_entry(tmp_path, "echo", auth="none", timeout=99))
    # The joined host's `auth: none` does not open this host's own function.
    assert http.simulate_post("/functions/echo", body="{}").status_code == 401
    r = http.simulate_post("/functions/echo", body="{}", headers={"X-Api-Key": INVOKER})
    assert r.status_code == 200, r.text
    assert client.calls[-1][1] != 99 * 2 + BROKER_SLACK


def test_an_unusable_remote_config_is_logged_once_and_leaves_the_function_closed(gateway,
                                                                                caplog):
    http, client, _ = gateway
    for _ in range(2):
        client.members(odd={"name": "odd", "auth": "none"})   # too little to run by
    assert http.simulate_post("/functions/odd", body="{}").status_code == 401
    told = [r for r in caplog.records if "function odd cannot be used" in r.getMessage()]
    assert len(told) == 1


def load_host_config_without_functions(tmp_path, **extra):
    """A host config whose one function, `own`, is none of the test's."""
    own = write_function(tmp_path / "fns", "own", {"index.js": ""}, name="own")
    (tmp_path / "host-config.yaml").write_text(yaml.safe_dump({
        "functionPaths": [str(own)], "server": {"httpPort": 8080},
        "stateDir": str(tmp_path / "state"), **extra}))
    return load_host_config(str(tmp_path / "host-config.yaml"))


def test_the_dispatcher_runs_the_events_of_a_function_a_joined_host_serves(tmp_path):
    config = load_host_config_without_functions(tmp_path)
    client = MembersClient()
    d = Dispatcher(config, client)
    d.conn = connect_queue(config.stateDir)
    client.members(far=remote_entry(tmp_path, "far", timeout=4,
                                    eventInvoke={"maxConcurrency": 1}))
    assert d.functions.names() == ["own", "far"]
    for rid in ("e1", "e2"):
        accept(d.conn, rid, fn="far")

    async def run_due():
        d._start_due(client, "far", time.time())
        assert d.running["far"] == 1   # its own maxConcurrency
        await asyncio.gather(*d.tasks)

    asyncio.run(run_due())
    asyncio.run(run_due())
    assert [c[:2] for c in client.calls] == [("far", 4 * 2 + BROKER_SLACK)] * 2
    assert queue.find_event(d.conn, "e1") is None and queue.find_event(d.conn, "e2") is None
    # Its host gone (the client answers NOT_FOUND): the event waits, uncounted.
    accept(d.conn, "e3", fn="far")
    client.members()
    client.answer = [p.NOT_FOUND, p.error_body("ResourceNotFoundException", "not found")]
    asyncio.run(run_due())
    after = queue.find_event(d.conn, "e3")
    assert after["state"] == "queued" and after["attempts"] == 0, after


def test_on_a_cluster_an_unknown_functions_events_wait_out_the_default_age(tmp_path):
    config = dataclasses.replace(load_host_config_without_functions(tmp_path),
                                 cluster=ClusterConfig(name="main",
                                                       listen="tcp://127.0.0.1:7700"))
    client = MembersClient()
    d = Dispatcher(config, client)
    d.conn = connect_queue(config.stateDir)
    now = time.time()
    max_age = EventInvokeConfig().maximumEventAgeInSeconds
    accept(d.conn, "recent", fn="away", at=now - 60)
    accept(d.conn, "ancient", fn="away", at=now - max_age - 60)
    d._bury_orphans("away", now)   # no MEMBERS yet: nothing is judged
    assert queue.find_event(d.conn, "ancient")["state"] == "queued"
    client.members()
    d._bury_orphans("away", now)   # perhaps a joined host's, away now: only the too old go
    assert queue.find_event(d.conn, "recent")["state"] == "queued"
    ancient = queue.find_event(d.conn, "ancient")
    assert ancient["state"] == "dead" and ancient["deadReason"] == "EventAgeExceeded"
    # A single host (no cluster.listen) dead-letters an unknown function's events at once.
    d.config = load_host_config_without_functions(tmp_path)
    d._bury_orphans("away", now)
    recent = queue.find_event(d.conn, "recent")
    assert recent["state"] == "dead" and recent["deadReason"] == "FunctionNotFound"
