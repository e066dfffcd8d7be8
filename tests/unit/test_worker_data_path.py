"""A real worker process (one Node instance) serving fake clients: DEALER sockets in this
process against the worker's own ROUTER, with a real control plane thread. What is checked is
the worker's side of the direct data path: per-client windows, one FIFO, heartbeats both ways,
and DISCONNECT when it stops."""
import os
import signal
import subprocess
import sys
import time

import pytest
import zmq

from sora import config_snapshot
from sora import protocol as p
from sora.config import load_function_config
from sora.control.plane import ControlPlane
from tests.support import write_function

SLEEPY = """
exports.handler = async (event) => {
  await new Promise((resolve) => setTimeout(resolve, 40));
  return { got: event };
};
"""


@pytest.fixture
def served(tmp_path):
    """([control plane], worker process, its data endpoint) for a function of one
    instance (a test that replaces the plane appends the new one)."""
    fn_dir = write_function(tmp_path, "sleepy", {"index.js": SLEEPY}, name="sleepy", isolation="none",
                            minInstances=1, maxInstances=1, timeout=10)
    fn = load_function_config(str(fn_dir))
    state_dir = str(tmp_path / "state")
    p.make_run_dir(state_dir)
    snapshot = config_snapshot.snapshot_path(state_dir)
    config_snapshot.write(snapshot, [fn], [])
    plane = start_plane(state_dir)
    planes = [plane]
    proc = subprocess.Popen([sys.executable, "-m", "sora.worker", "--name", fn.name,
                             "--functions", snapshot, "--state-dir", state_dir,
                             "--control", p.control_endpoint(state_dir)],
                            stdin=subprocess.DEVNULL)
    try:
        event, identity = plane.events.get(timeout=30)
        assert (event, identity) == ("ready", p.worker_identity(fn.name, proc.pid))
        endpoint = plane.members()["functions"]["sleepy"]["workers"][0]["endpoint"]
        assert endpoint == p.worker_data_endpoint(state_dir, proc.pid)
        yield planes, proc, endpoint
    finally:
        proc.kill()
        proc.wait()
        for plane in planes:
            stop_plane(plane)


def start_plane(state_dir):
    plane = ControlPlane(p.control_endpoint(state_dir))
    plane.control.set_functions({"sleepy": {"maxQueued": 10, "maxWait": 5.0,
                                            "available": True}})
    plane.start()
    return plane


def stop_plane(plane):
    if plane.is_alive():
        plane.control.stop()
        plane.join(5)
        plane.control.close()


class Client:
    """A client as the invocation client behaves: HELLO, then calls within its window."""

    def __init__(self, endpoint):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.sock.send_multipart([p.HELLO])
        self.window = 0
        self.replies = []   # (request id, status, monotonic arrival)
        self.heartbeats = 0
        self.disconnected = False

    def take(self, timeout=0.0):
        """Handle what has arrived (waiting up to `timeout` for the first message)."""
        if not self.sock.poll(int(timeout * 1000)):
            return
        while self.sock.poll(0):
            frames = self.sock.recv_multipart()
            if frames[0] == p.CREDIT:
                self.window += int(frames[1])
            elif frames[0] == p.REPLY:
                self.window += 1
                self.replies.append((frames[1], frames[2], time.monotonic()))
            elif frames[0] == p.HEARTBEAT:
                self.heartbeats += 1
            elif frames[0] == p.DISCONNECT:
                self.disconnected = True

    def call(self, request_id: bytes):
        assert self.window > 0
        self.window -= 1
        self.sock.send_multipart([p.REQUEST, request_id, b'{"n":1}'])

    def close(self):
        self.sock.close(0)


def until(predicate, timeout=10.0, *clients):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        for c in clients:
            c.take(0.01)


def test_each_client_gets_its_window_and_a_flood_does_not_starve_another(served):
    _, _, endpoint = served
    flood, other = Client(endpoint), Client(endpoint)
    try:
        until(lambda: flood.window and other.window, 10, flood, other)
        # Each client gets the whole window: maxInstances (1) x credits per instance (2).
        assert flood.window == other.window == 2
        sent = 0
        # The flood keeps its window full with 30 calls of 40 ms; the other client's one call
        # comes once the flood is under way.
        while len(flood.replies) < 30:
            while flood.window and sent < 30:
                flood.call(b"f%d" % sent)
                sent += 1
            if sent == 4 and not other.replies and other.window == 2:
                other.call(b"mine")
            flood.take(0.01)
            other.take(0)
        other_at = other.replies[0][2]
        before = sum(1 for _, _, at in flood.replies if at < other_at)
        # In one FIFO it waited behind what the flood held then (its window, 2), not behind
        # the 26 calls the flood had not sent yet.
        assert before <= 4, before
        assert all(status == p.OK for _, status, _ in flood.replies + other.replies)
    finally:
        flood.close()
        other.close()


def test_heartbeats_to_clients_and_to_the_control_plane(served):
    (plane,), proc, endpoint = served
    c = Client(endpoint)
    try:
        start = time.monotonic()
        until(lambda: c.heartbeats >= 2, 5, c)
        assert time.monotonic() - start < 4
        c.call(b"one")
        until(lambda: c.replies, 5, c)
        # The control plane hears it (nothing else would keep it a member).
        assert plane.members()["functions"]["sleepy"]["workers"][0]["id"] == \
            f"sleepy/{proc.pid}"
    finally:
        c.close()


def test_a_stopping_worker_says_disconnect_and_still_answers_what_it_holds(served):
    _, proc, endpoint = served
    c = Client(endpoint)
    try:
        until(lambda: c.window == 2, 10, c)
        c.call(b"a")
        c.call(b"b")
        time.sleep(0.01)
        os.kill(proc.pid, signal.SIGTERM)
        until(lambda: c.disconnected and len(c.replies) == 2, 10, c)
        assert [(rid, status) for rid, status, _ in c.replies] == [(b"a", p.OK), (b"b", p.OK)]
        assert proc.wait(10) == 0
        assert not os.path.exists(endpoint[len("ipc://"):])   # its socket file is removed
    finally:
        c.close()


def test_calls_go_on_without_the_control_plane_and_the_worker_announces_itself_again(
        served, tmp_path):
    planes, proc, endpoint = served
    c = Client(endpoint)
    try:
        until(lambda: c.window == 2, 10, c)
        stop_plane(planes[0])   # the supervisor's control plane is gone (restarting)
        c.call(b"meanwhile")
        until(lambda: c.replies, 5, c)
        assert c.replies[0][:2] == (b"meanwhile", p.OK)
        # A new control plane at the same endpoint: it does not know the worker, tells it
        # so on its first heartbeat, and the worker says READY again.
        planes.append(start_plane(str(tmp_path / "state")))
        assert planes[1].events.get(timeout=10) == ("ready", p.worker_identity("sleepy",
                                                                               proc.pid))
        assert planes[1].members()["functions"]["sleepy"]["workers"][0]["endpoint"] == endpoint
    finally:
        c.close()
