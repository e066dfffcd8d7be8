"""The join link over tcp on 127.0.0.1 with real CURVE: ClusterListener and Uplink."""
import json
import logging
import os
import queue
import socket
import time

import pytest
import zmq

from sora import protocol as p
from sora.cluster import keys as k
from sora.cluster.link import ClusterListener, Uplink


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Events:
    """What the listener's callbacks reported, in order, to wait on with a deadline."""

    def __init__(self):
        self.q = queue.Queue()

    def on_members(self, host, members):
        self.q.put(("members", host, members, time.monotonic()))

    def on_lost(self, host, why):
        self.q.put(("lost", host, why, time.monotonic()))

    def next(self, timeout=5.0):
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no callback within {timeout} s") from None

    def none_within(self, seconds):
        try:
            event = self.q.get(timeout=seconds)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected callback {event}")


@pytest.fixture
def rings(tmp_path):
    main = k.init_keys(str(tmp_path / "main"))
    joined = k.init_keys(str(tmp_path / "joined"))
    k.add_allowed(main.directory, os.path.join(joined.directory, k.HOST_CERT), "joined")
    return main, joined


@pytest.fixture
def cluster(rings):
    main, _ = rings
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    events = Events()
    listener = ClusterListener(endpoint, main, events.on_members, events.on_lost)
    listener.start()
    started = [listener]
    yield endpoint, listener, events, started
    for item in started:
        item.stop()


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_join_members_and_heartbeats(rings, cluster, caplog):
    main, joined = rings
    endpoint, listener, events, started = cluster
    caplog.set_level(logging.INFO, logger="sora.cluster")
    uplink = Uplink(endpoint, joined, main.public, "h2", {"functions": {"echo": {}}})
    uplink.start()
    started.append(uplink)
    kind, host, members, _ = events.next()
    assert (kind, host, members) == ("members", "h2", {"functions": {"echo": {}}})
    [info] = listener.hosts()
    assert info["name"] == "h2" and info["key"] == joined.public_text
    assert info["address"] == "127.0.0.1"
    assert listener.host_key("h2") == joined.public_text
    uplink.set_members({"functions": {"echo": {}, "hello": {}}})
    kind, host, members, _ = events.next()
    assert kind == "members" and set(members["functions"]) == {"echo", "hello"}
    # Heartbeats both ways keep it joined well past the 3 s liveness.
    events.none_within(4.0)
    assert uplink.joined and uplink.connects == 1
    # The joined host's own log says the join took, once (its operator has no /healthz).
    assert caplog.text.count(f"joined the cluster at {endpoint} as h2") == 1
    # Leaving says so at once.
    uplink.stop()
    started.remove(uplink)
    kind, host, why, _ = events.next(timeout=2)
    assert (kind, host, why) == ("lost", "h2", "it left")


def test_a_silent_host_is_dropped_within_3_s(rings, cluster):
    main, joined = rings
    endpoint, listener, events, _ = cluster
    ctx = zmq.Context()
    sock = k.client_socket(ctx, zmq.DEALER, joined, main.public)
    sock.connect(endpoint)
    try:
        sock.send_multipart([p.JOIN, b"mute", b"{}"])
        kind, _, _, joined_at = events.next()
        assert kind == "members"
        assert sock.poll(2000) and sock.recv_multipart() == [p.HEARTBEAT]
        kind, host, why, lost_at = events.next(timeout=5)
        assert (kind, host, why) == ("lost", "mute", "silent for 3 s")
        assert 2.9 <= lost_at - joined_at <= 3.5
        assert listener.hosts() == []
        # Whatever it sends next is answered "I do not know you: join again".
        sock.send_multipart([p.HEARTBEAT])
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and sock.poll(3000):
            if sock.recv_multipart() == [p.DISCONNECT]:
                break
        else:
            raise AssertionError("no DISCONNECT for an unknown host")
    finally:
        sock.close(0)
        ctx.term()


def test_rejoin_after_the_listener_restarts(rings, cluster):
    main, joined = rings
    endpoint, listener, events, started = cluster
    uplink = Uplink(endpoint, joined, main.public, "h2", {"n": 1})
    uplink.start()
    started.append(uplink)
    assert events.next()[:2] == ("members", "h2")
    listener.stop()
    started.remove(listener)
    wait_for(lambda: not uplink.joined, timeout=5)   # it noticed the silence
    fresh = Events()
    again = ClusterListener(endpoint, main, fresh.on_members, fresh.on_lost)
    again.start()
    started.insert(0, again)
    # Back by itself: within the backoff (1 s, then 2 s) plus a connection.
    kind, host, members, _ = fresh.next(timeout=8)
    assert (kind, host, members) == ("members", "h2", {"n": 1})
    wait_for(lambda: uplink.joined)


def test_listener_restart_within_liveness_is_a_quick_rejoin(rings, cluster):
    """A listener back before the uplink gave up: the uplink's old connection reconnects
    and its heartbeat is answered DISCONNECT, so it joins again at once."""
    main, joined = rings
    endpoint, listener, events, started = cluster
    uplink = Uplink(endpoint, joined, main.public, "h2", {})
    uplink.start()
    started.append(uplink)
    events.next()
    listener.stop()
    started.remove(listener)
    fresh = Events()
    again = ClusterListener(endpoint, main, fresh.on_members, fresh.on_lost)
    again.start()
    started.insert(0, again)
    assert fresh.next(timeout=4)[:2] == ("members", "h2")
    assert uplink.connects == 1


def test_an_unknown_key_is_refused_and_logged_with_its_address(tmp_path, rings, cluster,
                                                                caplog):
    main, _ = rings
    endpoint, listener, events, started = cluster
    stranger = k.init_keys(str(tmp_path / "stranger"))
    with caplog.at_level(logging.WARNING):
        uplink = Uplink(endpoint, stranger, main.public, "intruder", {})
        uplink.start()
        started.append(uplink)
        wait_for(lambda: "refused a connection from 127.0.0.1" in caplog.text)
    assert f"its key {stranger.public_text} is not on the allow-list" in caplog.text
    # The joined host is told why, and says what to do about it.
    wait_for(lambda: "refused this host (intruder): its key" in caplog.text)
    assert "is not on its allow-list (add " in uplink.refused
    assert "then restart the main host's supervisor" in uplink.refused
    events.none_within(0.5)
    assert listener.hosts() == [] and not uplink.joined
    # Allowed now, and the listener reads its allow-list again: the uplink's next try joins.
    k.add_allowed(main.directory, os.path.join(stranger.directory, k.HOST_CERT), "stranger")
    listener.reload_keys()
    kind, host, _, _ = events.next(timeout=10)
    assert (kind, host) == ("members", "intruder")
    wait_for(lambda: uplink.joined and not uplink.refused)


def test_a_second_host_with_the_same_name_is_refused(tmp_path, rings, cluster, caplog):
    main, joined = rings
    endpoint, listener, events, started = cluster
    other = k.init_keys(str(tmp_path / "other"))
    k.add_allowed(main.directory, os.path.join(other.directory, k.HOST_CERT), "other")
    # The allow-list is read when the authenticator starts: restart the listener.
    listener.stop()
    started.remove(listener)
    listener = ClusterListener(endpoint, main, events.on_members, events.on_lost)
    listener.start()
    started.insert(0, listener)
    first = Uplink(endpoint, joined, main.public, "twin", {"first": True})
    first.start()
    started.append(first)
    assert events.next()[2] == {"first": True}
    with caplog.at_level(logging.WARNING):
        second = Uplink(endpoint, other, main.public, "twin", {"second": True})
        second.start()
        started.append(second)
        wait_for(lambda: "refused host 'twin' from 127.0.0.1" in caplog.text)
        wait_for(lambda: "refused this host (twin)" in caplog.text)
    assert "the name 'twin' is already used by the host at 127.0.0.1" in caplog.text
    [info] = listener.hosts()
    assert info["key"] == joined.public_text and info["members"] == {"first": True}


def test_members_that_are_not_json_are_ignored(rings, cluster, caplog):
    main, joined = rings
    endpoint, listener, events, _ = cluster
    ctx = zmq.Context()
    sock = k.client_socket(ctx, zmq.DEALER, joined, main.public)
    sock.connect(endpoint)
    try:
        sock.send_multipart([p.JOIN, b"h3", json.dumps({"a": 1}).encode()])
        assert events.next()[2] == {"a": 1}
        with caplog.at_level(logging.WARNING):
            sock.send_multipart([p.MEMBERS, b"[not json"])
            wait_for(lambda: "sent members that are not a JSON object" in caplog.text)
        assert listener.hosts()[0]["members"] == {"a": 1}
    finally:
        sock.close(0)
        ctx.term()


def test_built_from_the_host_configs(tmp_path):
    from sora.cluster.link import listener_for, uplink_for
    from sora.config import load_host_config
    main = k.init_keys(str(tmp_path / "main" / "keys"))
    joined = k.init_keys(str(tmp_path / "joined" / "keys"))
    k.add_allowed(main.directory, os.path.join(joined.directory, k.HOST_CERT), "joined")
    k.add_allowed(joined.directory, os.path.join(main.directory, k.HOST_CERT), "main")
    port = free_port()
    configs = {}
    for name, cluster in (("main", f"listen: tcp://127.0.0.1:{port}"),
                          ("joined", f"controlPlane: tcp://127.0.0.1:{port}\n"
                                     "  advertise: 127.0.0.1")):
        path = tmp_path / name / "host-config.yaml"
        path.write_text(f"functionPaths: [fn]\nserver: {{httpPort: 8080}}\ncluster:\n"
                        f"  {cluster}\n  keys: keys\n  name: {name}\n")
        configs[name] = load_host_config(str(path), read_functions=False).cluster
    assert uplink_for(configs["main"]) is None and listener_for(configs["joined"], None,
                                                                None) is None
    events = Events()
    listener = listener_for(configs["main"], events.on_members, events.on_lost)
    uplink = uplink_for(configs["joined"], {"functions": {}})
    listener.start()
    uplink.start()
    try:
        assert events.next()[:2] == ("members", "joined")
    finally:
        uplink.stop()
        listener.stop()
        listener.stop()   # twice is harmless


def test_members_json_cannot_hold_fail_in_the_caller(rings):
    main, joined = rings
    uplink = Uplink("tcp://127.0.0.1:1", joined, main.public, "h", {})
    with pytest.raises(TypeError):
        uplink.set_members({"bad": object()})
    uplink.stop()   # never started: nothing to do


def test_a_host_under_the_main_hosts_own_name_is_refused_and_told_why(rings, caplog):
    # Two machines with the same host name (clones) and no cluster.name: the joined one would
    # be taken for the main host; it is refused, and its own log says what to change.
    main, joined = rings
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    events = Events()
    listener = ClusterListener(endpoint, main, events.on_members, events.on_lost,
                               own_name="vm")
    listener.start()
    uplink = Uplink(endpoint, joined, main.public, "vm", {"functions": {"echo": {}}})
    try:
        with caplog.at_level(logging.WARNING):
            uplink.start()
            wait_for(lambda: "refused this host (vm)" in caplog.text)
        assert "the name 'vm' is the main host's own" in uplink.refused
        assert "give this host another cluster.name" in uplink.refused
        events.none_within(0.3)
        assert listener.hosts() == [] and not uplink.joined
    finally:
        uplink.stop()
        listener.stop()
