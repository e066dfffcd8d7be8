"""The invocation client and workers on other hosts (issue 16 points 4 and 5, client side):
fake workers that are real tcp ROUTERs with CURVE (sora.cluster.keys, an authenticator with an
allow-list) on 127.0.0.1, a fake control plane sending MEMBERS with their endpoints and
serverKeys. A tcp worker is reached only as a CURVE client, never in clear; its loss (closed,
or silent as behind a cut link) answers its calls WORKER_LOST at once."""
import asyncio
import json
import logging
import time

import pytest
import zmq

from sora import protocol as p
from sora.cluster import keys as k
from sora.messaging.client import InvocationClient
from tests.unit.test_gateway_client import receive, until


class TcpCluster:
    """A fake control plane (ipc, as on the main host) and CURVE workers on tcp (a joined
    host whose allow-list holds the main host's key, or not)."""

    def __init__(self, tmp_path, allow_main=True):
        self.dir = tmp_path
        (tmp_path / "run").mkdir(exist_ok=True)
        self.main = k.init_keys(str(tmp_path / "main-keys"))
        self.joined = k.init_keys(str(tmp_path / "joined-keys"))
        if allow_main:
            k.add_allowed(self.joined.directory,
                          str(tmp_path / "main-keys" / k.HOST_CERT), name="main")
        self.ctx = zmq.Context()   # its own: the authenticator serves this context only
        self.auth = k.start_authenticator(self.ctx, self.joined)
        self.control_endpoint = p.control_endpoint(str(tmp_path))
        self.control = self.ctx.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.bind(self.control_endpoint)
        self.subscriber = None
        self.workers: dict[str, tuple[str, zmq.Socket]] = {}
        self.version = 0

    def add_worker(self, worker_id, curve=True):
        if curve:
            sock = k.server_socket(self.ctx, zmq.ROUTER, self.joined)
        else:
            sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind("tcp://127.0.0.1:0")
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.workers[worker_id] = (endpoint, sock)
        return sock

    async def subscribed(self):
        (ident, cmd), = await receive(self.control, 1)
        assert cmd == p.SUBSCRIBE
        self.subscriber = ident

    def publish(self, workers, server_key="joined", max_wait=3.0):
        """MEMBERS: function fn served by `workers` on host h2."""
        self.version += 1
        key = {"joined": self.joined.public_text, "none": None}[server_key]
        members = {"version": self.version, "functions": {"fn": {
            "available": True, "reason": "", "maxQueued": 100, "maxWait": max_wait,
            "workers": [{"id": w, "endpoint": self.workers[w][0], "host": "h2",
                         "serverKey": key} for w in workers]}}}
        self.control.send_multipart([self.subscriber, p.MEMBERS, json.dumps(members).encode()])

    async def hello(self, worker_id, window, timeout=10.0):
        sock = self.workers[worker_id][1]
        (ident, cmd), = await receive(sock, 1, timeout)
        assert cmd == p.HELLO
        sock.send_multipart([ident, p.CREDIT, str(window).encode()])
        return ident

    def close(self):
        for _, sock in self.workers.values():
            sock.close(0)
        self.control.close(0)
        self.auth.stop()
        self.ctx.term()


@pytest.fixture
def tcp(tmp_path):
    c = TcpCluster(tmp_path)
    yield c
    c.close()


async def subscribed_client(cluster, keys):
    client = InvocationClient(cluster.control_endpoint, None, keys)
    client.start()
    await cluster.subscribed()
    return client


def test_a_tcp_worker_is_reached_as_a_curve_client_and_serves(tcp, caplog):
    async def scenario():
        sock = tcp.add_worker("fn/1")
        client = await subscribed_client(tcp, tcp.main)
        tcp.publish(["fn/1"])
        ident = await tcp.hello("fn/1", 2)
        await until(lambda: "fn/1" in client.workers and client.workers["fn/1"].greeted,
                    what="the window")
        call = asyncio.ensure_future(client.invoke("fn", b"r0", b"{}", 5))
        (ident2, cmd, rid, payload), = await receive(sock, 1)
        assert (ident2, cmd, rid, payload) == (ident, p.REQUEST, b"r0", b"{}")
        sock.send_multipart([ident, p.REPLY, rid, p.OK, b'"across"'])
        assert await call == [p.OK, b'"across"']
        client.close()

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    assert "refused" not in caplog.text


@pytest.mark.parametrize("how", ["no serverKey", "no keys here"])
def test_a_tcp_worker_is_never_connected_in_clear(tcp, caplog, how):
    async def scenario():
        # A plain tcp ROUTER: were the client to connect in clear, its HELLO would arrive.
        sock = tcp.add_worker("fn/1", curve=False)
        client = await subscribed_client(tcp, None if how == "no keys here" else tcp.main)
        for _ in range(2):   # told twice: logged once
            tcp.publish(["fn/1"], server_key="joined" if how == "no keys here" else "none",
                        max_wait=0.5)
            await asyncio.sleep(0.2)
        assert "fn/1" not in client.workers
        # Treated as absent: the call waits for capacity, then NO_CAPACITY.
        status, _ = await client.invoke("fn", b"r0", b"{}", 5)
        assert status == p.NO_CAPACITY
        assert not sock.poll(0)   # nothing ever reached it
        client.close()

    with caplog.at_level(logging.ERROR, logger="sora.client"):
        asyncio.run(scenario())
    told = [r.getMessage() for r in caplog.records if "fn/1" in r.getMessage()]
    assert len(told) == 1 and "never reached in clear" in told[0], told


def test_a_worker_host_that_refuses_this_hosts_key_gets_no_call_and_is_logged_once(tmp_path,
                                                                                   caplog):
    cluster = TcpCluster(tmp_path, allow_main=False)

    async def scenario():
        sock = cluster.add_worker("fn/1")
        client = await subscribed_client(cluster, cluster.main)
        cluster.publish(["fn/1"], max_wait=0.5)
        await until(lambda: "fn/1" in client.workers and client.workers["fn/1"].refused,
                    what="the refusal")
        status, _ = await client.invoke("fn", b"r0", b"{}", 5)
        assert status == p.NO_CAPACITY
        assert not sock.poll(0)
        client.close()

    try:
        with caplog.at_level(logging.WARNING):
            asyncio.run(scenario())
    finally:
        cluster.close()
    told = [r.getMessage() for r in caplog.records
            if r.name == "sora.client" and "refused this host's CURVE key" in r.getMessage()]
    assert len(told) == 1, told
    # The worker's side logs the refusal with the client's address (sora.cluster.keys).
    assert any("refused a connection from 127.0.0.1" in r.getMessage()
               for r in caplog.records), caplog.text


@pytest.mark.parametrize("how", ["closed", "silent"])
def test_a_lost_tcp_worker_answers_its_calls_worker_lost_at_once(tcp, how):
    """`closed`: its host's processes were killed (the kernel closes the connection);
    `silent`: its link was cut (no reset ever comes: only heartbeat silence tells)."""
    async def scenario():
        sock = tcp.add_worker("fn/1")
        client = await subscribed_client(tcp, tcp.main)
        tcp.publish(["fn/1"])
        await tcp.hello("fn/1", 4)
        await until(lambda: "fn/1" in client.workers and client.workers["fn/1"].greeted,
                    what="the window")
        calls = [asyncio.ensure_future(client.invoke("fn", rid, b"{}", 60))
                 for rid in (b"r0", b"r1")]
        await receive(sock, 2)
        began = time.monotonic()
        if how == "closed":
            sock.close(0)
        for call in calls:
            status, body = await call
            assert status == p.WORKER_LOST, body
            assert p.parse_error(body)[0] == "Sora.WorkerLost"
        took = time.monotonic() - began
        # Silence: HEARTBEAT_LIVENESS intervals (3 s) and a beat; never the calls' 60 s.
        assert took < (1.0 if how == "closed" else 5.0), took
        assert client.workers["fn/1"].credits == 0   # no new call goes there
        client.close()

    asyncio.run(scenario())
