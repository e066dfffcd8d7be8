"""Two hosts on 127.0.0.1 (two state dirs, no network namespaces): a main host with
`cluster.listen` and one started with `sora-supervisor join`. Calls reach the joined host's
workers end to end through the main host's control plane (a client holding the main host's
keys, as its gateways do), records come back to the main host's store, /healthz shows both
hosts, and a kill -9 of the main supervisor stops no call the joined worker is running.
(tests/integration/test_cluster.py does the same across real network boundaries.)"""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import uuid

import pytest

from sora import protocol as p
from sora.cluster import keys as k
from sora.messaging.client import InvocationClient
from tests.support import SoraHost, free_port_pair, wait_for, write_function

APP = """
import json, os, time

def handler(event, context):
    time.sleep(float((event or {}).get("sleep", 0)))
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "host.txt")) as fh:
        return {"host": fh.read(), "pid": os.getpid()}
"""


def function(base, name, host):
    return write_function(base, name, {"app.py": APP, "host.txt": host}, name=name,
                          language="python", entrypoint="app.py", timeout=20)


@pytest.fixture
def cluster(tmp_path):
    main_keys = k.init_keys(str(tmp_path / "main-keys"))
    joined_keys = k.init_keys(str(tmp_path / "joined-keys"))
    k.add_allowed(main_keys.directory, os.path.join(joined_keys.directory, k.HOST_CERT), "h2")
    k.add_allowed(joined_keys.directory, os.path.join(main_keys.directory, k.HOST_CERT), "main")
    listen = f"tcp://127.0.0.1:{free_port_pair()}"
    (tmp_path / "main").mkdir()
    (tmp_path / "joined").mkdir()
    main = SoraHost(tmp_path / "main", [function(tmp_path / "main" / "fns", "both", "main")],
                    https=False,
                    extra={"cluster": {"listen": listen, "keys": main_keys.directory,
                                       "name": "main"}})
    joined = SoraHost(tmp_path / "joined",
                      [function(tmp_path / "joined" / "fns", "both", "h2"),
                       function(tmp_path / "joined" / "fns", "there", "h2")],
                      https=False, command="join",
                      extra={"cluster": {"controlPlane": listen, "advertise": "127.0.0.1",
                                         "keys": joined_keys.directory, "name": "h2"}})
    main.start(["both"])
    try:
        joined.start(ready=lambda: serving(main, "h2", ["both", "there"]))
        yield main, joined, main_keys
    finally:
        joined.stop()
        main.stop()
    assert not joined.leftovers() and not main.leftovers()


def serving(host: SoraHost, name: str, functions: list[str]):
    known = host.health().get("hosts", {}).get(name, {})
    return known.get("state") == "joined" and all(f in known.get("functions", {})
                                                  for f in functions)


def client_of(main: SoraHost, ring) -> InvocationClient:
    """A client of the main host's control plane with its keys, as its gateways are."""
    return InvocationClient(p.control_endpoint(str(main.base / "state")),
                            curve_keys=(ring.public, ring.secret))


async def call(client, function, **event):
    request_id = uuid.uuid4().hex.encode()
    status, body, *_ = await client.invoke(function, request_id, json.dumps(event).encode(),
                                           timeout=60)
    return request_id.decode(), status, json.loads(body) if status == p.OK else body


def stored(main: SoraHost, request_id: str):
    db = sqlite3.connect(main.base / "state" / "sora.db")
    try:
        return db.execute("SELECT function, status FROM invocations WHERE request_id = ?",
                          (request_id,)).fetchone()
    finally:
        db.close()


def test_calls_reach_the_joined_hosts_workers(cluster):
    main, _, ring = cluster
    health = main.health()
    h2 = health["hosts"]["h2"]
    assert h2["address"] == "127.0.0.1" and h2["state"] == "joined"
    assert health["hosts"]["main"]["local"] is True
    assert health["functions"]["there"]["hosts"] == ["h2"]
    assert sorted(health["functions"]["both"]["hosts"]) == ["h2", "main"]

    async def run():
        client = client_of(main, ring)
        try:
            only = await call(client, "there")
            # Concurrent calls go to the worker with the most free credits: both hosts' once
            # the client has the joined worker's window (its CURVE handshake may still be on
            # for the first round).
            seen = set()
            for _ in range(10):
                answers = await asyncio.gather(*(call(client, "both", sleep=0.3)
                                                 for _ in range(8)))
                seen |= {answer[2]["host"] for answer in answers}
                if seen == {"main", "h2"}:
                    break
            return only, seen
        finally:
            client.close()

    (request_id, status, body), seen = asyncio.run(run())
    assert status == p.OK and body["host"] == "h2"
    assert seen == {"main", "h2"}
    # The joined worker's record is in the main host's store (sent over tcp, CURVE).
    assert wait_for(lambda: stored(main, request_id), what="the record") == ("there", "ok")


def test_a_joined_host_that_stops_leaves_and_comes_back(cluster):
    main, joined, _ = cluster
    joined.stop()
    wait_for(lambda: main.health()["hosts"]["h2"]["state"] == "lost", timeout=10,
             what="h2 lost")
    assert "there" not in main.health()["functions"]
    again = joined.restarted()
    again.start(ready=lambda: serving(main, "h2", ["there"]))
    cluster_hosts = main.health()["hosts"]
    assert cluster_hosts["h2"]["state"] == "joined"
    again.stop()


def test_kill9_of_the_main_supervisor_stops_no_call_a_joined_worker_runs(cluster):
    main, _, ring = cluster

    async def run():
        client = client_of(main, ring)
        try:
            await call(client, "there")   # connected to the joined worker
            running = asyncio.ensure_future(call(client, "there", sleep=3))
            await asyncio.sleep(1.0)
            main.kill9()
            return await running
        finally:
            client.close()

    request_id, status, body = asyncio.run(run())
    assert status == p.OK and body["host"] == "h2"
    back = main.restarted()
    back.start(["both"])
    try:
        # The joined host rejoins by itself, and the record it kept reaches the store.
        wait_for(lambda: serving(back, "h2", ["there"]), timeout=30, what="h2 to rejoin")
        assert wait_for(lambda: stored(back, request_id), timeout=30,
                        what="the record") == ("there", "ok")
    finally:
        back.stop()
