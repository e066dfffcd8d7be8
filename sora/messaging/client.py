"""How a process sends invocations to workers: straight to each worker's own ROUTER, with no
broker between (issue 16, docs/architecture.md "Clients and the direct data path").

Gateways (each gunicorn worker), the async dispatcher and `sora invoke --local` each make one
`InvocationClient`. It holds one DEALER to the control plane, which tells it which workers serve
which function at which endpoint (MEMBERS, sent again on every change), and one DEALER per
worker. A new worker connection starts with HELLO; the worker answers with a window of credits,
and each call sends one request and takes one credit, each reply gives it back.

Routing: a call goes to the worker of its function with the most free credits in this client's
windows, or waits in this client's FIFO for the function: at most `maxQueued` calls (a full
queue answers THROTTLED, 429 with Retry-After), each at most `maxWait` seconds (then
NO_CAPACITY, 503 with Retry-After). An unknown function answers NOT_FOUND, one that cannot serve
UNAVAILABLE with its reason. These answers are made here, in the frames a worker would send.

A worker lost while calls are in flight on it (the connection's monitor reports it dropped,
the worker fell silent for HEARTBEAT_LIVENESS intervals, or the control plane no longer lists
it) answers them WORKER_LOST at once, and they are recorded as crashed (`Sora.WorkerLost`)
through a RecordSender when the client has a state dir. A worker that says DISCONNECT takes no
new calls; those it holds are still answered.

Workers on other hosts (`tcp://` endpoints, each with its host's `serverKey`) are reached as
CURVE clients with this host's key pair (`cluster.keys`, sora.cluster.keys). A tcp worker
without a serverKey, or any tcp worker when this host has no keys, is never connected in clear:
it is logged once and left out, as if absent. Heartbeat silence is what tells a cut link (no
TCP reset comes), so a tcp worker silent for HEARTBEAT_LIVENESS intervals loses its calls
WORKER_LOST like a local one.

Whoever needs each function's config (the gateways' auth and caps, the dispatcher) listens to
MEMBERS too (`add_members_listener`, sora.function_table): a function served only by a joined
host comes with its config there.

The control plane being down stops no call to a worker this client knows. Before any MEMBERS
arrived, calls wait for them (until their deadline); once the control plane was connected and
is gone, a call that no known worker can take fails at once with `BrokerUnavailable` (the
gateway's 503 `Sora.BrokerUnavailable` with Retry-After), as when the broker was gone.

The hot path keeps the broker client's tricks: the frames of all the calls of a loop turn are
sent back to back in one `call_soon` callback (one wake-up of ZeroMQ's I/O thread for the lot),
ready replies are drained per wake-up (ZeroMQ's fd is edge-triggered, so a socket is checked
again after each send), and one tick every half second checks deadlines, queue waits and
heartbeats instead of a timer per call.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import time
from collections import deque

import zmq

from .. import protocol as p
from ..cluster.keys import KeyRing, KeysError, client_socket, load_keys
from ..config import HostConfig
from ..hotpath import recv_ready, send_frames

log = logging.getLogger("sora.client")

_TICK = 0.5
_HWM = 100_000
# How long past the function's own timeout a caller waits for the answer: the invocation may
# first wait for capacity for up to the timeout, then run for up to the timeout.
BROKER_SLACK = 10.0
CALL_SLACK = BROKER_SLACK
_SILENT_AFTER = p.HEARTBEAT_INTERVAL * p.HEARTBEAT_LIVENESS
_MONITOR_EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
# A tcp worker's CURVE handshake failing: its host does not allow this host's key.
_REFUSED_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
# How long a caller that asks about a function this host does not have waits for the first
# MEMBERS (a function of a joined host is known from there).
FIRST_MEMBERS_WAIT = 2.0
# A published version (`NAME:N`) MEMBERS does not list yet, because another host sharing the
# store published it a moment ago: its calls wait this long for the arbiter to learn of it
# (WAKE makes it read the store at once) before they are answered NOT_FOUND.
UNLISTED_VERSION_WAIT = 5.0
_WORKER_RECONNECT_IVL_MS = 100


def host_keys(config: HostConfig) -> KeyRing | None:
    """This host's CURVE key pair (`cluster.keys`), with which its clients reach workers on
    other hosts; None without one (tcp workers are then not used, never reached in clear)."""
    if not config.cluster.keys:
        return None
    try:
        return load_keys(config.cluster.keys)
    except KeysError as exc:   # checked when the config was loaded: changed since
        log.error("cluster.keys: %s; workers on other hosts will not be used", exc)
        return None


class BrokerTimeout(Exception):
    """No answer came within the caller's deadline."""


class BrokerUnavailable(BrokerTimeout):
    """Nothing can take the call: the control plane is gone and no known worker can serve it
    (the supervisor died or is restarting)."""


def _monitor_event(frames: list[bytes]) -> int:
    return struct.unpack("=hi", frames[0][:6])[0]


class _Function:
    """What MEMBERS says of one function, and this client's calls waiting for it."""
    __slots__ = ("name", "available", "removed", "reason", "max_queued", "max_wait", "workers",
                 "waiting", "woken_at")

    def __init__(self, name: str):
        self.name = name
        self.available = True
        # Removed by a reload: new calls are not found, while its workers (still listed)
        # answer what they hold.
        self.removed = False
        self.reason = ""
        self.max_queued = 100
        self.max_wait = 3.0
        self.workers: list[_Worker] = []
        # [request id, frames, expires (loop time), meta]; an entry whose caller has gone
        # (deadline) is skipped when it comes up.
        self.waiting: deque = deque()
        # A published version (`NAME:N`) starts its worker when called: when this client
        # last asked for it (WAKE), in loop time.
        self.woken_at = float("-inf")


class _Worker:
    """One worker's connection: its window and the calls in flight on it."""
    __slots__ = ("id", "function", "endpoint", "sock", "monitor", "credits", "inflight",
                 "last_seen", "connected", "greeted", "draining", "refused")

    def __init__(self, worker_id: str, function: str, endpoint: str):
        self.id = worker_id
        self.function = function
        self.endpoint = endpoint
        self.sock: zmq.Socket | None = None
        self.monitor: zmq.Socket | None = None
        self.credits = 0
        # request id -> (wall-clock start, meta): what a record needs if the worker is lost.
        self.inflight: dict[bytes, tuple[float, bytes]] = {}
        self.last_seen = 0.0
        self.connected = False
        self.greeted = False     # a window came since the last HELLO
        self.draining = False
        self.refused = False     # its host refused this host's key (logged once)


class InvocationClient:
    def __init__(self, control_endpoint: str, state_dir: str | None = None,
                 keys: KeyRing | None = None, curve_keys: tuple[bytes, bytes] | None = None):
        self.control_endpoint = control_endpoint
        self.state_dir = state_dir
        if keys is None and curve_keys is not None:   # (public, secret) z85, as a pair
            keys = KeyRing(directory="", public=curve_keys[0], secret=curve_keys[1])
        # This host's key pair (cluster.keys), for workers behind tcp:// (CURVE clients).
        self.keys = keys
        # Ids of tcp workers not connected for want of keys (logged once each).
        self._not_connected: set[str] = set()
        self._members_listeners: list = []
        self._members_seen: asyncio.Event | None = None
        self._pid = -1
        self._ctx: zmq.Context | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._control: zmq.Socket | None = None
        self._control_monitor: zmq.Socket | None = None
        self._control_connected = False
        self._control_gone = False   # connected once, and not since the last disconnect
        self.members_version: int | None = None   # None: no MEMBERS yet
        self.functions: dict[str, _Function] = {}
        self.workers: dict[str, _Worker] = {}
        # request id -> [future, deadline (loop time), function (None: a status call)]
        self._pending: dict[bytes, list] = {}
        # Calls made before the first MEMBERS, or for a published version MEMBERS does not
        # list yet (see _unlisted_version): (function, request id, frames, meta).
        self._early: list = []
        # Such versions: key -> (loop time its calls stop waiting, when WAKE was last sent).
        self._unlisted: dict[str, list[float]] = {}
        self._outbox: list = []  # (worker, frames) of this loop turn
        self._check_scheduled = False
        self._tick_handle: asyncio.TimerHandle | None = None
        self._ticks = 0
        self.records = None

    # --- connections -----------------------------------------------------------------------
    def _connect(self) -> None:
        # After a fork (gunicorn workers) the parent's context must not be used: make our own.
        self._pid = os.getpid()
        self._loop = asyncio.get_running_loop()
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        # The monitor before the connection, or its first EVENT_CONNECTED may come unseen.
        self._control_monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
        sock.connect(self.control_endpoint)
        self._control = sock
        self._members_seen = asyncio.Event()
        # Queued until the connection is up (and sent again after each reconnection).
        self._send_control([p.SUBSCRIBE])
        self._control_gone = False
        self._control_connected = False
        self._loop.add_reader(sock.getsockopt(zmq.FD), self._drain_control)
        self._loop.add_reader(self._control_monitor.getsockopt(zmq.FD), self._watch_control)
        if self.state_dir is not None:
            from ..store.recorder import RecordSender
            self.records = RecordSender(self.state_dir, self._ctx)
        self._watch_control()   # takes the events already queued: the fd signals only new ones
        self._tick_handle = self._loop.call_later(_TICK, self._tick)

    def close(self) -> None:
        """Close every socket and the context (a context with an open socket cannot end)."""
        if self._ctx is None:
            return
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        for worker in list(self.workers.values()):
            self._close_worker(worker, bye=True)
        self.workers.clear()
        if self._control_connected:
            self._send_control([p.BYE])   # the control plane drops this subscriber now
        self._close_monitored(self._control, self._control_monitor)
        self._control = self._control_monitor = None
        if self.records is not None:
            self.records.close(wait=0)
            self.records = None
        self._ctx.term()
        self._ctx = None
        self._pid = -1

    def _why_not_connected(self, spec: dict) -> str | None:
        """Why a member's worker must not be connected (None: it may): a tcp endpoint is
        reached only as a CURVE client, never in clear."""
        if not spec.get("endpoint", "").startswith("tcp://"):
            return None
        if self.keys is None:
            return ("this host has no cluster keys (cluster.keys in host-config.yaml), and a "
                    "tcp worker is never reached in clear")
        if not spec.get("serverKey"):
            return "its host gave no serverKey, and a tcp worker is never reached in clear"
        return None

    def _open_worker(self, worker: _Worker, server_key: str | None) -> None:
        events = _MONITOR_EVENTS
        if worker.endpoint.startswith("tcp://"):
            sock = client_socket(self._ctx, zmq.DEALER, self.keys, server_key.encode())
            # The first reconnection soon (a connection dropped during the handshake would
            # otherwise leave the worker unused for a second), then backing off to 8 s as
            # client_socket's (a host refusing this host's key is not asked 10 times a second).
            sock.setsockopt(zmq.RECONNECT_IVL, _WORKER_RECONNECT_IVL_MS)
            events |= _REFUSED_EVENTS
        else:
            sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, _HWM)
        sock.setsockopt(zmq.RCVHWM, _HWM)
        worker.monitor = sock.get_monitor_socket(events)   # before connecting
        sock.connect(worker.endpoint)
        worker.sock = sock
        worker.last_seen = time.monotonic()
        self._loop.add_reader(sock.getsockopt(zmq.FD), self._drain, worker)
        self._loop.add_reader(worker.monitor.getsockopt(zmq.FD), self._watch_worker, worker)
        self._watch_worker(worker)   # HELLO goes at EVENT_CONNECTED

    def _close_worker(self, worker: _Worker, bye: bool = False) -> None:
        if worker.sock is None:
            return
        if bye and worker.connected:
            self._send_now(worker, [p.BYE])
        self._close_monitored(worker.sock, worker.monitor)
        worker.sock = worker.monitor = None

    def _close_monitored(self, sock: zmq.Socket, monitor: zmq.Socket) -> None:
        """Close a socket and its monitor, first taking both off the event loop."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(sock.getsockopt(zmq.FD))
            self._loop.remove_reader(monitor.getsockopt(zmq.FD))
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)

    def _send_now(self, worker: _Worker, frames: list[bytes]) -> bool:
        """A message off the hot path. ZeroMQ's fd is edge-triggered and a send may take the
        readiness of a message that arrived meanwhile: the socket is looked at again next turn."""
        try:
            worker.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError:
            return False
        if not self._loop.is_closed():
            self._loop.call_soon(self._drain, worker)
        return True

    def _send_control(self, frames: list[bytes]) -> bool:
        try:
            self._control.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError:
            return False
        if not self._loop.is_closed():
            self._loop.call_soon(self._drain_control)
        return True

    # --- the control plane ----------------------------------------------------------------
    def _watch_control(self) -> None:
        if self._control_monitor is None:
            return
        for frames in recv_ready(self._control_monitor):
            event = _monitor_event(frames)
            if event == zmq.EVENT_CONNECTED:
                if self._control_gone:
                    # Again after a restart of the control plane: it knows no subscriber.
                    self._send_control([p.SUBSCRIBE])
                self._control_connected = True
                self._control_gone = False
                self._drain_control()
            elif event == zmq.EVENT_DISCONNECTED:
                self._control_lost()

    def _control_lost(self) -> None:
        self._control_connected = False
        self._control_gone = True
        # What waited for the control plane's word (MEMBERS, a status) gets no answer now.
        early, self._early = self._early, []
        for _, request_id, _, _ in early:
            self._fail(request_id, BrokerUnavailable())
        for request_id, entry in list(self._pending.items()):
            if entry[2] is None and not entry[0].done():   # a status call
                self._fail(request_id, BrokerUnavailable())
        # Calls waiting for a function no live worker serves would wait for nothing.
        for fn in self.functions.values():
            if fn.waiting and not any(w.connected and not w.draining for w in fn.workers):
                while fn.waiting:
                    self._fail(fn.waiting.popleft()[0], BrokerUnavailable())

    def _drain_control(self) -> None:
        if self._control is None:
            return
        for frames in recv_ready(self._control):
            cmd = frames[0]
            if cmd == p.REPLY and len(frames) >= 4:
                self._resolve(frames[1], frames[2:])
            elif cmd == p.MEMBERS and len(frames) >= 2:
                try:
                    members = json.loads(frames[1])
                except ValueError:
                    log.error("unreadable MEMBERS from the control plane")
                    continue
                self.apply_members(members)

    def add_members_listener(self, listener) -> None:
        """Call `listener(members)` with every MEMBERS, before calls are routed by it (the
        function table learns the configs of functions served only by other hosts)."""
        self._members_listeners.append(listener)

    async def members_known(self, timeout: float = FIRST_MEMBERS_WAIT) -> bool:
        """Wait (at most `timeout`) for the control plane's first MEMBERS; whether it came.
        Connects the client if it is not yet (a process that has made no call yet)."""
        if self._pid != os.getpid():
            self._connect()
        if self.members_version is not None:
            return True
        if self._control_gone:
            return False
        try:
            await asyncio.wait_for(self._members_seen.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return self.members_version is not None

    def start(self) -> None:
        """Connect now (in the running loop) rather than at the first call: a process that
        must know the members before it calls (the dispatcher) subscribes at once."""
        if self._pid != os.getpid():
            self._connect()

    def apply_members(self, members: dict) -> None:
        """Take the control plane's view: connect new workers, drop those it no longer lists
        (their calls in flight are answered WORKER_LOST), and route what waited for it."""
        for listener in self._members_listeners:
            try:
                listener(members)
            except Exception:   # a listener's bug must not stop routing
                log.exception("a MEMBERS listener failed")
        self.members_version = members.get("version", 0)
        if self._members_seen is not None:
            self._members_seen.set()
        listed: dict[str, tuple[str, dict]] = {}
        seen_functions = set()
        for name, spec in members.get("functions", {}).items():
            seen_functions.add(name)
            fn = self.functions.get(name)
            if fn is None:
                fn = self.functions[name] = _Function(name)
            fn.available = bool(spec.get("available", True))
            fn.removed = bool(spec.get("removed", False))
            fn.reason = spec.get("reason", "")
            fn.max_queued = int(spec.get("maxQueued", fn.max_queued))
            fn.max_wait = float(spec.get("maxWait", fn.max_wait))
            for w in spec.get("workers", ()):
                why = self._why_not_connected(w)
                if why is None:
                    listed[w["id"]] = (name, w)
                elif w["id"] not in self._not_connected:
                    log.error("worker %s of %s at %s (host %s) is not used: %s", w["id"], name,
                              w.get("endpoint"), w.get("host", "?"), why)
                    self._not_connected.add(w["id"])
        self._not_connected &= {w["id"] for spec in members.get("functions", {}).values()
                                for w in spec.get("workers", ())}
        for worker_id, worker in list(self.workers.items()):
            spec = listed.get(worker_id)
            if spec is None or spec[1].get("endpoint") != worker.endpoint:
                self._drop_worker(worker, "no longer a member")
        for worker_id, (name, spec) in listed.items():
            if worker_id not in self.workers:
                worker = _Worker(worker_id, name, spec["endpoint"])
                self.workers[worker_id] = worker
                self._open_worker(worker, spec.get("serverKey"))
        for fn in self.functions.values():
            fn.workers = [w for w in self.workers.values() if w.function == fn.name]
        for name in list(self.functions):
            if name not in seen_functions:
                fn = self.functions.pop(name)
                while fn.waiting:
                    entry = fn.waiting.popleft()
                    self._resolve(entry[0], self._not_found(name))
        for fn in self.functions.values():
            if fn.removed:
                while fn.waiting:
                    self._resolve(fn.waiting.popleft()[0], self._not_found(fn.name))
            elif not fn.available:
                while fn.waiting:
                    self._resolve(fn.waiting.popleft()[0], self._unavailable(fn))
            elif fn.waiting:
                self._dispatch_waiting(fn)
                if fn.waiting and ":" in fn.name and all(w.draining for w in fn.workers):
                    self._wake(fn)   # its worker exited idle while calls waited
        for key in [k for k in self._unlisted if k in self.functions]:
            del self._unlisted[key]
        early, self._early = self._early, []
        for name, request_id, frames, meta in early:
            if request_id in self._pending:
                self._route(name, request_id, frames, meta)

    # --- workers ----------------------------------------------------------------------------
    def _watch_worker(self, worker: _Worker) -> None:
        if worker.monitor is None:
            return
        for frames in recv_ready(worker.monitor):
            event = _monitor_event(frames)
            if event == zmq.EVENT_CONNECTED:
                # A new connection (the first, or back after a drop): ask for the window. The
                # worker answers a HELLO with the whole window, whatever it gave before.
                worker.connected = True
                worker.greeted = False
                worker.last_seen = time.monotonic()
                self._send_now(worker, [p.HELLO])
            elif event == zmq.EVENT_DISCONNECTED and worker.connected:
                worker.connected = False
                self._lose(worker, "its connection dropped")
            elif event & _REFUSED_EVENTS and not worker.refused:
                # Its host does not allow this host's key: ZeroMQ retries (1 s to 8 s), and no
                # window comes meanwhile, so no call goes there.
                worker.refused = True
                log.error("worker %s at %s refused this host's CURVE key (add this host's "
                          "host.key to that host's allow-list: sora keys add)", worker.id,
                          worker.endpoint)
            if worker.monitor is None:
                return

    def _drain(self, worker: _Worker) -> None:
        sock = worker.sock
        if sock is None:
            return
        inflight = worker.inflight
        pending = self._pending
        freed = False
        messages = recv_ready(sock)
        if not messages:
            return
        worker.last_seen = time.monotonic()
        for frames in messages:
            cmd = frames[0]
            if cmd == p.REPLY:
                if len(frames) >= 4 and inflight.pop(frames[1], None) is not None:
                    worker.credits += 1
                    freed = True
                    entry = pending.pop(frames[1], None)
                    if entry is not None and not entry[0].done():
                        entry[0].set_result(frames[2:])
            elif cmd == p.CREDIT and len(frames) == 2:
                delta = int(frames[1])
                if not worker.greeted:   # the first window after a HELLO is the whole window
                    worker.greeted = True
                    worker.credits = delta - len(inflight)
                else:
                    worker.credits += delta
                freed = True
            elif cmd == p.DISCONNECT:
                worker.draining = True
        if freed and worker.credits > 0:
            fn = self.functions.get(worker.function)
            if fn is not None and fn.waiting:
                self._dispatch_waiting(fn)

    def _lose(self, worker: _Worker, why: str) -> None:
        """Answer every call in flight on the worker WORKER_LOST, and record them."""
        worker.credits = 0
        worker.greeted = False
        if not worker.inflight:
            return
        inflight, worker.inflight = worker.inflight, {}
        message = (f"The worker running {worker.function} was lost ({why}) while handling "
                   "this invocation")
        body = p.error_body("Sora.WorkerLost", message)
        now = time.time()
        # A published version's worker serves `NAME:N`: its records say NAME, version N.
        function, _, version = worker.function.encode().partition(b":")
        for request_id, (start, meta) in inflight.items():
            self._resolve(request_id, [p.WORKER_LOST, body])
            if self.records is not None:
                self.records.record(request_id, function, meta.partition(b"+")[0], start,
                                    (now - start) * 1000, b"crashed", "Sora.WorkerLost", False,
                                    version=version or b"$LATEST", error_message=message)
        if self.records is not None:
            self.records.flush()
        log.warning("worker %s lost (%s); failed %d in-flight invocation(s)", worker.id, why,
                    len(inflight))

    def _drop_worker(self, worker: _Worker, why: str) -> None:
        self._lose(worker, why)
        self._close_worker(worker)
        self.workers.pop(worker.id, None)
        fn = self.functions.get(worker.function)
        if fn is not None and worker in fn.workers:
            fn.workers.remove(worker)

    # --- routing ----------------------------------------------------------------------------
    @staticmethod
    def _pick(fn: _Function) -> _Worker | None:
        best = None
        for w in fn.workers:
            if w.credits > 0 and not w.draining and (best is None or w.credits > best.credits):
                best = w
        return best

    def _send(self, worker: _Worker, request_id: bytes, frames: list[bytes], meta: bytes) -> None:
        worker.credits -= 1
        worker.inflight[request_id] = (time.time(), meta)
        self._outbox.append((worker, frames))
        if not self._check_scheduled:
            self._check_scheduled = True
            self._loop.call_soon(self._check)

    def _route(self, name: str, request_id: bytes, frames: list[bytes], meta: bytes) -> None:
        fn = self.functions.get(name)
        if fn is None and ":" in name and self._unlisted_version(name):
            self._early.append((name, request_id, frames, meta))   # routed at MEMBERS
            return
        if fn is None or fn.removed:
            self._resolve(request_id, self._not_found(name))
            return
        if not fn.available:
            self._resolve(request_id, self._unavailable(fn))
            return
        worker = self._pick(fn) if not fn.waiting else None
        if ":" in name and all(w.draining for w in fn.workers):
            self._wake(fn)   # a published version with no worker taking calls
        if worker is not None:
            self._send(worker, request_id, frames, meta)
        elif len(fn.waiting) < fn.max_queued:
            fn.waiting.append([request_id, frames, self._loop.time() + fn.max_wait, meta])
        else:
            self._resolve(request_id, [p.THROTTLED, p.error_body(
                "TooManyRequestsException", f"Rate exceeded: function {name} is at its "
                f"concurrency and {fn.max_queued} invocations are already waiting")])

    def _unlisted_version(self, key: str) -> bool:
        """Whether a call for the version `key`, which MEMBERS does not list, waits for it:
        the caller found it in the store (sora.versions.routing), so another host may have
        just published it; WAKE (once a second) has this host's arbiter read the store at
        once. False once UNLISTED_VERSION_WAIT has passed: NOT_FOUND."""
        now = self._loop.time()
        entry = self._unlisted.setdefault(key, [now + UNLISTED_VERSION_WAIT, float("-inf")])
        if now >= entry[0]:
            return False
        if now - entry[1] >= 1.0:
            entry[1] = now
            self._send_control([p.WAKE, key.encode()])
        return True

    def _wake(self, fn: _Function) -> None:
        """Ask the control plane to start a published version's worker (once a second)."""
        now = self._loop.time()
        if now - fn.woken_at >= 1.0:
            fn.woken_at = now
            self._send_control([p.WAKE, fn.name.encode()])

    def _dispatch_waiting(self, fn: _Function) -> None:
        pending = self._pending
        while fn.waiting:
            request_id = fn.waiting[0][0]
            if request_id not in pending:   # its caller gave up
                fn.waiting.popleft()
                continue
            worker = self._pick(fn)
            if worker is None:
                return
            request_id, frames, _, meta = fn.waiting.popleft()
            self._send(worker, request_id, frames, meta)

    @staticmethod
    def _not_found(name: str) -> list[bytes]:
        return [p.NOT_FOUND, p.error_body("ResourceNotFoundException",
                                          f"Function not found: {name}")]

    @staticmethod
    def _unavailable(fn: _Function) -> list[bytes]:
        return [p.UNAVAILABLE, p.error_body("Sora.FunctionUnavailable",
                                            f"Function {fn.name} cannot serve: {fn.reason}")]

    def _check(self) -> None:
        """Once per loop turn: send the requests of the turn, then look for replies (ZeroMQ's
        fd is edge-triggered, and a send may consume the readiness of a reply that arrived
        meanwhile). Sending them back to back wakes ZeroMQ's I/O thread once for the lot,
        where a send from each request's task would wake it for each (a system call and a
        context switch, the largest part of the client's ZeroMQ cost)."""
        self._check_scheduled = False
        outbox, self._outbox = self._outbox, []
        touched = []
        for worker, frames in outbox:
            if worker.sock is None:
                continue   # dropped meanwhile: its calls were answered WORKER_LOST
            try:
                send_frames(worker.sock, frames)
            except zmq.ZMQError as exc:   # the caller gets the error its send met
                if worker.inflight.pop(frames[1], None) is not None:
                    worker.credits += 1
                self._fail(frames[1], exc)
            if worker not in touched:
                touched.append(worker)
        for worker in touched:
            self._drain(worker)

    def _resolve(self, request_id: bytes, frames: list[bytes]) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result(frames)

    def _fail(self, request_id: bytes, exc: BaseException) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(exc)

    # --- the tick: deadlines, queue waits, heartbeats -------------------------------------
    def _tick(self) -> None:
        loop = self._loop
        now = loop.time()
        for request_id, entry in list(self._pending.items()):
            if entry[1] <= now:
                self._fail(request_id, BrokerTimeout())
        for fn in self.functions.values():
            waiting = fn.waiting
            while waiting and waiting[0][2] <= now:
                self._resolve(waiting.popleft()[0], [p.NO_CAPACITY, p.error_body(
                    "Sora.NoCapacity", f"No instance of {fn.name} became free within "
                    f"{fn.max_wait:.2f} seconds")])
            if waiting and ":" in fn.name and all(w.draining for w in fn.workers):
                self._wake(fn)   # a version's calls wait, its worker gone or going: again
        if self._unlisted and self.members_version is not None:
            # Versions still unlisted: WAKE again, or answer their calls once they waited out.
            early, self._early = self._early, []
            for key in [k for k, e in self._unlisted.items() if e[0] + 60 < now]:
                del self._unlisted[key]   # forgotten: a later call waits again
            for name, request_id, frames, meta in early:
                if request_id in self._pending:
                    self._route(name, request_id, frames, meta)
        self._ticks += 1
        if self._ticks % 2 == 0:   # every HEARTBEAT_INTERVAL
            self._beat()
        self._tick_handle = loop.call_later(_TICK, self._tick)

    def _beat(self) -> None:
        mono = time.monotonic()
        if self._control_connected:
            self._send_control([p.HEARTBEAT])
        for worker in list(self.workers.values()):
            if worker.sock is None:
                continue
            if worker.connected:
                self._send_now(worker, [p.HEARTBEAT])
                if worker.greeted and mono - worker.last_seen > _SILENT_AFTER:
                    # What waits unread (this loop was held up) is not silence.
                    self._drain(worker)
                if worker.greeted and mono - worker.last_seen > _SILENT_AFTER:
                    self._lose(worker, f"silent for {mono - worker.last_seen:.1f}s")
                    worker.last_seen = mono
                    # When it answers again, it gives a new window.
                    self._send_now(worker, [p.HELLO])
        if self.records is not None:
            self.records.flush()   # takes acknowledgements and resends what has none

    # --- the API ----------------------------------------------------------------------------
    async def invoke(self, function: str, request_id: bytes, payload: bytes,
                     timeout: float, meta: bytes = p.TRIGGER_HTTP) -> list[bytes]:
        """Send one invocation; return the reply's frames: status and body (protocol.py),
        then the base64 tail of its log when `meta` asked for it (`p.meta(..., tail=True)`)."""
        if self._pid != os.getpid():
            self._connect()
        frames = [p.REQUEST, request_id, payload]
        if meta != p.TRIGGER_HTTP:
            frames.append(meta)
        loop = self._loop
        fut = loop.create_future()
        self._pending[request_id] = [fut, loop.time() + timeout, function]
        if self.members_version is None:
            if self._control_gone:
                del self._pending[request_id]
                raise BrokerUnavailable()
            self._early.append((function, request_id, frames, meta))
        else:
            if self._control_gone:
                fn = self.functions.get(function)
                if fn is None or not any(w.connected and not w.draining for w in fn.workers):
                    del self._pending[request_id]
                    raise BrokerUnavailable()
            self._route(function, request_id, frames, meta)
        try:
            return await fut
        finally:
            self._pending.pop(request_id, None)

    async def status(self, request_id: bytes, timeout: float = 3.0) -> bytes:
        """The control plane's health JSON (what /healthz shows)."""
        if self._pid != os.getpid():
            self._connect()
        if self._control_gone:
            raise BrokerUnavailable()
        fut = self._loop.create_future()
        self._pending[request_id] = [fut, self._loop.time() + timeout, None]
        if not self._send_control([p.STATUS, request_id]):
            del self._pending[request_id]
            raise BrokerUnavailable()
        try:
            _, body, *_ = await fut
            return body
        finally:
            self._pending.pop(request_id, None)
