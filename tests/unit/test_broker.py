"""The broker thread with real ZeroMQ sockets over ipc in a temp dir (no other processes)."""
import json
import time

import pytest
import zmq

from sora import protocol as p
from sora.supervisor.broker import Broker


@pytest.fixture
def broker(tmp_path, monkeypatch):
    monkeypatch.setattr(p, "HEARTBEAT_INTERVAL", 0.05)
    front, back = f"ipc://{tmp_path}/g.sock", f"ipc://{tmp_path}/w.sock"
    b = Broker(front, back)
    b.control.set_functions({
        "fn": {"maxQueued": 2, "maxWait": 5.0, "available": True},
        "broken": {"maxQueued": 0, "maxWait": 1.0, "available": False, "reason": "setup failed"},
    })
    b.start()
    ctx = zmq.Context.instance()
    gw = ctx.socket(zmq.DEALER)
    gw.connect(front)
    yield b, gw, back
    b.control.stop()
    b.join(5)
    b.control.close()
    gw.close(0)


def worker(back, name=b"fn/1", credits=1, function=b"fn", instances=1):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.IDENTITY, name)
    s.connect(back)
    s.send_multipart([p.READY, function, str(credits).encode(), str(instances).encode()])
    return s


def grow(w, n):
    """Ask for n more instances; the broker's answer (heartbeats skipped)."""
    w.send_multipart([p.GROW, str(n).encode()])
    frames = recv(w)
    while frames[0] == p.HEARTBEAT:
        frames = recv(w)
    assert frames[0] == p.GRANT
    return int(frames[1])


def grow_once_seen(w, n, expected, timeout=5.0):
    """grow(w, n) after a change the broker hears on another connection (a SHRINK from
    another worker, a forget from the arbiter): it may take the GROW first, and grant 0 then;
    asked again until it grants `expected`, or the deadline."""
    deadline = time.monotonic() + timeout
    while (granted := grow(w, n)) != expected and granted == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    return granted


def recv(sock, timeout=3.0):
    assert sock.poll(int(timeout * 1000)), "no message"
    return sock.recv_multipart()


def request(gw, rid, fn=b"fn"):
    gw.send_multipart([p.REQUEST, rid, fn, b'{"x":1}'])


def test_unknown_and_unavailable_functions(broker):
    _, gw, _ = broker
    request(gw, b"r1", b"nope")
    assert recv(gw)[:3] == [p.REPLY, b"r1", p.NOT_FOUND]
    request(gw, b"r2", b"broken")
    frames = recv(gw)
    assert frames[2] == p.UNAVAILABLE and b"setup failed" in frames[3]


def test_requests_queue_until_a_worker_has_credit_and_replies_flow_back(broker):
    _, gw, back = broker
    request(gw, b"r1")
    time.sleep(0.05)
    w = worker(back)
    frames = recv(w)
    while frames[0] == p.HEARTBEAT:
        frames = recv(w)
    assert frames == [p.REQUEST, frames[1], b"r1", b'{"x":1}']
    w.send_multipart([p.REPLY, frames[1], b"r1", p.OK, b"42"])
    assert recv(gw) == [p.REPLY, b"r1", p.OK, b"42"]
    w.close(0)


def test_full_queue_answers_throttled(broker):
    _, gw, back = broker
    w = worker(back, credits=1)
    time.sleep(0.1)
    for i in range(4):  # 1 to the worker, 2 queued, 1 rejected
        request(gw, f"r{i}".encode())
    frames = recv(gw)
    assert frames[1] == b"r3" and frames[2] == p.THROTTLED
    assert p.HTTP_STATUS[frames[2]] == 429
    assert json.loads(frames[3])["errorType"] == "TooManyRequestsException"
    w.close(0)


def test_grants_respect_function_concurrency_and_host_limits(tmp_path):
    b = Broker(f"ipc://{tmp_path}/g.sock", f"ipc://{tmp_path}/w.sock", max_instances=6,
               max_memory_mb=1000)
    b.control.set_functions({
        "a": {"maxQueued": 5, "maxWait": 5.0, "available": True, "concurrency": 3,
              "memory": 100},
        "b": {"maxQueued": 5, "maxWait": 5.0, "available": True, "concurrency": 100,
              "memory": 300},
    })
    b.start()
    back = f"ipc://{tmp_path}/w.sock"
    a1 = worker(back, b"a/1", function=b"a", instances=1)
    a2 = worker(back, b"a/2", function=b"a", instances=0)
    bw = worker(back, b"b/1", function=b"b", instances=1)
    try:
        assert grow(a1, 5) == 2       # a's concurrency 3 over both its workers: 1 + 2
        assert grow(a2, 1) == 0
        a1.send_multipart([p.SHRINK, b"1"])
        assert grow_once_seen(a2, 4, 1) == 1   # the one a1 gave back
        # Memory: a holds 3 x 100, b 1 x 300: 600 of 1000 MB; one more of b fits, not two.
        assert grow(bw, 2) == 1
        assert grow(bw, 1) == 0       # 900 MB used: another 300 would pass the limit
        b.control.forget_worker(b"b/1")   # its 2 instances go back to the host
        b2 = worker(back, b"b/2", function=b"b", instances=0)
        assert grow_once_seen(b2, 5, 2) == 2   # 3 of a + 2 x 300 MB = 900 MB, 5 of 6 instances
        b2.close(0)
    finally:
        for s in (a1, a2, bw):
            s.close(0)
        b.control.stop()
        b.join(5)
        b.control.close()


def test_forgotten_worker_fails_its_in_flight_requests_at_once(broker):
    b, gw, back = broker
    w = worker(back, credits=2)
    time.sleep(0.1)
    request(gw, b"a")
    request(gw, b"b")
    got = set()
    while len(got) < 2:
        frames = recv(w)
        if frames[0] == p.REQUEST:
            got.add(frames[2])
    b.control.forget_worker(b"fn/1")
    replies = {recv(gw)[1]: None for _ in range(2)}
    assert set(replies) == {b"a", b"b"}
    w.close(0)


def test_silent_worker_is_forgotten(broker):
    b, gw, back = broker
    w = worker(back, credits=1)
    time.sleep(0.05)
    request(gw, b"a")
    # The worker never answers nor heartbeats: after 3 intervals the broker gives up on it.
    frames = recv(gw, timeout=3)
    assert frames[1] == b"a" and frames[2] == p.WORKER_LOST
    assert b.events.get(timeout=1) == ("ready", b"fn/1")
    assert b.events.get(timeout=1) == ("silent", b"fn/1")
    w.close(0)


def test_records_of_a_lost_workers_calls_are_resent_until_acknowledged(tmp_path):
    """The broker records what a lost worker held; a recorder that dies before committing it
    (here: one that never acknowledges) gets it again, on the broker's heartbeat."""
    from sora.store.recorder import records_endpoint
    (tmp_path / "run").mkdir()
    ctx = zmq.Context.instance()
    recorder = ctx.socket(zmq.ROUTER)
    recorder.bind(records_endpoint(str(tmp_path)))
    front, back = f"ipc://{tmp_path}/g.sock", f"ipc://{tmp_path}/w.sock"
    b = Broker(front, back, state_dir=str(tmp_path))
    b.control.set_functions({"fn": {"maxQueued": 2, "maxWait": 5.0, "available": True}})
    b.start()
    gw = ctx.socket(zmq.DEALER)
    gw.connect(front)
    w = worker(back, credits=1)
    try:
        time.sleep(0.1)
        request(gw, b"lost-call")
        frames = recv(w)
        while frames[0] != p.REQUEST:
            frames = recv(w)
        b.control.forget_worker(b"fn/1")
        assert recv(gw)[2] == p.WORKER_LOST
        ident, header, batch = recv(recorder)
        assert b"lost-call" in batch and b"Sora.WorkerLost" in batch
        # No acknowledgement: the same batch comes again.
        again = recv(recorder, timeout=5)
        assert again[1:] == [header, batch]
        recorder.send_multipart([again[0], header.split(b" ")[1]])   # committed
        assert recorder.poll(2500) == 0   # two heartbeats: nothing more
    finally:
        for s in (w, gw):
            s.close(0)
        b.control.stop()
        b.join(5)
        b.control.close()
        recorder.close(0)
