"""The control plane: which workers serve which function at which endpoint, their liveness,
and the instance budget. It runs on its own thread inside the supervisor and does no per-call
work: invocations go from each client (gateway process, dispatcher, `sora invoke --local`)
straight to a worker's own ROUTER (docs/architecture.md, "Control plane and data path").

One ROUTER socket, `control.sock`, takes two kinds of peers:

- workers (DEALER, identity `<function>/<pid>`) announce themselves with READY once their
  data endpoint is bound, ask for instances (GROW -> GRANT, SHRINK), and heartbeat every
  second with their instance count and the invocations they hold. A worker silent for
  HEARTBEAT_LIVENESS intervals is forgotten and the arbiter told ("silent": it kills it); one
  the arbiter reaped is forgotten at once (`forget_worker`). Forgetting a worker takes it out
  of MEMBERS, which is how every client learns to fail what it had in flight there.
- clients SUBSCRIBE and get MEMBERS (the JSON of `members()`) at once and after every change;
  they heartbeat and are heartbeat back, and a silent one is dropped. A client's HEARTBEAT
  the plane does not know (the supervisor restarted under it) subscribes it again, so clients
  need no reconnect logic of their own. STATUS answers what /healthz shows.

The arbiter talks to the thread over an inproc PAIR socket (`ControlHandle`); the thread tells
the arbiter about workers becoming ready or silent through a queue plus a wake-up callback.
`set_remote`/`drop_remote` merge workers of other hosts into MEMBERS (the cluster code).
"""
from __future__ import annotations

import itertools
import json
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import zmq

from .. import protocol as p

log = logging.getLogger("sora.control")

_HWM = 100_000
_plane_numbers = itertools.count()


@dataclass
class WorkerEntry:
    identity: bytes
    function: str
    endpoint: str
    last_seen: float
    instances: int = 0   # running or starting, as granted (or reported at READY)
    held: int = 0        # invocations it holds, running or waiting (its last heartbeat)
    draining: bool = False   # it said DISCONNECT: it stops once it has answered what it holds


@dataclass
class FunctionEntry:
    name: str
    max_queued: int
    max_wait: float
    concurrency: int = 1 << 30
    memory: int = 0
    available: bool = True
    reason: str = ""
    workers: list[WorkerEntry] = field(default_factory=list)


class ControlHandle:
    """The arbiter's handle on the control plane thread (used from one thread only)."""

    def __init__(self, sock: zmq.Socket, events: "queue.Queue[tuple[str, bytes]]"):
        self._sock = sock
        self.events = events

    def set_functions(self, table: dict[str, dict]) -> None:
        self._sock.send_multipart([b"functions", json.dumps(table).encode()])

    def set_status(self, snapshot: dict) -> None:
        self._sock.send_multipart([b"status", json.dumps(snapshot).encode()])

    def forget_worker(self, identity: bytes) -> None:
        self._sock.send_multipart([b"forget", identity])

    def set_remote(self, host: str, functions: dict) -> None:
        self._sock.send_multipart([b"remote", host.encode(), json.dumps(functions).encode()])

    def drop_remote(self, host: str) -> None:
        self._sock.send_multipart([b"drop-remote", host.encode()])

    def stop(self) -> None:
        self._sock.send_multipart([b"stop"])

    def close(self) -> None:
        self._sock.close(linger=0)


class ControlPlane(threading.Thread):
    def __init__(self, endpoint: str, wake: Callable[[], None] = lambda: None,
                 max_instances: int = 1 << 30, max_memory_mb: int = 1 << 40,
                 host: str | None = None):
        super().__init__(name="sora-control", daemon=True)
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.SNDHWM, _HWM)
        self.sock.setsockopt(zmq.RCVHWM, _HWM)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)   # an unroutable send raises
        self.sock.bind(endpoint)
        # One endpoint per plane: a closing plane's inproc name may linger a moment.
        pair_endpoint = f"inproc://sora-control-{next(_plane_numbers)}"
        self._pair = self.ctx.socket(zmq.PAIR)
        self._pair.bind(pair_endpoint)
        arbiter_end = self.ctx.socket(zmq.PAIR)
        arbiter_end.connect(pair_endpoint)
        self.events: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.control = ControlHandle(arbiter_end, self.events)
        self._wake = wake
        self.host = host or socket.gethostname()
        self.functions: dict[str, FunctionEntry] = {}
        self.workers: dict[bytes, WorkerEntry] = {}
        self.subscribers: dict[bytes, float] = {}   # client identity -> last heard
        # host -> {function: {"workers": [...], "maxQueued"?, "maxWait"?}} (set_remote)
        self.remote: dict[str, dict] = {}
        self.status_snapshot: dict = {}
        self.version = 0
        self._members_body = b""   # MEMBERS as last sent, without its version
        self._members = b""
        self.running = True
        self.max_instances, self.max_memory_mb = max_instances, max_memory_mb

    def _notify(self, event: str, identity: bytes) -> None:
        self.events.put((event, identity))
        self._wake()

    def _send(self, identity: bytes, *frames: bytes) -> bool:
        try:
            self.sock.send_multipart([identity, *frames], zmq.NOBLOCK)
            return True
        except zmq.ZMQError:
            return False   # the peer is gone (or not keeping up): it hears on its next beat

    # --- membership -----------------------------------------------------------------------------
    def members(self) -> dict:
        """What clients are told: per function, whether it serves and at which workers."""
        functions: dict[str, dict] = {}
        for name, fe in self.functions.items():
            functions[name] = {
                "available": fe.available, "reason": fe.reason, "maxQueued": fe.max_queued,
                "maxWait": fe.max_wait,
                "workers": [{"id": w.identity.decode(), "endpoint": w.endpoint,
                             "host": self.host, "serverKey": None} for w in fe.workers]}
        for host in sorted(self.remote):
            for name, info in self.remote[host].items():
                entry = functions.get(name)
                if entry is None:
                    # Served only on another host: it serves if that host says so.
                    entry = functions[name] = {
                        "available": True, "reason": "",
                        "maxQueued": info.get("maxQueued", 100),
                        "maxWait": info.get("maxWait", 3.0), "workers": []}
                for w in info.get("workers", []):
                    entry["workers"].append({"id": w["id"], "endpoint": w["endpoint"],
                                             "host": w.get("host", host),
                                             "serverKey": w.get("serverKey")})
        return {"version": self.version, "functions": functions}

    def publish_members(self) -> None:
        """Send MEMBERS to every subscriber if it changed since it was last sent."""
        members = self.members()
        body = json.dumps(members["functions"], sort_keys=True).encode()
        if body == self._members_body:
            return
        self._members_body = body
        self.version += 1
        members["version"] = self.version
        self._members = json.dumps(members).encode()
        for client in list(self.subscribers):
            self._send(client, p.MEMBERS, self._members)

    def subscribe(self, client: bytes, now: float) -> None:
        self.subscribers[client] = now
        if not self._members:
            self.publish_members()
        self._send(client, p.MEMBERS, self._members)

    def set_remote(self, host: str, functions: dict) -> None:
        """Workers of another host, merged into MEMBERS: {function: {"workers": [{"id",
        "endpoint", "host", "serverKey"}], ...}}. Called on this thread (the cluster code) or
        through `ControlHandle.set_remote`."""
        self.remote[host] = functions
        self.publish_members()

    def drop_remote(self, host: str) -> None:
        if self.remote.pop(host, None) is not None:
            self.publish_members()

    # --- peers ----------------------------------------------------------------------------------
    def handle_peers(self) -> None:
        now = time.monotonic()
        changed = False
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(frames) < 2:
                continue
            identity, cmd = frames[0], frames[1]
            worker = self.workers.get(identity)
            if worker is not None:
                worker.last_seen = now
            elif identity in self.subscribers:
                self.subscribers[identity] = now
            if cmd == p.HEARTBEAT:
                if len(frames) == 4:   # a worker's: [HEARTBEAT, instances, held]
                    if worker is None:
                        # A worker we forgot (it fell silent, then came back): announce again.
                        self._send(identity, p.DISCONNECT)
                    else:
                        worker.held = _int(frames[3])
                elif identity not in self.subscribers:
                    self.subscribe(identity, now)   # a client the plane lost (it restarted)
            elif cmd == p.READY and len(frames) == 5:
                changed |= self.register(identity, frames[2].decode(), frames[3].decode(),
                                         _int(frames[4]), now)
            elif cmd == p.GROW and worker is not None and len(frames) == 3:
                self._send(identity, p.GRANT,
                           str(self.grant(worker, _int(frames[2]))).encode())
            elif cmd == p.SHRINK and worker is not None and len(frames) == 3:
                worker.instances = max(0, worker.instances - _int(frames[2]))
            elif cmd == p.DISCONNECT and worker is not None:
                # It answers what it holds, then exits: it stays a member until the arbiter
                # reaps it (or it falls silent), so clients keep waiting for those answers.
                worker.draining = True
            elif cmd == p.SUBSCRIBE:
                self.subscribe(identity, now)
            elif cmd == p.BYE:
                self.subscribers.pop(identity, None)
            elif cmd == p.STATUS and len(frames) >= 3:
                self._send(identity, p.REPLY, frames[2], p.OK, self.status_body())
        if changed:
            self.publish_members()

    def register(self, identity: bytes, function: str, endpoint: str, instances: int,
                 now: float) -> bool:
        if identity in self.workers:
            self.forget(identity, "re-registered", publish=False)
        fe = self.functions.get(function)
        if fe is None:
            log.warning("worker %s announced unknown function %r", identity, function)
            self._send(identity, p.DISCONNECT)
            return False
        worker = WorkerEntry(identity, function, endpoint, now, instances=instances)
        self.workers[identity] = worker
        fe.workers.append(worker)
        log.info("worker %s ready for %s at %s", identity.decode(), function, endpoint)
        self._notify("ready", identity)
        return True

    def grant(self, worker: WorkerEntry, wanted: int) -> int:
        """How many more instances a worker may start (it asked for `wanted`): what the
        function's `concurrency` over its workers and the host's limits leave."""
        fe = self.functions.get(worker.function)
        if fe is None or wanted <= 0:
            return 0
        function_room = fe.concurrency - sum(w.instances for w in fe.workers)
        host_instances = host_memory = 0
        for w in self.workers.values():
            host_instances += w.instances
            other = self.functions.get(w.function)
            host_memory += w.instances * (other.memory if other else 0)
        room = min(wanted, function_room, self.max_instances - host_instances)
        if fe.memory:
            room = min(room, (self.max_memory_mb - host_memory) // fe.memory)
        room = max(0, room)
        worker.instances += room
        return room

    def forget(self, identity: bytes, why: str, publish: bool = True) -> None:
        worker = self.workers.pop(identity, None)
        if worker is None:
            return
        fe = self.functions.get(worker.function)
        if fe is not None and worker in fe.workers:
            fe.workers.remove(worker)
        log.info("forgot worker %s (%s)", identity.decode(), why)
        if publish:
            self.publish_members()

    # --- control from the arbiter ---------------------------------------------------------------
    def handle_control(self) -> None:
        while True:
            try:
                frames = self._pair.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            cmd = frames[0]
            if cmd == b"functions":
                self.set_functions(json.loads(frames[1]))
            elif cmd == b"status":
                self.status_snapshot = json.loads(frames[1])
            elif cmd == b"forget":
                self.forget(frames[1], "process exited")
            elif cmd == b"remote":
                self.set_remote(frames[1].decode(), json.loads(frames[2]))
            elif cmd == b"drop-remote":
                self.drop_remote(frames[1].decode())
            elif cmd == b"stop":
                self.running = False

    def set_functions(self, table: dict[str, dict]) -> None:
        for name, spec in table.items():
            fe = self.functions.get(name)
            if fe is None:
                fe = self.functions[name] = FunctionEntry(name, spec["maxQueued"],
                                                          spec["maxWait"])
            fe.max_queued, fe.max_wait = spec["maxQueued"], spec["maxWait"]
            fe.concurrency = spec.get("concurrency", fe.concurrency)
            fe.memory = spec.get("memory", fe.memory)
            fe.available, fe.reason = spec["available"], spec.get("reason", "")
        self.publish_members()

    def status_body(self) -> bytes:
        functions = {name: dict(info) for name, info in
                     self.status_snapshot.get("functions", {}).items()}
        for name, fe in self.functions.items():
            info = functions.setdefault(name, {})
            info["inFlight"] = sum(w.held for w in fe.workers)
            info["instances"] = sum(w.instances for w in fe.workers)
            info["workers"] = len(fe.workers)
        hosts = {self.host: sorted(name for name, fe in self.functions.items() if fe.workers)}
        for host, served in self.remote.items():
            hosts[host] = sorted(name for name, info in served.items() if info.get("workers"))
        return json.dumps({**self.status_snapshot, "functions": functions,
                           "hosts": hosts}).encode()

    # --- timers ---------------------------------------------------------------------------------
    def beat(self, now: float) -> None:
        silent_after = p.HEARTBEAT_INTERVAL * p.HEARTBEAT_LIVENESS
        for identity, worker in list(self.workers.items()):
            if now - worker.last_seen > silent_after:
                self.forget(identity, f"silent for {now - worker.last_seen:.1f}s")
                self._notify("silent", identity)
            else:
                self._send(identity, p.HEARTBEAT)
        for client, last in list(self.subscribers.items()):
            if now - last > silent_after:
                del self.subscribers[client]
            else:
                self._send(client, p.HEARTBEAT)

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._pair, zmq.POLLIN)
        next_beat = time.monotonic() + p.HEARTBEAT_INTERVAL
        while self.running:
            timeout = max(0.001, next_beat - time.monotonic())
            events = dict(poller.poll(max(1, int(timeout * 1000))))
            if self.sock in events:
                self.handle_peers()
            if self._pair in events:
                self.handle_control()
            now = time.monotonic()
            if now >= next_beat:
                self.beat(now)
                next_beat = now + p.HEARTBEAT_INTERVAL
        self.close()

    def close(self) -> None:
        self.sock.close(linger=0)
        self._pair.close(linger=0)


def _int(frame: bytes) -> int:
    try:
        return int(frame)
    except ValueError:
        return 0
