"""Attacks on issue 16's sockets from a peer that is allowed to connect (a local process that
reaches the run folder, or a host whose CURVE key is on the allow-list): malformed frames to the
control plane and to a worker's ROUTER must crash nothing, and no call may be answered to a
client that did not send it."""
import json
import time

import zmq

from sora import protocol as p
from tests.unit import test_control_plane, test_worker_data_path
from tests.unit.test_control_plane import client, members_where, recv_not_heartbeat
from tests.unit.test_worker_data_path import Client, until

plane = test_control_plane.plane       # the fixtures: a control plane thread, a real worker
served = test_worker_data_path.served


def raw(endpoint, identity=None):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        s.setsockopt(zmq.IDENTITY, identity)
    s.connect(endpoint)
    return s


# --- the control plane -------------------------------------------------------------------------
def test_malformed_frames_do_not_end_the_control_plane(plane):
    c, endpoint = plane
    bad = raw(endpoint)                          # ZeroMQ's binary identity (not UTF-8)
    named = raw(endpoint, identity=b"fn/\xff\xfe")
    try:
        for frames in ([p.READY, b"fn", b"ipc:///x", b"1"],          # binary identity
                       [p.READY, b"\xff", b"ipc:///x", b"1"],        # function not UTF-8
                       [p.READY, b"fn", b"\xff\xfe", b"1"],          # endpoint not UTF-8
                       [p.READY, b"fn", b"ipc:///x", b"lots"],       # count not a number
                       [p.READY], [p.GROW], [p.GROW, b"x"], [p.SHRINK, b"-5"],
                       [p.STATUS], [b""], [b"\x00" * 5000], [p.HEARTBEAT, b"a", b"b"]):
            bad.send_multipart(frames)
            named.send_multipart(frames)
        for _ in range(2000):                    # a SUBSCRIBE / HELLO flood
            bad.send_multipart([p.SUBSCRIBE])
        time.sleep(0.3)
        assert c.is_alive()
        sub = client(endpoint)
        try:
            got = members_where(sub, lambda fns: True)
            # Nothing it claimed with a name that is no worker's became a member.
            assert not any(spec.get("workers") for spec in got["functions"].values()), got
            sub.send_multipart([p.STATUS, b"s1"])
            frames = recv_not_heartbeat(sub)
            while frames[0] != p.REPLY:
                frames = recv_not_heartbeat(sub)
            assert frames[1] == b"s1" and json.loads(frames[3])
        finally:
            sub.close(0)
    finally:
        bad.close(0)
        named.close(0)


# --- a worker's ROUTER -------------------------------------------------------------------------
def test_malformed_requests_do_not_end_the_worker_or_reach_the_runtime(served):
    _, proc, endpoint = served
    attacker = raw(endpoint)
    good = Client(endpoint)
    try:
        attacker.send_multipart([p.HELLO])
        for frames in ([p.REQUEST], [p.REQUEST, b"a"], [b""], [b"\x07", b"x"],
                       [p.REQUEST, b"\xff\xfe", b"{}"],                          # id not UTF-8
                       [p.REQUEST, b"\xff\xfe", b"{}", p.TRIGGER_HTTP + p.FLAG_TAIL],
                       [p.REQUEST, b'x","event":{"injected":1}}\n{"id":"y', b"{}"],
                       [p.REQUEST, b"x" * 100_000, b"{}"],
                       [p.REQUEST, b"", b"{}"]):
            attacker.send_multipart(frames)
        for _ in range(2000):
            attacker.send_multipart([p.HELLO])
        until(lambda: good.window, 10, good)
        good.call(b"after")
        until(lambda: good.replies, 10, good)
        assert proc.poll() is None, "the worker died"
        assert good.replies[0][:2] == (b"after", p.OK)
        # The attacker's malformed ids were answered BAD_REQUEST (or not at all): never run.
        answers = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if attacker.poll(100):
                frames = attacker.recv_multipart()
                if frames[0] == p.REPLY:
                    answers.append((frames[1], frames[2]))
        assert all(status == p.BAD_REQUEST for _, status in answers), answers
    finally:
        attacker.close(0)
        good.close()


def test_a_request_id_in_flight_from_another_client_is_not_answered_to_it(served):
    _, proc, endpoint = served
    victim, thief = Client(endpoint), Client(endpoint)
    try:
        until(lambda: victim.window and thief.window, 10, victim, thief)
        victim.sock.send_multipart([p.REQUEST, b"same-id", b'{"who":"victim"}'])
        thief.sock.send_multipart([p.REQUEST, b"same-id", b'{"who":"thief"}'])
        got = {}
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            for name, c in (("victim", victim), ("thief", thief)):
                if c.sock.poll(10):
                    frames = c.sock.recv_multipart()
                    if frames[0] == p.REPLY:
                        got[name] = (frames[2], frames[3])
        assert got["victim"][0] == p.OK
        assert json.loads(got["victim"][1]) == {"got": {"who": "victim"}}
        # The thief gets its own call's answer or a refusal, never the victim's.
        assert b"victim" not in got["thief"][1], got
        assert proc.poll() is None
    finally:
        victim.close()
        thief.close()
