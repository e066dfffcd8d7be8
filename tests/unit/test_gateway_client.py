"""The gateway's broker client against a real ROUTER socket in this process."""
import asyncio
import re
import time
import uuid

import pytest
import zmq

from sora import protocol as p
from sora.gateway.requests import new_request_id
from sora.messaging.client import BrokerClient, BrokerTimeout


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


async def receive(router, count, timeout=10.0):
    """The next `count` messages the broker's side receives, polled with a deadline."""
    received = []
    deadline = time.monotonic() + timeout
    while len(received) < count:
        assert time.monotonic() < deadline, f"got {len(received)} of {count} messages"
        await asyncio.sleep(0.01)
        while router.poll(0):
            received.append(router.recv_multipart())
    return received


@pytest.fixture
def broker(tmp_path):
    """The broker's side: a ROUTER socket bound at an ipc endpoint."""
    endpoint = f"ipc://{tmp_path}/b.sock"
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.bind(endpoint)
    yield endpoint, router
    router.close(0)


def invoke_three(client):
    return [asyncio.ensure_future(client.invoke("fn", f"r{i}".encode(), b"{}", 5))
            for i in range(3)]


def test_replies_are_matched_by_request_id_and_silence_times_out(broker):
    endpoint, router = broker

    async def scenario():
        client = BrokerClient(endpoint)
        calls = invoke_three(client)
        received = await receive(router, 3)
        # Answer out of order: each caller still gets its own reply.
        for ident, _, rid, fn, payload in reversed(received):
            router.send_multipart([ident, p.REPLY, rid, p.OK, rid + b"-done"])
        results = await asyncio.gather(*calls)
        assert results == [[p.OK, b"r0-done"], [p.OK, b"r1-done"], [p.OK, b"r2-done"]]
        started = time.monotonic()
        try:
            await client.invoke("fn", b"lost", b"{}", 0.2)
        except BrokerTimeout:
            waited = time.monotonic() - started
        else:
            raise AssertionError("no timeout")
        assert 0.2 <= waited < 2.0
        assert not client._pending and not client._deadlines
        client.close()

    asyncio.run(scenario())


def test_the_requests_of_one_loop_turn_are_sent_back_to_back(broker, monkeypatch):
    # Each send from a request's own task would wake ZeroMQ's I/O thread for that one message;
    # the client sends the requests its tasks made in one turn together, on the next turn.
    import sora.messaging.client as client_module
    sent = []
    real_send = client_module.send_frames
    monkeypatch.setattr(client_module, "send_frames",
                        lambda sock, frames: (sent.append(frames[1]), real_send(sock, frames)))
    endpoint, router = broker

    async def scenario():
        client = BrokerClient(endpoint)
        calls = invoke_three(client)
        await asyncio.sleep(0)   # each task has run up to its wait for the reply
        assert sent == []
        await asyncio.sleep(0)
        assert sent == [b"r0", b"r1", b"r2"]
        received = await receive(router, 3)
        for ident, _, rid, _, _ in received:
            router.send_multipart([ident, p.REPLY, rid, p.OK, b"ok"])
        assert await asyncio.gather(*calls) == [[p.OK, b"ok"]] * 3
        client.close()

    asyncio.run(scenario())


def test_a_request_that_cannot_be_sent_fails_its_caller_at_once(tmp_path, monkeypatch):
    import sora.messaging.client as client_module

    def refuse(sock, frames):
        raise zmq.ZMQError(zmq.EHOSTUNREACH)

    monkeypatch.setattr(client_module, "send_frames", refuse)

    async def scenario():
        client = BrokerClient(f"ipc://{tmp_path}/nobody.sock")
        started = time.monotonic()
        try:
            await client.invoke("fn", b"r1", b"{}", 30)
        except zmq.ZMQError as exc:
            assert exc.errno == zmq.EHOSTUNREACH
        else:
            raise AssertionError("the send error was not raised")
        assert time.monotonic() - started < 5   # not the 30 s broker wait
        assert not client._pending and not client._deadlines
        client.close()

    asyncio.run(scenario())


def test_a_lost_broker_fails_its_callers_at_once_until_it_is_back(tmp_path):
    """The supervisor dies (its broker with it) while calls wait: they fail at once, as do
    new calls, instead of hanging to their deadline; once a broker listens again, calls
    flow."""
    from sora.messaging.client import BrokerUnavailable
    endpoint = f"ipc://{tmp_path}/b.sock"
    ctx = zmq.Context.instance()

    async def scenario():
        router = ctx.socket(zmq.ROUTER)
        router.bind(endpoint)
        client = BrokerClient(endpoint)
        calls = invoke_three(client)
        await receive(router, 3)
        started = time.monotonic()
        router.close(0)   # the broker is gone; the calls' deadline is 5 s away
        for call in calls:
            with pytest.raises(BrokerUnavailable):
                await call
        assert time.monotonic() - started < 2.0
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await client.invoke("fn", b"later", b"{}", 5)
        assert time.monotonic() - started < 0.1
        router = ctx.socket(zmq.ROUTER)   # a new supervisor's broker
        router.bind(endpoint)
        deadline = time.monotonic() + 10
        while client._broker_gone:   # until the monitor reports the new connection
            assert time.monotonic() < deadline, "never reconnected"
            await asyncio.sleep(0.02)
        call = asyncio.ensure_future(client.invoke("fn", b"again", b"{}", 5))
        (ident, _, rid, _, _), = await receive(router, 1)
        router.send_multipart([ident, p.REPLY, rid, p.OK, b"ok"])
        assert await call == [p.OK, b"ok"]
        client.close()
        router.close(0)

    asyncio.run(scenario())
