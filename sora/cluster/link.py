"""The join link between hosts: a joined host's Uplink and the main host's ClusterListener.

Both run in a thread of their own (started by start(), ended by stop()); neither blocks its
caller, and neither knows what a worker is: what a host serves ("members") is a JSON object
they carry as it is. Frames (sora/protocol.py):

    joined host (Uplink: DEALER, CURVE client) -> main host (ClusterListener: ROUTER, CURVE
    server bound on cluster.listen)
        [JOIN, name, json]      on connecting, and again when the listener does not know it
        [MEMBERS, json]         whenever set_members() changes what it serves
        [HEARTBEAT]             every HEARTBEAT_INTERVAL (1 s)
        [DISCONNECT]            stop(): the host is leaving
    main host -> joined host
        [HEARTBEAT]             every 1 s to every joined host (the first right after JOIN)
        [DISCONNECT]            "I do not know you" (the listener restarted): join again
        [REFUSED, reason]       the join is refused; logged on both sides

A joined host silent for HEARTBEAT_LIVENESS intervals (3 s) is dropped (`on_lost`). An Uplink
that hears nothing for 3 s closes its socket and connects again after a backoff of 1 s, doubling
to 8 s while it stays unheard (reset once it hears the listener). A host is known by its name;
a JOIN under a name already joined is taken as that host reconnecting if it comes with the same
CURVE key (its old connection is forgotten), and refused otherwise.

Callbacks run in the listener's thread; they must not block (hand the work to your own loop).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from .. import protocol as p
from ..config import ClusterConfig
from .keys import (ZAP_DOMAIN, KeyRing, client_socket, load_keys, server_socket,
                   start_authenticator)

log = logging.getLogger("sora.cluster")

POLL_MS = 100                 # how often the threads look at stop() and set_members()
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 8.0
MAX_MEMBERS_BYTES = 4 << 20   # a MEMBERS message larger than this is refused (a bad peer)


@dataclass
class JoinedHost:
    name: str
    routing_id: bytes
    key: str            # its CURVE public key, z85 (the serverKey of its workers' endpoints)
    address: str        # its address as the listener saw the connection
    since: float        # time.time() it joined
    last_seen: float    # time.monotonic()
    members: dict


def _liveness() -> float:
    return p.HEARTBEAT_INTERVAL * p.HEARTBEAT_LIVENESS


def _members(raw: bytes) -> dict | None:
    if len(raw) > MAX_MEMBERS_BYTES:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


class ClusterListener:
    """The main host's end: accepts joins on `endpoint` from hosts whose key `ring` allows."""

    def __init__(self, endpoint: str, ring: KeyRing,
                 on_members: Callable[[str, dict], None],
                 on_lost: Callable[[str, str], None], own_name: str | None = None):
        self.endpoint = endpoint
        self.ring = ring
        # The main host's own cluster.name: a host joining under it is refused (it would be
        # taken for the main host itself), and told why, rather than joined and ignored.
        self.own_name = own_name
        self.on_members = on_members
        self.on_lost = on_lost
        self._hosts: dict[str, JoinedHost] = {}
        self._by_id: dict[bytes, str] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._ctx: zmq.Context | None = None

    def start(self) -> None:
        """Bind (a bind error raises here, in the caller) and start the thread."""
        self._ctx = zmq.Context()
        self._auth = start_authenticator(self._ctx, self.ring)
        try:
            # An allowed host still may not make the listener hold a message of any size.
            self._sock = server_socket(self._ctx, zmq.ROUTER, self.ring,
                                       max_message=MAX_MEMBERS_BYTES + 1024)
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.bind(self.endpoint)
        except zmq.ZMQError:
            self._close()
            raise
        self._thread = threading.Thread(target=self._run, name="cluster-listener", daemon=True)
        self._thread.start()
        log.info("listening for hosts joining on %s", self.endpoint)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread:
            self._thread.join()
            self._thread = None
        self._close()

    def hosts(self) -> list[dict]:
        """The joined hosts, for /healthz and `sora ls`."""
        wall = time.time() - time.monotonic()   # last_seen is monotonic
        with self._lock:
            return [{"name": h.name, "address": h.address, "key": h.key, "since": h.since,
                     "lastHeard": wall + h.last_seen, "members": h.members}
                    for h in self._hosts.values()]

    def reload_keys(self) -> None:
        """Read the allow-list again (after `sora keys add`): hosts added since may join."""
        self._auth.configure_curve(domain=ZAP_DOMAIN, location=self.ring.allowed_dir)

    def host_key(self, name: str) -> str | None:
        with self._lock:
            host = self._hosts.get(name)
            return host.key if host else None

    def _close(self) -> None:
        if self._ctx is None:
            return
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close(0)
        self._auth.stop()
        self._ctx.term()
        self._ctx = None

    # --- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        next_beat = time.monotonic()
        while not self._stopping.is_set():
            if self._sock.poll(POLL_MS):
                self._drain()
            now = time.monotonic()
            self._drop_silent(now)   # each turn (0.1 s), so a silent host goes at 3 s, not 4
            if now >= next_beat:
                next_beat = now + p.HEARTBEAT_INTERVAL
                for host in list(self._hosts.values()):
                    self._send(host.routing_id, p.HEARTBEAT)

    def _drain(self) -> None:
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) < 2:
                continue
            try:
                self._handle(frames)
            except Exception:  # noqa: BLE001 - a callback's bug must not end the link
                log.exception("cluster listener: handling a %r message failed",
                              frames[1].bytes[:1])

    def _handle(self, frames: list[zmq.Frame]) -> None:
        rid, command = frames[0].bytes, frames[1].bytes
        name = self._by_id.get(rid)
        if command == p.JOIN and len(frames) >= 4:
            self._join(rid, frames)
        elif name is None:
            if command != p.DISCONNECT:
                self._send(rid, p.DISCONNECT)   # the listener restarted: join again
        elif command == p.HEARTBEAT:
            self._hosts[name].last_seen = time.monotonic()
        elif command == p.MEMBERS and len(frames) >= 3:
            members = _members(frames[2].bytes)
            host = self._hosts[name]
            host.last_seen = time.monotonic()
            if members is None:
                log.warning("host %s (%s) sent members that are not a JSON object; ignored",
                            name, host.address)
                return
            with self._lock:
                host.members = members
            self.on_members(name, members)
        elif command == p.DISCONNECT:
            self._drop(name, "it left")

    def _join(self, rid: bytes, frames: list[zmq.Frame]) -> None:
        meta = frames[1]
        address = meta.get("Peer-Address") or "?"
        key = meta.get("User-Id") or "?"   # zmq.auth sets it to the client's z85 public key
        name = frames[2].bytes.decode("utf-8", "replace")
        members = _members(frames[3].bytes)
        if members is None or not name or len(name) > 63:
            return self._refuse(rid, address, name, "its JOIN is malformed (expected a name "
                                "and a JSON object of what it serves)")
        if name == self.own_name:
            return self._refuse(rid, address, name, f"the name {name!r} is the main host's "
                                "own (two machines with the same host name?): give this "
                                "host another cluster.name")
        same = self._hosts.get(name)
        if same is not None and same.routing_id != rid:
            if same.key != key:
                return self._refuse(rid, address, name, f"the name {name!r} is already used "
                                    f"by the host at {same.address} (another key)")
            self._forget(same)   # the same host on a new connection: it reconnected
        old_name = self._by_id.get(rid)
        if old_name == name:
            # JOIN again on the same connection (it had been told DISCONNECT while it still
            # was known, e.g. for heartbeats queued across a restart): a members update.
            host = self._hosts[name]
            host.last_seen = time.monotonic()
            with self._lock:
                host.members = members
            self.on_members(name, members)
            return
        if old_name is not None:
            self._drop(old_name, f"it joined again as {name!r}")
        now = time.monotonic()
        with self._lock:
            self._hosts[name] = JoinedHost(name, rid, key, address, time.time(), now, members)
            self._by_id[rid] = name
        log.info("host %s joined from %s", name, address)
        self._send(rid, p.HEARTBEAT)
        self.on_members(name, members)

    def _refuse(self, rid: bytes, address: str, name: str, reason: str) -> None:
        log.warning("refused host %r from %s: %s", name, address, reason)
        self._send(rid, p.REFUSED, reason.encode())

    def _drop_silent(self, now: float) -> None:
        for host in list(self._hosts.values()):
            if now - host.last_seen > _liveness():
                self._drop(host.name, f"silent for {_liveness():g} s")

    def _forget(self, host: JoinedHost) -> None:
        with self._lock:
            self._hosts.pop(host.name, None)
            self._by_id.pop(host.routing_id, None)

    def _drop(self, name: str, why: str) -> None:
        host = self._hosts.get(name)
        if host is None:
            return
        self._forget(host)
        log.warning("host %s (%s) dropped: %s", name, host.address, why)
        self.on_lost(name, why)

    def _send(self, rid: bytes, *frames: bytes) -> None:
        try:
            self._sock.send_multipart([rid, *frames], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass   # a peer gone or too slow: its silence will drop it


class Uplink:
    """A joined host's end: joins the main host at `endpoint` (its CURVE public key
    `server_key`) as `name`, tells it what this host serves, and stays joined by itself."""

    def __init__(self, endpoint: str, ring: KeyRing, server_key: bytes, name: str,
                 members: dict | None = None):
        self.endpoint = endpoint
        self.ring = ring
        self.server_key = server_key
        self.name = name
        self._members = json.dumps(members or {}).encode()
        self._members_changed = False
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self.joined = False      # the listener has answered since the last (re)connection
        self.connects = 0        # connections made (1 + reconnections), for tests and health
        self.refused = ""        # why the control plane refused this host, while it does

    def set_members(self, members: dict) -> None:
        """What this host serves now; sent to the main host from the link's thread (within
        POLL_MS). Encoded here, so a value JSON cannot hold fails in the caller."""
        encoded = json.dumps(members).encode()
        with self._lock:
            self._members = encoded
            self._members_changed = True

    def start(self) -> None:
        self._ctx = zmq.Context()
        self._thread = threading.Thread(target=self._keep_running, name="cluster-uplink",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Leave the cluster (a DISCONNECT, best effort) and end the thread."""
        self._stopping.set()
        if self._thread:
            self._thread.join()
            self._thread = None
            self._ctx.term()

    # --- the thread ----------------------------------------------------------------------------

    def _keep_running(self) -> None:
        """A bug in the loop must not leave the host out of the cluster for good."""
        while not self._stopping.is_set():
            try:
                self._run()
            except Exception:  # noqa: BLE001
                log.exception("cluster uplink failed; starting it again in %g s", BACKOFF_MAX)
                self._close()
                self._stopping.wait(BACKOFF_MAX)

    def _run(self) -> None:
        backoff = BACKOFF_FIRST
        reconnect_at = time.monotonic()
        last_heard = next_beat = 0.0
        while not self._stopping.is_set():
            now = time.monotonic()
            if self._sock is None:
                if now < reconnect_at:
                    self._stopping.wait(min(POLL_MS / 1000, reconnect_at - now))
                    continue
                self._connect()
                last_heard = next_beat = now   # the silence deadline counts from here
            ready = dict(self._poller.poll(POLL_MS))
            if self._monitor in ready and self._handshake_refused():
                last_heard = -1e9               # refused: back off, retry (it may be allowed)
            if self._sock in ready:
                heard, refused = self._drain()
                if heard:
                    last_heard = time.monotonic()
                    backoff = BACKOFF_FIRST
                    self.refused = ""
                if refused:
                    last_heard = -1e9           # treated as silence: back off, retry
            now = time.monotonic()
            with self._lock:
                changed, self._members_changed = self._members_changed, False
                members = self._members
            if changed:
                self._send(p.MEMBERS, members)
            if now >= next_beat:
                next_beat = now + p.HEARTBEAT_INTERVAL
                self._send(p.HEARTBEAT)
            if now - last_heard > _liveness():
                if not self.refused:
                    log.warning("control plane %s silent for %g s; connecting again in %g s",
                                self.endpoint, _liveness(), backoff)
                self._close()
                reconnect_at = now + backoff
                backoff = min(backoff * 2, BACKOFF_MAX)
        if self._sock is not None:
            # Half a second to deliver the goodbye (LINGER 0 would drop it); a listener that
            # is gone anyway will find the host silent.
            self._sock.setsockopt(zmq.LINGER, 500)
            self._send(p.DISCONNECT)
            self._close()

    def _connect(self) -> None:
        self._sock = client_socket(self._ctx, zmq.DEALER, self.ring, self.server_key)
        self._sock.setsockopt(zmq.LINGER, 0)
        # The handshake's outcome: a key the listener does not allow is told apart from a
        # listener that is down (ZeroMQ itself does not retry after a refused handshake).
        self._monitor = self._sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._sock.connect(self.endpoint)
        self.connects += 1
        self._join()

    def _join(self) -> None:
        with self._lock:
            members = self._members
            self._members_changed = False
        self._send(p.JOIN, self.name.encode(), members)

    def _drain(self) -> tuple[bool, bool]:
        heard = refused = False
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return heard, refused
            command = frames[0]
            if command == p.HEARTBEAT:
                heard = True
                if not self.joined:
                    # The joined host's operator sees here that the join took (the main
                    # host logs it too); again after each reconnect.
                    log.info("joined the cluster at %s as %s", self.endpoint, self.name)
                self.joined = True
            elif command == p.DISCONNECT:
                heard = True
                self.joined = False
                self._join()
            elif command == p.REFUSED:
                reason = frames[1].decode("utf-8", "replace") if len(frames) > 1 else "?"
                log.warning("control plane %s refused this host (%s): %s", self.endpoint,
                            self.name, reason)
                self.joined = False
                self.refused = reason
                refused = True

    def _handshake_refused(self) -> bool:
        refused = False
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.refused = (f"its key {self.ring.public_text} is not on its allow-list "
                                f"(add {self.ring.directory}/host.key there with `sora keys "
                                "add`, then restart the main host's supervisor: it reads its "
                                "allow-list when it starts)")
            else:
                self.refused = "the CURVE handshake failed (is controlPlaneKey its key?)"
            log.warning("control plane %s refused this host (%s): %s", self.endpoint,
                        self.name, self.refused)
            refused = True
        return refused

    def _close(self) -> None:
        self.joined = False
        if self._monitor is not None:
            self._sock.disable_monitor()
            self._monitor.close(0)
            self._monitor = None
        if self._sock is not None:
            self._sock.close()   # its LINGER: 0, or 0.5 s for the last DISCONNECT
            self._sock = None

    def _send(self, *frames: bytes) -> None:
        try:
            self._sock.send_multipart(list(frames), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass   # not connected yet or the queue is full: the heartbeat logic sorts it out


def listener_for(cluster: ClusterConfig, on_members: Callable[[str, dict], None],
                 on_lost: Callable[[str, str], None]) -> ClusterListener | None:
    """The main host's listener for its host config's `cluster:` (None: it takes no joins).
    Not started: call start() (a bind error raises there)."""
    if not cluster.listen:
        return None
    return ClusterListener(cluster.listen, load_keys(cluster.keys), on_members, on_lost,
                           own_name=cluster.name)


def uplink_for(cluster: ClusterConfig, members: dict | None = None) -> Uplink | None:
    """A joined host's uplink for its host config's `cluster:` (None: it joins no one)."""
    if not cluster.controlPlane:
        return None
    return Uplink(cluster.controlPlane, load_keys(cluster.keys), cluster.controlPlaneKey,
                  cluster.name, members)
