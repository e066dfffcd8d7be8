"""The control plane thread with real ZeroMQ sockets over ipc in a temp dir (no other
processes): fake workers and clients are DEALER sockets in this process."""
import json
import time

import pytest
import zmq

from sora import protocol as p
from sora.control.plane import ControlPlane


@pytest.fixture
def plane(tmp_path, monkeypatch):
    monkeypatch.setattr(p, "HEARTBEAT_INTERVAL", 0.05)
    endpoint = f"ipc://{tmp_path}/control.sock"
    c = ControlPlane(endpoint, host="main")
    c.control.set_functions({
        "fn": {"maxQueued": 2, "maxWait": 5.0, "available": True},
        "broken": {"maxQueued": 0, "maxWait": 1.0, "available": False, "reason": "setup failed"},
    })
    c.start()
    yield c, endpoint
    c.control.stop()
    c.join(5)
    c.control.close()


def worker(endpoint, name=b"fn/1", function=b"fn", instances=1, data=None):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.IDENTITY, name)
    s.connect(endpoint)
    data = data or "ipc:///run/w-" + name.decode().rsplit("/", 1)[1] + ".sock"
    s.send_multipart([p.READY, function, data.encode(), str(instances).encode()])
    return s


def client(endpoint):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.connect(endpoint)
    s.send_multipart([p.SUBSCRIBE])
    return s


def recv(sock, timeout=3.0):
    assert sock.poll(int(timeout * 1000)), "no message"
    return sock.recv_multipart()


def recv_not_heartbeat(sock, timeout=3.0):
    frames = recv(sock, timeout)
    while frames[0] == p.HEARTBEAT:
        frames = recv(sock, timeout)
    return frames


def members_where(sock, check, timeout=5.0):
    """The first MEMBERS the client receives for which check(functions) holds (heartbeating
    meanwhile, as a client does, so it is not dropped as silent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.send_multipart([p.HEARTBEAT])
        frames = recv(sock, max(0.01, deadline - time.monotonic()))
        if frames[0] == p.MEMBERS:
            members = json.loads(frames[1])
            if check(members["functions"]):
                return members
    raise AssertionError("no such MEMBERS in time")


def served_by(members, name):
    return [w["id"] for w in members.get(name, {}).get("workers", [])]


def grow(w, n):
    """Ask for n more instances; the control plane's answer (heartbeats skipped)."""
    w.send_multipart([p.GROW, str(n).encode()])
    frames = recv_not_heartbeat(w)
    assert frames[0] == p.GRANT
    return int(frames[1])


def grow_once_seen(w, n, expected, timeout=5.0):
    """grow(w, n) after a change the plane hears on another connection (a SHRINK from
    another worker, a forget from the arbiter): it may take the GROW first, and grant 0 then;
    asked again until it grants `expected`, or the deadline."""
    deadline = time.monotonic() + timeout
    while (granted := grow(w, n)) != expected and granted == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    return granted


def test_members_tell_each_function_its_workers_endpoints_and_availability(plane):
    c, endpoint = plane
    sub = client(endpoint)
    first = members_where(sub, lambda f: True)
    assert first["functions"]["fn"] == {"available": True, "reason": "", "maxQueued": 2,
                                        "maxWait": 5.0, "local": True, "workers": []}
    assert first["functions"]["broken"]["available"] is False
    assert first["functions"]["broken"]["reason"] == "setup failed"
    w = worker(endpoint, data="ipc:///tmp/x/run/w-1.sock")
    now = members_where(sub, lambda f: served_by(f, "fn") == ["fn/1"])
    assert now["version"] > first["version"]
    assert now["functions"]["fn"]["workers"] == [
        {"id": "fn/1", "endpoint": "ipc:///tmp/x/run/w-1.sock", "host": "main",
         "serverKey": None}]
    assert c.events.get(timeout=1) == ("ready", b"fn/1")
    # A second subscriber gets the current membership at once.
    late = client(endpoint)
    assert served_by(members_where(late, lambda f: True)["functions"], "fn") == ["fn/1"]
    # Reaped by the arbiter: out of MEMBERS at once (clients fail what it held).
    c.control.forget_worker(b"fn/1")
    members_where(sub, lambda f: served_by(f, "fn") == [])
    members_where(late, lambda f: served_by(f, "fn") == [])
    for s in (w, sub, late):
        s.close(0)


def test_availability_changes_are_published(plane):
    c, endpoint = plane
    sub = client(endpoint)
    members_where(sub, lambda f: f["fn"]["available"])
    c.control.set_functions({"fn": {"maxQueued": 2, "maxWait": 5.0, "available": False,
                                    "reason": "FATAL: cannot boot"}})
    members_where(sub, lambda f: not f["fn"]["available"]
                  and f["fn"]["reason"] == "FATAL: cannot boot")
    sub.close(0)


def test_a_stopping_worker_stays_a_member_until_reaped(plane):
    c, endpoint = plane
    sub = client(endpoint)
    w = worker(endpoint)
    members_where(sub, lambda f: served_by(f, "fn") == ["fn/1"])
    w.send_multipart([p.DISCONNECT])
    # It still answers what it holds, heartbeating: still a member, and no "silent".
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        w.send_multipart([p.HEARTBEAT, b"1", b"1"])
        sub.send_multipart([p.HEARTBEAT])
        time.sleep(0.03)
    assert served_by(c.members()["functions"], "fn") == ["fn/1"]
    c.control.forget_worker(b"fn/1")
    members_where(sub, lambda f: served_by(f, "fn") == [])
    for s in (w, sub):
        s.close(0)


def test_silent_worker_is_forgotten_and_the_arbiter_told(plane):
    c, endpoint = plane
    sub = client(endpoint)
    w = worker(endpoint)
    members_where(sub, lambda f: served_by(f, "fn") == ["fn/1"])
    # The worker never heartbeats: after 3 intervals the plane gives up on it.
    members_where(sub, lambda f: served_by(f, "fn") == [])
    assert c.events.get(timeout=1) == ("ready", b"fn/1")
    assert c.events.get(timeout=1) == ("silent", b"fn/1")
    # It comes back: told to announce again.
    w.send_multipart([p.HEARTBEAT, b"1", b"0"])
    assert recv_not_heartbeat(w) == [p.DISCONNECT]
    for s in (w, sub):
        s.close(0)


def test_subscribers_are_heartbeat_dropped_when_silent_and_taken_back(plane):
    c, endpoint = plane
    sub = client(endpoint)
    members_where(sub, lambda f: True)
    assert recv(sub)[0] == p.HEARTBEAT
    deadline = time.monotonic() + 5
    while c.subscribers and time.monotonic() < deadline:
        time.sleep(0.02)   # it never heartbeats back
    assert not c.subscribers
    # Its next heartbeat (the plane restarted, say) subscribes it again: MEMBERS at once.
    sub.send_multipart([p.HEARTBEAT])
    members_where(sub, lambda f: "fn" in f)
    sub.send_multipart([p.BYE])
    deadline = time.monotonic() + 5
    while c.subscribers and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not c.subscribers
    sub.close(0)


def test_status_shows_workers_instances_and_what_they_hold(plane):
    c, endpoint = plane
    c.control.set_status({"status": "ok", "functions": {"fn": {"state": "RUNNING"}}})
    w1 = worker(endpoint, b"fn/1", instances=2)
    w2 = worker(endpoint, b"fn/2", instances=1)
    w1.send_multipart([p.HEARTBEAT, b"2", b"5", b"2", b"0", b"0", b"3"])
    w2.send_multipart([p.HEARTBEAT, b"1", b"3"])   # an older worker: no figures
    asker = zmq.Context.instance().socket(zmq.DEALER)
    asker.connect(endpoint)
    deadline = time.monotonic() + 5
    while True:
        asker.send_multipart([p.STATUS, b"s1"])
        frames = recv_not_heartbeat(asker)
        assert frames[:3] == [p.REPLY, b"s1", p.OK]
        status = json.loads(frames[3])
        if status["functions"]["fn"].get("inFlight") == 8 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert status["status"] == "ok"
    assert status["functions"]["fn"] == {"state": "RUNNING", "inFlight": 8, "instances": 3,
                                         "workers": 2, "hosts": ["main"], "busy": 2,
                                         "idle": 0, "starting": 0, "queued": 3}
    main = status["hosts"]["main"]
    assert main["local"] is True and main["state"] == "joined"
    assert main["functions"] == {"fn": {"workers": 2, "instances": 3, "inFlight": 8}}
    for s in (w1, w2, asker):
        s.close(0)


def test_unknown_function_is_refused(plane):
    _, endpoint = plane
    w = worker(endpoint, b"nope/1", function=b"nope")
    assert recv_not_heartbeat(w) == [p.DISCONNECT]
    w.close(0)


def test_remote_members_are_merged_and_dropped(plane):
    c, endpoint = plane
    sub = client(endpoint)
    w = worker(endpoint)
    members_where(sub, lambda f: served_by(f, "fn") == ["fn/1"])
    c.control.set_remote("h2", {
        "fn": {"workers": [{"id": "fn/77", "endpoint": "tcp://10.0.0.2:7001", "host": "h2",
                            "serverKey": "K" * 40}]},
        "only-there": {"maxQueued": 7, "maxWait": 2.0,
                       "workers": [{"id": "only-there/78", "endpoint": "tcp://10.0.0.2:7002",
                                    "host": "h2", "serverKey": "K" * 40}]}})
    members = members_where(sub, lambda f: "only-there" in f)["functions"]
    assert served_by(members, "fn") == ["fn/1", "fn/77"]
    assert members["fn"]["workers"][1] == {"id": "fn/77", "endpoint": "tcp://10.0.0.2:7001",
                                           "host": "h2", "serverKey": "K" * 40}
    assert members["only-there"]["available"] is True
    assert members["only-there"]["maxQueued"] == 7
    status = json.loads(c.status_body())
    assert {name: sorted(h["functions"]) for name, h in status["hosts"].items()} == \
        {"main": ["fn"], "h2": ["fn", "only-there"]}
    assert status["hosts"]["h2"]["state"] == "joined"
    assert status["functions"]["fn"]["hosts"] == ["main", "h2"]
    assert status["functions"]["only-there"]["hosts"] == ["h2"]
    assert status["functions"]["only-there"]["remote"] is True
    c.control.drop_remote("h2")
    members = members_where(sub, lambda f: "only-there" not in f)["functions"]
    assert served_by(members, "fn") == ["fn/1"]
    status = json.loads(c.status_body())
    assert status["hosts"]["h2"]["state"] == "lost" and status["hosts"]["h2"]["functions"] == {}
    assert "only-there" not in status["functions"]
    for s in (w, sub):
        s.close(0)


def test_grants_respect_function_concurrency_and_host_limits(tmp_path):
    endpoint = f"ipc://{tmp_path}/control.sock"
    c = ControlPlane(endpoint, max_instances=6, max_memory_mb=1000)
    c.control.set_functions({
        "a": {"maxQueued": 5, "maxWait": 5.0, "available": True, "concurrency": 3,
              "memory": 100},
        "b": {"maxQueued": 5, "maxWait": 5.0, "available": True, "concurrency": 100,
              "memory": 300},
    })
    c.start()
    a1 = worker(endpoint, b"a/1", function=b"a", instances=1)
    a2 = worker(endpoint, b"a/2", function=b"a", instances=0)
    bw = worker(endpoint, b"b/1", function=b"b", instances=1)
    try:
        assert grow(a1, 5) == 2       # a's concurrency 3 over both its workers: 1 + 2
        assert grow(a2, 1) == 0
        a1.send_multipart([p.SHRINK, b"1"])
        assert grow_once_seen(a2, 4, 1) == 1   # the one a1 gave back
        # Memory: a holds 3 x 100, b 1 x 300: 600 of 1000 MB; one more of b fits, not two.
        assert grow(bw, 2) == 1
        assert grow(bw, 1) == 0       # 900 MB used: another 300 would pass the limit
        c.control.forget_worker(b"b/1")   # its 2 instances go back to the host
        b2 = worker(endpoint, b"b/2", function=b"b", instances=0)
        assert grow_once_seen(b2, 5, 2) == 2   # 3 of a + 2 x 300 MB = 900 MB, 5 of 6 instances
        b2.close(0)
    finally:
        for s in (a1, a2, bw):
            s.close(0)
        c.control.stop()
        c.join(5)
        c.control.close()


def test_the_plane_does_no_per_call_work():
    """No invocation frame is handled by the control plane: it has no REQUEST path at all."""
    import inspect
    from sora.control import plane
    assert "p.REQUEST" not in inspect.getsource(plane)


def test_run_dir_is_private(tmp_path):
    import os
    import stat
    (tmp_path / "run").mkdir(mode=0o755)
    p.make_run_dir(str(tmp_path))
    assert stat.S_IMODE(os.stat(tmp_path / "run").st_mode) == 0o700
