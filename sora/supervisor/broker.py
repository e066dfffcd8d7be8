"""The broker: ROUTER (gateways) <-> ROUTER (workers), per-function queues, credit-based load
balancing and heartbeats (the zguide's load-balancing broker with Paranoid Pirate liveness).

It runs on its own thread inside the supervisor process. Workers announce capacity (credits);
a request goes to the worker of its function with the most free credits, or waits in the
function's bounded queue. A full queue answers THROTTLED (429 with Retry-After), a wait past
the function's timeout NO_CAPACITY (503 with Retry-After).

The broker also keeps the instance budget: each worker scales its own pool (sora.worker.
scaling) but asks here before it grows, and is granted only what the function's `concurrency`
(over all its workers) and the host's limits (instances, memory) leave. A worker that dies (the arbiter says so) or falls silent is
forgotten and each invocation it held is answered WORKER_LOST at once.

The arbiter talks to the broker over an inproc PAIR socket (`BrokerControl`); the broker tells
the arbiter about workers becoming ready or silent through a queue plus a wake-up callback.
"""
from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import zmq

from .. import protocol as p
from ..hotpath import recv_ready, send_frames
from ..store.recorder import RecordSender

log = logging.getLogger("sora.broker")

_HWM = 200_000
_broker_numbers = itertools.count()


@dataclass
class WorkerEntry:
    identity: bytes
    function: str
    credits: int
    last_seen: float
    instances: int = 0   # running or starting, as granted (or reported at READY)
    draining: bool = False
    # (client, request id) -> (wall-clock start, meta frame or TRIGGER_HTTP): what a record of
    # the invocation needs if the worker is lost while it runs.
    inflight: dict[tuple[bytes, bytes], tuple[float, bytes]] = field(default_factory=dict)


@dataclass
class FunctionQueue:
    name: str
    max_queued: int
    max_wait: float
    concurrency: int = 1 << 30
    memory: int = 0
    available: bool = True
    reason: str = ""
    # (client, request id, [payload, meta...] as received, expires)
    waiting: deque = field(default_factory=deque)
    workers: list[WorkerEntry] = field(default_factory=list)


class BrokerControl:
    """The arbiter's handle on the broker thread (used from the arbiter's thread only)."""

    def __init__(self, sock: zmq.Socket, events: "queue.Queue[tuple[str, bytes]]"):
        self._sock = sock
        self.events = events

    def set_functions(self, table: dict[str, dict]) -> None:
        self._sock.send_multipart([b"functions", json.dumps(table).encode()])

    def set_status(self, snapshot: dict) -> None:
        self._sock.send_multipart([b"status", json.dumps(snapshot).encode()])

    def forget_worker(self, identity: bytes) -> None:
        self._sock.send_multipart([b"forget", identity])

    def stop(self) -> None:
        self._sock.send_multipart([b"stop"])

    def close(self) -> None:
        self._sock.close(linger=0)


class Broker(threading.Thread):
    def __init__(self, gateway_endpoint: str, worker_endpoint: str,
                 wake: Callable[[], None] = lambda: None, state_dir: str | None = None,
                 max_instances: int = 1 << 30, max_memory_mb: int = 1 << 40):
        super().__init__(name="sora-broker", daemon=True)
        self.ctx = zmq.Context.instance()
        self.frontend = self._router(gateway_endpoint)
        self.backend = self._router(worker_endpoint)
        # One endpoint per broker: a closing broker's inproc name may linger a moment.
        control_endpoint = f"inproc://sora-broker-control-{next(_broker_numbers)}"
        self._control = self.ctx.socket(zmq.PAIR)
        self._control.bind(control_endpoint)
        arbiter_end = self.ctx.socket(zmq.PAIR)
        arbiter_end.connect(control_endpoint)
        self.events: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.control = BrokerControl(arbiter_end, self.events)
        self._wake = wake
        self.functions: dict[str, FunctionQueue] = {}
        self.workers: dict[bytes, WorkerEntry] = {}
        self.status_snapshot: dict = {}
        self.running = True
        self.max_instances, self.max_memory_mb = max_instances, max_memory_mb
        # Invocations lost with their worker are recorded here (the worker cannot); None
        # without a recorder (`sora invoke --local`). Made on the broker's thread, in run().
        self._records_dir = state_dir
        self.records: RecordSender | None = None

    def _router(self, endpoint: str) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.SNDHWM, _HWM)
        sock.setsockopt(zmq.RCVHWM, _HWM)
        sock.setsockopt(zmq.LINGER, 0)
        # An unroutable send raises instead of being dropped silently.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.bind(endpoint)
        return sock

    def _notify(self, event: str, identity: bytes) -> None:
        self.events.put((event, identity))
        self._wake()

    # --- replies to gateways --------------------------------------------------------------------
    def _reply(self, client: bytes, request_id: bytes, status: bytes, body: bytes,
               extra: list[bytes] = ()) -> None:
        try:
            send_frames(self.frontend, [client, p.REPLY, request_id, status, body, *extra])
        except zmq.ZMQError:
            pass  # the gateway process is gone; nobody waits for this answer

    # --- gateway side ---------------------------------------------------------------------------
    def handle_frontend(self) -> None:
        for frames in recv_ready(self.frontend):
            if len(frames) < 3:
                continue
            client, cmd, request_id = frames[0], frames[1], frames[2]
            if cmd == p.REQUEST and len(frames) >= 5:
                self.route(client, request_id, frames[3].decode("utf-8", "replace"), frames[4:])
            elif cmd == p.STATUS:
                self._reply(client, request_id, p.OK, self.status_body())

    def route(self, client: bytes, request_id: bytes, name: str, payload: list[bytes]) -> None:
        fq = self.functions.get(name)
        if fq is None:
            self._reply(client, request_id, p.NOT_FOUND, p.error_body(
                "ResourceNotFoundException", f"Function not found: {name}"))
            return
        if not fq.available:
            self._reply(client, request_id, p.UNAVAILABLE, p.error_body(
                "Sora.FunctionUnavailable", f"Function {name} cannot serve: {fq.reason}"))
            return
        worker = self._pick(fq)
        if worker is not None and not fq.waiting:
            self._dispatch(worker, client, request_id, payload)
        elif len(fq.waiting) < fq.max_queued:
            fq.waiting.append((client, request_id, payload, time.monotonic() + fq.max_wait))
        else:
            self._reply(client, request_id, p.THROTTLED, p.error_body(
                "TooManyRequestsException", f"Rate exceeded: function {name} is at its "
                f"concurrency and {fq.max_queued} invocations are already waiting"))

    @staticmethod
    def _pick(fq: FunctionQueue) -> WorkerEntry | None:
        best = None
        for w in fq.workers:
            if w.credits > 0 and not w.draining and (best is None or w.credits > best.credits):
                best = w
        return best

    def _dispatch(self, worker: WorkerEntry, client: bytes, request_id: bytes,
                  payload: list[bytes]) -> None:
        try:
            send_frames(self.backend, [worker.identity, p.REQUEST, client, request_id,
                                       *payload])
        except zmq.ZMQError:
            # The worker vanished without a word: forget it and put the request back.
            fq = self.functions.get(worker.function)
            self.forget(worker.identity, "unreachable")
            if fq is not None:
                fq.waiting.appendleft((client, request_id, payload,
                                       time.monotonic() + fq.max_wait))
            return
        worker.credits -= 1
        worker.inflight[(client, request_id)] = (time.time(), payload[1] if len(payload) > 1
                                                 else p.TRIGGER_HTTP)

    def drain_queue(self, fq: FunctionQueue) -> None:
        while fq.waiting:
            worker = self._pick(fq)
            if worker is None:
                return
            client, request_id, payload, _ = fq.waiting.popleft()
            self._dispatch(worker, client, request_id, payload)

    # --- worker side ----------------------------------------------------------------------------
    def handle_backend(self) -> None:
        now = time.monotonic()
        for frames in recv_ready(self.backend):
            identity, cmd = frames[0], frames[1]
            worker = self.workers.get(identity)
            if worker is not None:
                worker.last_seen = now
            if cmd == p.REPLY and len(frames) >= 6:
                client, request_id = frames[2], frames[3]
                self._reply(client, request_id, frames[4], frames[5], frames[6:])
                if worker is not None and \
                        worker.inflight.pop((client, request_id), None) is not None:
                    worker.credits += 1
                    fq = self.functions.get(worker.function)
                    if fq is not None and fq.waiting:
                        self.drain_queue(fq)
                    if worker.draining and not worker.inflight:
                        self.forget(identity, "drained")
            elif cmd == p.CREDIT and worker is not None and len(frames) == 3:
                # Credits may go below zero when taken back: nothing is dispatched until the
                # replies bring them up again.
                worker.credits += int(frames[2])
                fq = self.functions.get(worker.function)
                if fq is not None and fq.waiting:
                    self.drain_queue(fq)
            elif cmd == p.GROW and worker is not None and len(frames) == 3:
                self._send_worker(identity, p.GRANT, str(self.grant(worker, int(frames[2])))
                                  .encode())
            elif cmd == p.SHRINK and worker is not None and len(frames) == 3:
                worker.instances = max(0, worker.instances - int(frames[2]))
            elif cmd == p.READY and len(frames) == 5:
                self.register(identity, frames[2].decode(), int(frames[3]), now)
                if identity in self.workers:
                    self.workers[identity].instances = int(frames[4])
            elif cmd == p.DISCONNECT and worker is not None:
                worker.draining = True
                if not worker.inflight:
                    self.forget(identity, "disconnected")
            elif worker is None and cmd == p.HEARTBEAT:
                # A worker we forgot (it fell silent, then came back): it must announce again.
                self._send_worker(identity, p.DISCONNECT)

    def grant(self, worker: WorkerEntry, wanted: int) -> int:
        """How many more instances a worker may start (it asked for `wanted`)."""
        fq = self.functions.get(worker.function)
        if fq is None or wanted <= 0:
            return 0
        function_room = fq.concurrency - sum(w.instances for w in fq.workers)
        host_instances = host_memory = 0
        for w in self.workers.values():
            host_instances += w.instances
            other = self.functions.get(w.function)
            host_memory += w.instances * (other.memory if other else 0)
        room = min(wanted, function_room, self.max_instances - host_instances)
        if fq.memory:
            room = min(room, (self.max_memory_mb - host_memory) // fq.memory)
        room = max(0, room)
        worker.instances += room
        return room

    def register(self, identity: bytes, function: str, credits: int, now: float) -> None:
        if identity in self.workers:
            self.forget(identity, "re-registered")
        fq = self.functions.get(function)
        if fq is None:
            log.warning("worker %s announced unknown function %r", identity, function)
            self._send_worker(identity, p.DISCONNECT)
            return
        worker = WorkerEntry(identity, function, credits, now)
        self.workers[identity] = worker
        fq.workers.append(worker)
        log.info("worker %s ready for %s with %d slot(s)", identity.decode(), function, credits)
        self._notify("ready", identity)
        self.drain_queue(fq)

    def forget(self, identity: bytes, why: str) -> None:
        worker = self.workers.pop(identity, None)
        if worker is None:
            return
        fq = self.functions.get(worker.function)
        if fq is not None and worker in fq.workers:
            fq.workers.remove(worker)
        now = time.time()
        function = worker.function.encode()
        for (client, request_id), (start, meta) in worker.inflight.items():
            message = (f"The worker running {worker.function} was lost ({why}) while "
                       "handling this invocation")
            self._reply(client, request_id, p.WORKER_LOST,
                        p.error_body("Sora.WorkerLost", message))
            if self.records is not None:
                self.records.record(request_id, function, meta.partition(b"+")[0], start,
                                    (now - start) * 1000, b"crashed", "Sora.WorkerLost", False,
                                    error_message=message)
        if self.records is not None:
            self.records.flush()
        if worker.inflight:
            log.warning("forgot worker %s (%s); failed %d in-flight invocation(s)",
                        identity.decode(), why, len(worker.inflight))
        worker.inflight.clear()

    def _send_worker(self, identity: bytes, cmd: bytes, *args: bytes) -> bool:
        try:
            self.backend.send_multipart([identity, cmd, *args])
            return True
        except zmq.ZMQError:
            return False

    # --- control from the arbiter ---------------------------------------------------------------
    def handle_control(self) -> None:
        while True:
            try:
                frames = self._control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            cmd = frames[0]
            if cmd == b"functions":
                self.set_functions(json.loads(frames[1]))
            elif cmd == b"status":
                self.status_snapshot = json.loads(frames[1])
            elif cmd == b"forget":
                self.forget(frames[1], "process exited")
            elif cmd == b"stop":
                self.running = False

    def set_functions(self, table: dict[str, dict]) -> None:
        for name, spec in table.items():
            fq = self.functions.get(name)
            if fq is None:
                fq = self.functions[name] = FunctionQueue(name, spec["maxQueued"],
                                                          spec["maxWait"])
            fq.max_queued, fq.max_wait = spec["maxQueued"], spec["maxWait"]
            fq.concurrency = spec.get("concurrency", fq.concurrency)
            fq.memory = spec.get("memory", fq.memory)
            fq.available, fq.reason = spec["available"], spec.get("reason", "")
            if not fq.available:
                while fq.waiting:
                    client, request_id, _, _ = fq.waiting.popleft()
                    self._reply(client, request_id, p.UNAVAILABLE, p.error_body(
                        "Sora.FunctionUnavailable", f"Function {name} cannot serve: {fq.reason}"))

    def status_body(self) -> bytes:
        functions = {name: dict(info) for name, info in
                     self.status_snapshot.get("functions", {}).items()}
        for name, fq in self.functions.items():
            info = functions.setdefault(name, {})
            info["queued"] = len(fq.waiting)
            info["inFlight"] = sum(len(w.inflight) for w in fq.workers)
            info["freeSlots"] = sum(w.credits for w in fq.workers if not w.draining)
            info["instances"] = sum(w.instances for w in fq.workers)
            info["workers"] = len(fq.workers)
        return json.dumps({**self.status_snapshot, "functions": functions}).encode()

    # --- timers ---------------------------------------------------------------------------------
    def expire_waiting(self, now: float) -> float:
        nearest = p.HEARTBEAT_INTERVAL
        for fq in self.functions.values():
            while fq.waiting and fq.waiting[0][3] <= now:
                client, request_id, _, _ = fq.waiting.popleft()
                self._reply(client, request_id, p.NO_CAPACITY, p.error_body(
                    "Sora.NoCapacity", f"No instance of {fq.name} became free within "
                    f"{fq.max_wait:.2f} seconds"))
            if fq.waiting:
                nearest = min(nearest, fq.waiting[0][3] - now)
        return nearest

    def beat(self, now: float) -> None:
        silent_after = p.HEARTBEAT_INTERVAL * p.HEARTBEAT_LIVENESS
        for identity, worker in list(self.workers.items()):
            if now - worker.last_seen > silent_after:
                self.forget(identity, f"silent for {now - worker.last_seen:.1f}s")
                self._notify("silent", identity)
            else:
                self._send_worker(identity, p.HEARTBEAT)
        if self.records is not None:
            self.records.flush()   # takes acknowledgements and resends what has none

    def run(self) -> None:
        if self._records_dir is not None:
            self.records = RecordSender(self._records_dir, self.ctx)
        poller = zmq.Poller()
        for sock in (self.frontend, self.backend, self._control):
            poller.register(sock, zmq.POLLIN)
        next_beat = time.monotonic() + p.HEARTBEAT_INTERVAL
        timeout = p.HEARTBEAT_INTERVAL
        while self.running:
            events = dict(poller.poll(max(1, int(timeout * 1000))))
            if self.backend in events:
                self.handle_backend()
            if self.frontend in events:
                self.handle_frontend()
            if self._control in events:
                self.handle_control()
            now = time.monotonic()
            timeout = self.expire_waiting(now)
            if now >= next_beat:
                self.beat(now)
                next_beat = now + p.HEARTBEAT_INTERVAL
            timeout = max(0.001, min(timeout, next_beat - now))
        self.close()

    def close(self) -> None:
        for fq in self.functions.values():
            while fq.waiting:
                client, request_id, _, _ = fq.waiting.popleft()
                self._reply(client, request_id, p.UNAVAILABLE, p.error_body(
                    "Sora.ShuttingDown", "The host is shutting down"))
        for identity in list(self.workers):
            self.forget(identity, "broker stopped")
        for sock in (self.frontend, self.backend, self._control):
            sock.close(linger=0)
        if self.records is not None:
            # The recorder has stopped by now: nothing would take what is left.
            self.records.close(wait=0)
