"""The invocation client (sora.messaging.client) against real ZeroMQ sockets in this process: a
fake control plane (ROUTER at control.sock) and fake workers (a ROUTER each, at their own
endpoints), speaking the direct data path's frames (protocol.py)."""
import asyncio
import json
import re
import time
import uuid

import pytest
import zmq

from sora import protocol as p
from sora.gateway.requests import new_request_id
from sora.messaging.client import BrokerTimeout, BrokerUnavailable, InvocationClient
from sora.store.recorder import records_endpoint


def test_request_ids_are_time_ordered_version_7_uuids():
    before = time.time()
    made = [new_request_id() for _ in range(1000)]
    after = time.time()
    assert len(set(made)) == 1000
    pattern = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
    assert all(pattern.match(i) for i in made)
    for text in made:
        parsed = uuid.UUID(text)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        # The first 48 bits are the Unix time in milliseconds (RFC 9562, section 5.7).
        assert int(before * 1000) <= parsed.int >> 80 <= int(after * 1000) + 1
    # Ids of later milliseconds sort after earlier ones (what keeps the store's index local).
    prefixes = [text[:13] for text in made]
    assert prefixes == sorted(prefixes)


async def receive(router, count, timeout=10.0, skip=(p.HEARTBEAT,)):
    """The next `count` messages a ROUTER receives (heartbeats left out), polled with a
    deadline."""
    received = []
    deadline = time.monotonic() + timeout
    while len(received) < count:
        assert time.monotonic() < deadline, f"got {len(received)} of {count}: {received}"
        await asyncio.sleep(0.005)
        while router.poll(0):
            frames = router.recv_multipart()
            if frames[1] not in skip:
                received.append(frames)
    return received


async def until(predicate, timeout=10.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


class Cluster:
    """A fake control plane and fake workers for one function table."""

    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.ctx = zmq.Context.instance()
        (tmp_path / "run").mkdir(exist_ok=True)
        self.control_endpoint = p.control_endpoint(str(tmp_path))
        self.control = self._router(self.control_endpoint)
        self.subscriber = None
        self.workers: dict[str, tuple[str, zmq.Socket]] = {}
        self.functions: dict[str, dict] = {}
        self.version = 0

    def _router(self, endpoint):
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(endpoint)
        return sock

    def add_worker(self, function, number):
        endpoint = f"ipc://{self.dir}/run/w-{number}.sock"
        self.workers[f"{function}/{number}"] = (endpoint, self._router(endpoint))
        return self.workers[f"{function}/{number}"][1]

    def members(self, **functions):
        """functions: name -> dict(available, reason, maxQueued, maxWait, workers=[ids])."""
        self.version += 1
        table = {}
        for name, spec in functions.items():
            table[name] = {"available": spec.get("available", True),
                           "reason": spec.get("reason", ""),
                           "maxQueued": spec.get("maxQueued", 100),
                           "maxWait": spec.get("maxWait", 3.0),
                           "workers": [{"id": w, "endpoint": self.workers[w][0], "host": "h",
                                        "serverKey": None} for w in spec.get("workers", ())]}
        return json.dumps({"version": self.version, "functions": table}).encode()

    async def subscribed(self):
        (ident, cmd), = await receive(self.control, 1)
        assert cmd == p.SUBSCRIBE
        self.subscriber = ident

    def publish(self, **functions):
        self.control.send_multipart([self.subscriber, p.MEMBERS, self.members(**functions)])

    async def hello(self, worker_id, window):
        """The worker's side of a new connection: HELLO in, the whole window out."""
        sock = self.workers[worker_id][1]
        (ident, cmd), = await receive(sock, 1)
        assert cmd == p.HELLO
        sock.send_multipart([ident, p.CREDIT, str(window).encode()])
        return ident

    def close(self):
        self.control.close(0)
        for _, sock in self.workers.values():
            sock.close(0)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


async def started(cluster, windows, state_dir=None, **spec):
    """A client subscribed, with workers fn/1.. of the given windows greeted."""
    for i, _ in enumerate(windows, 1):
        cluster.add_worker("fn", i)
    client = InvocationClient(cluster.control_endpoint, state_dir)
    first = asyncio.ensure_future(client.invoke("nobody", b"warm-up", b"{}", 5))
    await cluster.subscribed()
    cluster.publish(fn={"workers": [f"fn/{i}" for i in range(1, len(windows) + 1)], **spec})
    assert (await first)[0] == p.NOT_FOUND
    idents = [await cluster.hello(f"fn/{i}", w) for i, w in enumerate(windows, 1)]
    await until(lambda: all(w.greeted for w in client.workers.values()), what="the windows")
    return client, idents


def invoke(client, *ids, timeout=5, function="fn"):
    return [asyncio.ensure_future(client.invoke(function, i, b"{}", timeout)) for i in ids]


def test_calls_go_to_the_worker_with_most_free_credits_and_replies_match_by_id(cluster):
    async def scenario():
        client, (id1, id2) = await started(cluster, [1, 3])
        calls = invoke(client, b"r0", b"r1", b"r2", b"r3")
        w1, w2 = cluster.workers["fn/1"][1], cluster.workers["fn/2"][1]
        at2 = await receive(w2, 3)
        at1 = await receive(w1, 1)
        # 3 free on fn/2, 1 on fn/1: r0 and r1 to fn/2, then 1 free on each: r2 to the first
        # listed, r3 to fn/2.
        assert [f[2] for f in at2] == [b"r0", b"r1", b"r3"] and at1[0][2] == b"r2"
        assert all(f[1] == p.REQUEST and f[3] == b"{}" and len(f) == 4 for f in at1 + at2)
        # Answered out of order: each caller gets its own reply.
        for ident, sock, frames in [(id1, w1, at1[0])] + [(id2, w2, f) for f in reversed(at2)]:
            sock.send_multipart([ident, p.REPLY, frames[2], p.OK, frames[2] + b"-done"])
        assert await asyncio.gather(*calls) == [[p.OK, b"r%d-done" % i] for i in range(4)]
        assert client.workers["fn/2"].credits == 3 and client.workers["fn/1"].credits == 1
        # A meta frame travels as the last frame; the tail frame comes back with the reply.
        call = asyncio.ensure_future(client.invoke("fn", b"m", b"{}", 5,
                                                   p.meta(p.TRIGGER_INVOKE, tail=True)))
        (ident, _, rid, _, meta), = await receive(w2, 1)
        assert meta == b"invoke+tail"
        w2.send_multipart([ident, p.REPLY, rid, p.OK, b"1", b"dGFpbA=="])
        assert await call == [p.OK, b"1", b"dGFpbA=="]
        client.close()

    asyncio.run(scenario())


def test_the_requests_of_one_loop_turn_are_sent_back_to_back(cluster, monkeypatch):
    # Each send from a request's own task would wake ZeroMQ's I/O thread for that one message;
    # the client sends the requests its tasks made in one turn together, on the next turn.
    import sora.messaging.client as client_module
    sent = []
    real_send = client_module.send_frames
    monkeypatch.setattr(client_module, "send_frames",
                        lambda sock, frames: (sent.append(frames[1]), real_send(sock, frames)))

    async def scenario():
        client, (ident,) = await started(cluster, [8])
        calls = invoke(client, b"r0", b"r1", b"r2")
        await asyncio.sleep(0)   # each task has run up to its wait for the reply
        assert sent == []
        await asyncio.sleep(0)
        assert sent == [b"r0", b"r1", b"r2"]
        sock = cluster.workers["fn/1"][1]
        for _, _, rid, _ in await receive(sock, 3):
            sock.send_multipart([ident, p.REPLY, rid, p.OK, b"ok"])
        assert await asyncio.gather(*calls) == [[p.OK, b"ok"]] * 3
        client.close()

    asyncio.run(scenario())


def test_the_local_fifo_is_bounded_throttled_then_no_capacity(cluster):
    async def scenario():
        client, (ident,) = await started(cluster, [1], maxQueued=1, maxWait=0.3)
        first, queued, refused = invoke(client, b"r0", b"r1", b"r2")
        status, body = await refused
        assert status == p.THROTTLED and b"TooManyRequestsException" in body
        started_at = time.monotonic()
        status, body = await queued   # no credit came back within maxWait
        assert status == p.NO_CAPACITY and b"Sora.NoCapacity" in body
        assert 0.25 <= time.monotonic() - started_at < 2.0
        sock = cluster.workers["fn/1"][1]
        (_, _, rid, _), = await receive(sock, 1)
        assert rid == b"r0"
        # A waiting call goes out when a reply returns its credit.
        later = invoke(client, b"r3")[0]
        await asyncio.sleep(0.05)
        assert client.functions["fn"].waiting
        sock.send_multipart([ident, p.REPLY, b"r0", p.OK, b"a"])
        assert await first == [p.OK, b"a"]
        (_, _, rid, _), = await receive(sock, 1)
        assert rid == b"r3"
        sock.send_multipart([ident, p.REPLY, b"r3", p.OK, b"b"])
        assert await later == [p.OK, b"b"]
        client.close()

    asyncio.run(scenario())


def test_unknown_and_unavailable_functions_are_answered_here(cluster):
    async def scenario():
        client, _ = await started(cluster, [1])
        status, body = await client.invoke("nobody", b"x", b"{}", 5)
        assert status == p.NOT_FOUND and b"ResourceNotFoundException" in body
        cluster.publish(fn={"workers": ["fn/1"]},
                        broken={"available": False, "reason": "setup failed"})
        await until(lambda: "broken" in client.functions, what="the new members")
        status, body = await client.invoke("broken", b"y", b"{}", 5)
        assert status == p.UNAVAILABLE
        assert json.loads(body) == {"errorType": "Sora.FunctionUnavailable",
                                    "errorMessage": "Function broken cannot serve: setup failed"}
        client.close()

    asyncio.run(scenario())


def lost_records(tmp_path):
    """A ROUTER where the client's RecordSender sends (the recorder's socket)."""
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(records_endpoint(str(tmp_path)))
    return sock


async def recorded(sock):
    lines = []
    while not any(b"Sora.WorkerLost" in line for line in lines):
        for frames in await receive(sock, 1, skip=()):
            lines.extend(b"\n".join(frames[1:]).split(b"\n"))
    return [line for line in lines if b"Sora.WorkerLost" in line]


@pytest.mark.parametrize("how", ["disconnect", "removed", "silent"])
def test_a_lost_worker_answers_its_calls_worker_lost_at_once_and_records_them(cluster, tmp_path,
                                                                             how):
    records = lost_records(tmp_path)

    async def scenario():
        client, (ident,) = await started(cluster, [4], state_dir=str(tmp_path))
        calls = invoke(client, b"r0", b"r1", timeout=30)
        sock = cluster.workers["fn/1"][1]
        await receive(sock, 2)
        began = time.monotonic()
        if how == "disconnect":
            sock.close(0)   # the worker process died
        elif how == "removed":
            cluster.publish(fn={"workers": []})
        # "silent": the worker answers nothing, heartbeats included
        for call in calls:
            status, body = await call
            assert status == p.WORKER_LOST
            assert p.parse_error(body)[0] == "Sora.WorkerLost"
        limit = 5.0 if how == "silent" else 1.0
        assert time.monotonic() - began < limit   # not the calls' 30 s deadline
        lines = await recorded(records)
        assert {line.split(b"\t")[1] for line in lines} == {b"r0", b"r1"}
        assert all(b"\tcrashed\t" in line and b"\tfn\t" in line for line in lines)
        if how == "removed":
            assert "fn/1" not in client.workers
        else:   # no new call goes to it
            assert client.workers["fn/1"].credits == 0
        client.close()

    try:
        asyncio.run(scenario())
    finally:
        records.close(0)


def test_a_worker_that_says_disconnect_takes_no_new_calls_but_answers_its_own(cluster):
    async def scenario():
        client, (id1, id2) = await started(cluster, [2, 1])
        w1 = cluster.workers["fn/1"][1]
        first = invoke(client, b"r0")[0]
        await receive(w1, 1)
        w1.send_multipart([id1, p.DISCONNECT])
        await until(lambda: client.workers["fn/1"].draining, what="the DISCONNECT")
        second = invoke(client, b"r1")[0]
        w2 = cluster.workers["fn/2"][1]
        (_, _, rid, _), = await receive(w2, 1)
        assert rid == b"r1"
        w1.send_multipart([id1, p.REPLY, b"r0", p.OK, b"a"])
        w2.send_multipart([id2, p.REPLY, b"r1", p.OK, b"b"])
        assert [await first, await second] == [[p.OK, b"a"], [p.OK, b"b"]]
        client.close()

    asyncio.run(scenario())


def test_calls_wait_for_the_first_members_and_time_out_without_an_answer(cluster):
    async def scenario():
        cluster.add_worker("fn", 1)
        client = InvocationClient(cluster.control_endpoint)
        early = invoke(client, b"early")[0]
        await cluster.subscribed()
        await asyncio.sleep(0.1)
        assert not early.done()   # nothing known yet: it waits for MEMBERS
        cluster.publish(fn={"workers": ["fn/1"]})
        ident = await cluster.hello("fn/1", 1)
        sock = cluster.workers["fn/1"][1]
        (_, _, rid, _), = await receive(sock, 1)
        assert rid == b"early"
        sock.send_multipart([ident, p.REPLY, rid, p.OK, b"ok"])
        assert await early == [p.OK, b"ok"]
        started_at = time.monotonic()
        with pytest.raises(BrokerTimeout):
            await client.invoke("fn", b"lost", b"{}", 0.2)
        assert 0.2 <= time.monotonic() - started_at < 2.0
        assert not client._pending
        client.close()

    asyncio.run(scenario())


def test_a_lost_control_plane_stops_no_call_to_a_known_worker(cluster):
    async def scenario():
        client, (ident,) = await started(cluster, [4])
        cluster.control.close(0)   # the supervisor died
        await until(lambda: client._control_gone, what="the control plane's loss")
        call = invoke(client, b"r0")[0]
        sock = cluster.workers["fn/1"][1]
        (_, _, rid, _), = await receive(sock, 1)
        sock.send_multipart([ident, p.REPLY, rid, p.OK, b"ok"])
        assert await call == [p.OK, b"ok"]
        # Nothing can take a call of a function no known worker serves: at once, not a wait.
        started_at = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await client.invoke("nobody-serves", b"r1", b"{}", 5)
        with pytest.raises(BrokerUnavailable):
            await client.status(b"s")
        assert time.monotonic() - started_at < 0.1
        client.close()

    asyncio.run(scenario())


def test_no_control_plane_ever_seen_then_lost_fails_at_once(cluster):
    async def scenario():
        client = InvocationClient(cluster.control_endpoint)
        early = invoke(client, b"early")[0]
        await cluster.subscribed()
        cluster.control.close(0)
        with pytest.raises(BrokerUnavailable):
            await early
        with pytest.raises(BrokerUnavailable):
            await client.invoke("fn", b"later", b"{}", 5)
        client.close()

    asyncio.run(scenario())


def test_status_is_asked_of_the_control_plane(cluster):
    async def scenario():
        client = InvocationClient(cluster.control_endpoint)
        status = asyncio.ensure_future(client.status(b"s1"))
        (_, subscribe), (ident, cmd, rid) = await receive(cluster.control, 2)
        assert subscribe == p.SUBSCRIBE
        assert (cmd, rid) == (p.STATUS, b"s1")
        cluster.control.send_multipart([ident, p.REPLY, rid, p.OK, b'{"status":"ok"}'])
        assert await status == b'{"status":"ok"}'
        client.close()

    asyncio.run(scenario())


def test_a_version_members_does_not_list_yet_waits_for_it_with_wake(cluster, monkeypatch):
    # Another host sharing the store published `fn:2` a moment ago: this host's arbiter has
    # not listed it yet. The call waits (WAKE asks the arbiter to read the store) and goes
    # to the version's worker once MEMBERS lists it; one never listed is NOT_FOUND after the
    # wait.
    import sora.messaging.client as client_module
    monkeypatch.setattr(client_module, "UNLISTED_VERSION_WAIT", 1.0)

    async def scenario():
        client, _ = await started(cluster, [4])
        call = asyncio.ensure_future(client.invoke("fn:2", b"v", b"{}", 10))
        (_, cmd, key), = await receive(cluster.control, 1)
        assert (cmd, key) == (p.WAKE, b"fn:2")
        assert not call.done()
        cluster.add_worker("fn:2", 9)
        cluster.publish(fn={"workers": ["fn/1"]}, **{"fn:2": {"workers": ["fn:2/9"]}})
        ident = await cluster.hello("fn:2/9", 1)
        sock = cluster.workers["fn:2/9"][1]
        (_, _, rid, _), = await receive(sock, 1)
        sock.send_multipart([ident, p.REPLY, rid, p.OK, b"v2"])
        assert await call == [p.OK, b"v2"]
        began = time.monotonic()
        status = (await client.invoke("fn:3", b"w", b"{}", 10))[0]
        assert status == p.NOT_FOUND and 0.9 <= time.monotonic() - began < 3
        client.close()

    asyncio.run(scenario())
