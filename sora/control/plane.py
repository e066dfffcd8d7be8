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
Across hosts (docs/architecture.md, "Several hosts"): on the main host, `set_remote` /
`drop_remote` merge the workers of joined hosts into MEMBERS (the cluster listener's members,
checked by the supervisor), and a function only a joined host serves comes with its `config`
from there; on a joined host, `on_local` is given this host's own membership (`local_members`,
with each function's config and load) whenever it changes, for the Uplink. STATUS shows every
host (`hosts`) and, per function, the hosts serving it.
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
from .admin import AdminRequest

log = logging.getLogger("sora.control")

_HWM = 100_000
# A function's live figures, summed over its workers from their heartbeats (status keys).
FIGURES = ("busy", "idle", "starting", "queued")
_plane_numbers = itertools.count()


@dataclass
class WorkerEntry:
    identity: bytes
    function: str
    endpoint: str
    last_seen: float
    instances: int = 0   # running or starting, as granted (or reported at READY)
    held: int = 0        # invocations it holds, running or waiting (its last heartbeat)
    # Its instances by state and the invocations waiting for one (its last heartbeat): what
    # the status (so /healthz, /api/functions) and /metrics show per function.
    figures: tuple[int, int, int, int] = (0, 0, 0, 0)   # busy, idle, starting, queued
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
    removed: bool = False   # gone from the config (reload): listed while its workers drain
    workers: list[WorkerEntry] = field(default_factory=list)


@dataclass
class RemoteHost:
    """A joined host as the status shows it (kept, as "lost", after it is dropped)."""
    address: str | None
    state: str           # "joined" or "lost"
    since: float         # time.time() it joined, or was lost
    last_heard: float    # time.time()
    functions: dict = field(default_factory=dict)   # its members, as set_remote got them


class ControlHandle:
    """The arbiter's handle on the control plane thread (used from one thread only)."""

    def __init__(self, sock: zmq.Socket, events: "queue.Queue[tuple[str, bytes]]"):
        self._sock = sock
        self.events = events

    def set_functions(self, table: dict[str, dict]) -> None:
        self._sock.send_multipart([b"functions", json.dumps(table).encode()])

    def set_status(self, snapshot: dict) -> None:
        self._sock.send_multipart([b"status", json.dumps(snapshot).encode()])

    def answer_admin(self, request: AdminRequest, answer: dict) -> None:
        """Answer an admin request (see sora/control/admin.py) on the admin socket."""
        self._sock.send_multipart([b"admin", *request.answer_frames(answer)])

    def forget_worker(self, identity: bytes) -> None:
        self._sock.send_multipart([b"forget", identity])

    def set_remote(self, host: str, functions: dict, address: str | None = None) -> None:
        self._sock.send_multipart([b"remote", host.encode(), json.dumps(functions).encode(),
                                   (address or "").encode()])

    def drop_remote(self, host: str) -> None:
        self._sock.send_multipart([b"drop-remote", host.encode()])

    def stop(self) -> None:
        self._sock.send_multipart([b"stop"])

    def close(self) -> None:
        self._sock.close(linger=0)


class ControlPlane(threading.Thread):
    def __init__(self, endpoint: str, wake: Callable[[], None] = lambda: None,
                 max_instances: int = 1 << 30, max_memory_mb: int = 1 << 40,
                 host: str | None = None, server_key: str | None = None,
                 address: str | None = None,
                 on_local: Callable[[dict], None] | None = None,
                 heard: Callable[[], dict[str, float]] | None = None,
                 admin_endpoint: str | None = None):
        """`host`: this host's name in the cluster; `server_key`: its CURVE public key (z85),
        the serverKey of its workers' tcp endpoints; `address`: what status shows as its
        address; `on_local(members)`: told this host's own membership on every change (a
        joined host's Uplink); `heard()`: joined host name -> time.time() last heard (the
        cluster listener), for status. `admin_endpoint`: where to take admin requests
        (sora/control/admin.py), handed to the arbiter as ("admin", AdminRequest) events."""
        super().__init__(name="sora-control", daemon=True)
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.SNDHWM, _HWM)
        self.sock.setsockopt(zmq.RCVHWM, _HWM)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)   # an unroutable send raises
        self.sock.bind(endpoint)
        self.admin: zmq.Socket | None = None
        if admin_endpoint is not None:
            self.admin = self.ctx.socket(zmq.ROUTER)
            self.admin.setsockopt(zmq.LINGER, 0)
            self.admin.bind(admin_endpoint)
        # One endpoint per plane: a closing plane's inproc name may linger a moment.
        pair_endpoint = f"inproc://sora-control-{next(_plane_numbers)}"
        self._pair = self.ctx.socket(zmq.PAIR)
        self._pair.bind(pair_endpoint)
        arbiter_end = self.ctx.socket(zmq.PAIR)
        arbiter_end.connect(pair_endpoint)
        # ("ready" | "silent", worker identity) or ("admin", AdminRequest), for the arbiter.
        self.events: queue.Queue[tuple[str, object]] = queue.Queue()
        self.control = ControlHandle(arbiter_end, self.events)
        self._wake = wake
        self.host = host or socket.gethostname()
        self.server_key = server_key
        self.address = address
        self.started = time.time()
        self._on_local = on_local
        self._local_sent = b""
        self._heard = heard or (lambda: {})
        # The functions' configs (config snapshot entries), given with set_functions.
        self.configs: dict[str, dict] = {}
        self.functions: dict[str, FunctionEntry] = {}
        self.workers: dict[bytes, WorkerEntry] = {}
        self.subscribers: dict[bytes, float] = {}   # client identity -> last heard
        # Joined hosts (set_remote): their members {function: {"workers": [...],
        # "available"?, "reason"?, "maxQueued"?, "maxWait"?, "config"?, "instances"?,
        # "inFlight"?, "state"?}}, and the lost ones until they come back.
        self.hosts: dict[str, RemoteHost] = {}
        self.status_snapshot: dict = {}
        self.version = 0
        self._members_body = b""   # MEMBERS as last sent, without its version
        self._members = b""
        self.running = True
        self.max_instances, self.max_memory_mb = max_instances, max_memory_mb

    def _notify(self, event: str, identity) -> None:
        self.events.put((event, identity))
        self._wake()

    def _send(self, identity: bytes, *frames: bytes) -> bool:
        try:
            self.sock.send_multipart([identity, *frames], zmq.NOBLOCK)
            return True
        except zmq.ZMQError:
            return False   # the peer is gone (or not keeping up): it hears on its next beat

    # --- membership -----------------------------------------------------------------------------
    def _local_worker(self, w: WorkerEntry) -> dict:
        tcp = w.endpoint.startswith("tcp://")
        return {"id": w.identity.decode(), "endpoint": w.endpoint, "host": self.host,
                "serverKey": self.server_key if tcp else None}

    @property
    def remote(self) -> dict[str, dict]:
        """The joined hosts' members, by host (the lost ones have none)."""
        return {name: h.functions for name, h in self.hosts.items() if h.state == "joined"}

    def members(self) -> dict:
        """What clients are told: per function, whether it serves and at which workers (of
        every host); a function only other hosts serve comes with its `config` from there."""
        functions: dict[str, dict] = {}
        for name, fe in self.functions.items():
            functions[name] = {
                "available": fe.available, "reason": fe.reason, "maxQueued": fe.max_queued,
                "maxWait": fe.max_wait, "local": True,
                "workers": [self._local_worker(w) for w in fe.workers]}
            # Every function's config goes to the clients (sora.function_table), this host's
            # too: a reload's added, removed and changed functions reach them without a
            # restart of the gateways or the dispatcher.
            if name in self.configs:
                functions[name]["config"] = self.configs[name]
            if fe.removed:
                # Removed by a reload: new calls are not found; its workers stay listed while
                # they finish what they hold.
                functions[name]["removed"] = True
        remote_only: set[str] = set()
        for host, served in sorted(self.remote.items()):
            for name, info in served.items():
                entry = functions.get(name)
                if entry is not None and entry.get("removed"):
                    entry.pop("removed")   # removed here, still served there
                    entry.pop("config", None)
                    entry["local"] = False
                    remote_only.add(name)
                    if "config" in info:
                        entry["config"] = info["config"]
                if entry is None:
                    # Served only on other hosts: the first (by name) speaks for its settings.
                    remote_only.add(name)
                    entry = functions[name] = {
                        "available": bool(info.get("available", True)),
                        "reason": info.get("reason", ""),
                        "maxQueued": info.get("maxQueued", 100),
                        "maxWait": info.get("maxWait", 3.0), "workers": []}
                    if "config" in info:
                        entry["config"] = info["config"]
                elif info.get("available", True) and info.get("workers") and \
                        not entry["available"]:
                    # Unavailable here (or on another host), serving there: it serves.
                    entry.update(available=True, reason="")
                    if name in remote_only and "config" in info:
                        entry["config"] = info["config"]
                for w in info.get("workers", []):
                    entry["workers"].append({"id": w["id"], "endpoint": w["endpoint"],
                                             "host": w.get("host", host),
                                             "serverKey": w.get("serverKey")})
        return {"version": self.version, "functions": functions}

    def local_members(self) -> dict:
        """This host's own functions, for the main host (a joined host's Uplink): what
        `members()` says of them, plus each one's config (its snapshot entry), state and
        load (instances, invocations held)."""
        states = self.status_snapshot.get("functions", {})
        out = {}
        for name, fe in self.functions.items():
            # A function a reload removed here: the main host's clients send it nothing new
            # (503 there) while its workers finish what they hold.
            out[name] = {"available": fe.available and not fe.removed,
                         "reason": f"removed from host {self.host}" if fe.removed
                         else fe.reason,
                         "maxQueued": fe.max_queued, "maxWait": fe.max_wait,
                         "state": states.get(name, {}).get("state"),
                         "instances": sum(w.instances for w in fe.workers),
                         "inFlight": sum(w.held for w in fe.workers),
                         **_figures(fe.workers),
                         "workers": [self._local_worker(w) for w in fe.workers]}
            if name in self.configs:
                out[name]["config"] = self.configs[name]
        return out

    def tell_local(self) -> None:
        """Give `on_local` this host's membership if it changed since it was last given."""
        if self._on_local is None:
            return
        local = self.local_members()
        body = json.dumps(local, sort_keys=True).encode()
        if body != self._local_sent:
            self._local_sent = body
            try:
                self._on_local(local)
            except Exception:  # noqa: BLE001 - the link's trouble must not end the plane
                log.exception("could not hand this host's members to the cluster link")

    def publish_members(self) -> None:
        """Send MEMBERS to every subscriber if it changed since it was last sent."""
        self.tell_local()
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

    def set_remote(self, host: str, functions: dict, address: str | None = None) -> None:
        """Workers of another host, merged into MEMBERS: {function: {"workers": [{"id",
        "endpoint", "host", "serverKey"}], ...}} (checked by the caller: see
        sora/supervisor/hosts.py). Called on this thread or through
        `ControlHandle.set_remote`."""
        now = time.time()
        known = self.hosts.get(host)
        if known is None or known.state != "joined":
            self.hosts[host] = RemoteHost(address, "joined", now, now, functions)
        else:
            known.functions, known.last_heard = functions, now
            known.address = address or known.address
        self.publish_members()

    def drop_remote(self, host: str) -> None:
        known = self.hosts.get(host)
        if known is not None and known.state == "joined":
            now = time.time()
            known.state, known.since, known.functions = "lost", now, {}
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
                # A worker's: [HEARTBEAT, instances, held, busy, idle, starting, queued]
                # (the four figures absent from a worker of an older Sora).
                if len(frames) in (4, 8):
                    if worker is None:
                        # A worker we forgot (it fell silent, then came back): announce again.
                        self._send(identity, p.DISCONNECT)
                    else:
                        worker.held = _int(frames[3])
                        if len(frames) == 8:
                            worker.figures = tuple(_int(f) for f in frames[4:8])
                elif identity not in self.subscribers:
                    self.subscribe(identity, now)   # a client the plane lost (it restarted)
            elif cmd == p.READY and len(frames) == 5:
                ready = _ready(identity, frames[2], frames[3])
                if ready is None:
                    log.warning("ignored a READY that does not name a worker as workers do "
                                "(<function>/<pid>, text)")
                else:
                    changed |= self.register(identity, *ready, _int(frames[4]), now)
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
            elif cmd == p.WAKE and len(frames) == 3 and b":" in frames[2] and \
                    len(frames[2]) <= 200:
                self._notify("wake", frames[2])   # the arbiter starts the version's worker
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
                self.set_remote(frames[1].decode(), json.loads(frames[2]),
                                frames[3].decode() or None if len(frames) > 3 else None)
            elif cmd == b"drop-remote":
                self.drop_remote(frames[1].decode())
            elif cmd == b"admin":
                if self.admin is not None:
                    try:
                        self.admin.send_multipart(frames[1:], zmq.NOBLOCK)
                    except zmq.ZMQError:
                        pass   # the requester is gone (it gave up waiting)
            elif cmd == b"stop":
                self.running = False

    def set_functions(self, table: dict[str, dict]) -> None:
        """This host's functions, all of them (the arbiter's function_table): one no longer
        listed is forgotten, with any worker still registered for it."""
        for name in [n for n in self.functions if n not in table]:
            for worker in list(self.functions[name].workers):
                self.forget(worker.identity, "its function was removed", publish=False)
            del self.functions[name]
            self.configs.pop(name, None)
        for name, spec in table.items():
            fe = self.functions.get(name)
            if fe is None:
                fe = self.functions[name] = FunctionEntry(name, spec["maxQueued"],
                                                          spec["maxWait"])
            fe.max_queued, fe.max_wait = spec["maxQueued"], spec["maxWait"]
            fe.concurrency = spec.get("concurrency", fe.concurrency)
            fe.memory = spec.get("memory", fe.memory)
            fe.available, fe.reason = spec["available"], spec.get("reason", "")
            fe.removed = bool(spec.get("removed", False))
            if "config" in spec:
                self.configs[name] = spec["config"]
            else:
                self.configs.pop(name, None)
        self.publish_members()

    def status_body(self) -> bytes:
        """What /healthz shows: the arbiter's status, each function's load and the hosts
        serving it, and every host (this one `local`) with what it serves."""
        functions = {name: dict(info) for name, info in
                     self.status_snapshot.get("functions", {}).items()}
        now = time.time()
        here = {}
        versions = {}   # published versions (`NAME:N`): warm only while called
        for name, fe in self.functions.items():
            load = {"workers": len(fe.workers),
                    "instances": sum(w.instances for w in fe.workers),
                    "inFlight": sum(w.held for w in fe.workers)}
            if ":" in name:
                versions[name] = {**load, "available": fe.available, "reason": fe.reason}
                continue
            info = functions.setdefault(name, {})
            info.update(load)
            info.update(_figures(fe.workers))
            info["hosts"] = [self.host] if fe.workers else []
            if fe.workers:
                here[name] = load
        hosts = {self.host: {"address": self.address, "state": "joined", "since": self.started,
                             "lastHeard": now, "local": True, "functions": here}}
        heard = self._heard()
        for host, known in sorted(self.hosts.items()):
            served = {}
            for name, remote in known.functions.items():
                load = {"workers": len(remote.get("workers", [])),
                        "instances": _int(remote.get("instances", 0)),
                        "inFlight": _int(remote.get("inFlight", 0))}
                info = functions.get(name)
                if info is None:   # served only on other hosts
                    info = functions[name] = _remote_function(remote)
                if not load["workers"]:
                    continue
                served[name] = load
                for key in ("workers", "instances", "inFlight"):
                    info[key] = info.get(key, 0) + load[key]
                for key in FIGURES:   # the host's own sums (sora.supervisor.hosts checks them)
                    info[key] = info.get(key, 0) + _int(remote.get(key, 0))
                info.setdefault("hosts", []).append(host)
                if info.get("remote") and remote.get("state") == "RUNNING":
                    info["state"] = "RUNNING"
            hosts[host] = {"address": known.address, "state": known.state,
                           "since": known.since,
                           "lastHeard": heard.get(host, known.last_heard)
                           if known.state == "joined" else known.last_heard,
                           "functions": served}
        for info in functions.values():   # every function shows them (0: nothing running)
            for key in FIGURES:
                info.setdefault(key, 0)
        return json.dumps({**self.status_snapshot, "functions": functions,
                           "versions": versions, "hosts": hosts}).encode()

    def handle_admin(self) -> None:
        """Admin requests go to the arbiter's loop (it answers through `answer_admin`)."""
        while True:
            try:
                frames = self.admin.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            request = AdminRequest.decode(frames)
            if request is None:
                log.warning("ignored a malformed message on the admin socket")
                continue
            self._notify("admin", request)

    # --- timers ---------------------------------------------------------------------------------
    def beat(self, now: float) -> None:
        silent_after = p.HEARTBEAT_INTERVAL * p.HEARTBEAT_LIVENESS
        for identity, worker in list(self.workers.items()):
            if now - worker.last_seen > silent_after:
                self.forget(identity, f"silent for {now - worker.last_seen:.1f}s")
                self._notify("silent", identity)
            else:
                self._send(identity, p.HEARTBEAT)
        self.tell_local()   # the load (instances, held) it shows changes with the beats
        for client, last in list(self.subscribers.items()):
            if now - last > silent_after:
                del self.subscribers[client]
            else:
                self._send(client, p.HEARTBEAT)

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._pair, zmq.POLLIN)
        if self.admin is not None:
            poller.register(self.admin, zmq.POLLIN)
        next_beat = time.monotonic() + p.HEARTBEAT_INTERVAL
        while self.running:
            timeout = max(0.001, next_beat - time.monotonic())
            events = dict(poller.poll(max(1, int(timeout * 1000))))
            if self.sock in events:
                self.handle_peers()
            if self._pair in events:
                self.handle_control()
            if self.admin is not None and self.admin in events:
                self.handle_admin()
            now = time.monotonic()
            if now >= next_beat:
                self.beat(now)
                next_beat = now + p.HEARTBEAT_INTERVAL
        self.close()

    def close(self) -> None:
        self.sock.close(linger=0)
        self._pair.close(linger=0)
        if self.admin is not None:
            self.admin.close(linger=0)


def _ready(identity: bytes, function: bytes, endpoint: bytes) -> tuple[str, str] | None:
    """(function, endpoint) of a READY whose identity, function and endpoint are what a
    worker sends (`<function>/<pid>`, UTF-8), else None: the socket is private to Sora's
    processes, but a malformed READY must not end the plane's thread (which logs, and puts
    identities in MEMBERS, as text)."""
    try:
        name, _, pid = identity.decode().rpartition("/")
        function_text, endpoint_text = function.decode(), endpoint.decode()
    except UnicodeDecodeError:
        return None
    if name != function_text or not pid.isdigit():
        return None
    return function_text, endpoint_text


def _int(frame) -> int:
    try:
        return int(frame)
    except (TypeError, ValueError):
        return 0


def _figures(workers: list[WorkerEntry]) -> dict[str, int]:
    """{"busy", "idle", "starting", "queued"} summed over a function's workers."""
    return {key: sum(max(0, w.figures[i]) for w in workers) for i, key in enumerate(FIGURES)}


def _remote_function(remote: dict) -> dict:
    """A function only other hosts serve, as status shows it: from its config there."""
    config = remote.get("config") or {}
    info = {"kind": "worker", "remote": True, "state": remote.get("state") or "STARTING",
            "reason": remote.get("reason", ""), "workers": 0, "instances": 0, "inFlight": 0,
            "hosts": []}
    for key in ("language", "timeout", "minInstances", "maxInstances", "concurrency"):
        if key in config:
            info[key] = config[key]
    return info
