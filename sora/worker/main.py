"""The worker: one Python process per function, keeping a pool of warm runtime instances.

It binds its own ROUTER (the data endpoint, `w-<pid>.sock` in the state dir's run folder, or on
a host with `cluster.advertise` a CURVE tcp port there: tcp_endpoint.py), where
clients (gateway processes, the dispatcher, `sora invoke --local`) send invocations directly:
each client says HELLO and gets a window of credits of its own, and the requests of all clients
join one FIFO in arrival order, so no client starves another. A DEALER to the control plane
announces the worker (READY with its endpoint), asks for instances (GROW -> GRANT) and
heartbeats. It is a single-threaded poll loop over both sockets and every instance's control
and log pipes; signal handlers only queue.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections import deque

import zmq

from .. import protocol as p
from ..hotpath import quiet_gc, recv_ready, send_frames
from .. import config_snapshot
from ..config import ConfigError, FunctionConfig, LogsConfig, RecordsConfig
from ..function_response import BadFunctionResponse, map_result
from ..store.recorder import RecordSender
from ..cluster.keys import KeyRing, KeysError, load_keys
from .tcp_endpoint import bind_tcp, max_request_bytes
from ..runtimes.pool import PoolClient, PooledProcess
from ..setup.run import SetupRun
from .instance import Instance, State
from .container_instance import ContainerInstance
from ..runtimes.image.containers import ImageContainerFactory
from .image_instance import ImageInstance
from ..containers import spec
from ..containers.spares import ContainerFactory
from ..runtimes.base import in_container
from .logs import FunctionLog
from .report import end_lines, start_line
from ..runtimes import Runtime, runtime_for
from ..containers import engine
from ..isolation import cgroups, nofollow, sandbox, watched
from .scaling import SCALE_OUT_WAIT, idle_expired, plan_scale_out
from . import warmup
from ..isolation.secrets import Secrets, declared_env_names, read_secrets
from ..versions.qualifier import LATEST, data_key, split_key
from ..versions.store import VersionStore

log = logging.getLogger("sora.worker")

# Credits: how many invocations per instance the worker takes from each client. Two for any
# function, so the next invocation is already here when an instance finishes. A fast function
# (invocations averaging under FAST seconds) gets more, and each of its instances may hold
# several: one running, the rest written to its stdin, so it starts the next one without a
# round trip through the worker, and results come back in batches. A function that turns slow
# (over SLOW seconds) gives the extra credits back, so long invocations never queue behind
# each other inside an instance while another instance could take them.
CREDITS_SLOW = 2
CREDITS_FAST = 16
PIPELINE_DEPTH_FAST = 8
FAST, SLOW = 0.002, 0.010
# An instance that dies this many times in a row before becoming ready means the function cannot
# boot; the worker then exits with EXIT_BOOT_ERROR and the supervisor decides what follows.
MAX_INIT_FAILURES = 3
RECONNECT_MIN, RECONNECT_MAX = 1.0, 32.0
# After the control plane granted fewer instances than asked (concurrency or host limits reached),
# ask again no sooner than this.
REGROW_AFTER = 1.0
# How often idle instances are checked against idleTimeout.
SCALE_IN_INTERVAL = 0.5
# A stopping worker exits once it holds nothing and has taken no request for this long since
# it said DISCONNECT: a client may have sent a request before it read the DISCONNECT (one
# loop turn of a busy gateway), and a request that reaches a socket already closed is lost
# (WORKER_LOST). Seen in a reload's switch under load: 1 call in ~3,000.
STOP_QUIET = 0.3


class Worker:
    def __init__(self, fn: FunctionConfig, runtime: Runtime, state_dir: str, control: str,
                 secrets: Secrets | None = None, log_limits: dict | None = None,
                 setup_withheld: frozenset[str] = frozenset(), keys: KeyRing | None = None,
                 advertise: str | None = None, records_endpoint: str | None = None,
                 records_server_key: bytes | None = None, max_body_bytes: int = 6 << 20,
                 warm_up: bool = False, docker_socket: str = engine.DEFAULT_SOCKET,
                 prestarted: int = 0, image_config: dict | None = None):
        """With `advertise` (and `keys`), the data endpoint is tcp on that address (CURVE);
        with `records_endpoint`, records go to that tcp recorder (the main host's, CURVE,
        its key `records_server_key`). With `warm_up` (a reload's new generation), at least
        one instance is started, loads the module and answers one warm-up call
        (sora.worker.warmup) before the worker binds and says READY: a module that throws at
        load, a runtime that exits on the warm-up or a warm-up past the timeout is a boot
        error, and the previous generation keeps serving (docs/architecture.md, "Live
        reload")."""
        self.fn = fn
        self.warm_up = warm_up
        # The warm-up call's (status, body) once answered; whether its runtime then exited.
        self.warm_up_answer: tuple[bytes, bytes] | None = None
        self.warm_up_exited = False
        self.keys, self.advertise = keys, advertise
        self.max_body_bytes = max_body_bytes   # bounds a tcp endpoint's messages
        self.auth = None   # the ZAP authenticator of a tcp data endpoint
        self.setup_withheld = setup_withheld  # for coldStart: always-setup (SetupRun)
        self.secrets = secrets or Secrets(fn, {}, state_dir)
        self.secrets.write_files()
        self.state_dir = state_dir
        self.control_endpoint = control
        self.data_endpoint = p.worker_data_endpoint(state_dir, os.getpid())
        self.runtime = runtime
        self.ctx = zmq.Context.instance()
        self.records = RecordSender(state_dir, self.ctx, endpoint=records_endpoint, keys=keys,
                                    server_key=records_server_key)
        self.pool = PoolClient(state_dir)   # pre-started runtimes, for fast cold starts
        self.log = FunctionLog(state_dir, fn.name, self.records,
                               self.secrets.redact if self.secrets.values else None,
                               **(log_limits or {}))
        self.meta: dict[bytes, bytes] = {}  # request id -> how it came, unless plain http
        self.fn_name = fn.name.encode()
        self.fn_version = fn.version.encode()   # "$LATEST" or a published version's number
        # The data path's key: the name, or `name:N` for a published version's worker.
        self.key = data_key(fn.name, fn.version)
        self.identity = p.worker_identity(self.key, os.getpid())
        self.poller = zmq.Poller()
        self.sock: zmq.Socket | None = None    # DEALER to the control plane
        self.data: zmq.Socket | None = None    # ROUTER the clients send invocations to
        # Client identity -> when it was last heard from (a client silent for
        # HEARTBEAT_LIVENESS intervals is forgotten: no more heartbeats or credit changes).
        self.clients: dict[bytes, float] = {}
        self.announce_due = False   # the control plane does not know us: READY again
        self.reconnect_at = 0.0
        self.replies: list[list[bytes]] = []   # answers of this loop turn, not yet sent
        # END and REPORT lines of invocations answered this loop turn (request id, lines):
        # written once the turn has drained the log pipes, where their last lines are.
        self.ends: list[tuple[str, list[bytes]]] = []
        # Invocations answered this turn whose record and END/REPORT lines are not made yet
        # (`finish`): made once the turn's replies are sent.
        self.unrecorded: list[tuple] = []
        self.log_due: float | None = None   # seconds until the log file's write is due
        self.records_due: float | None = None   # seconds until the records batch is sent
        self.instances: list[Instance] = []
        self.idle: list[Instance] = []
        # (client, id, payload, monotonic arrival): invocations waiting for an instance
        self.pending: deque[tuple[bytes, bytes, bytes, float]] = deque()
        self.fd_owner: dict[int, tuple[Instance, str]] = {}
        self.init_failures = 0
        self.last_init_error = b""
        self.stopping = False
        # A published version's worker exits when it has had no instance and no call for
        # idleTimeout (p.EXIT_IDLE): a version is warm only while it is used.
        self.exits_when_idle = fn.version != LATEST
        self.quiet_since = time.monotonic()
        self.idle_exit = False
        self.quiet_from = 0.0   # while stopping: the DISCONNECT, or the last request since
        self.parent = os.getppid()
        self.last_heard = self.last_sent = self.last_client_beat = time.monotonic()
        self.reconnect_delay = RECONNECT_MIN
        self.avg_duration = SLOW  # EWMA of invocation durations; slow until shown otherwise
        self.credits_per_instance = CREDITS_SLOW
        self.signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        # coldStart: always-setup: per instance index, the setup run before its fresh instance.
        self.setups: dict[int, SetupRun] = {}
        # Autoscaling (sora.worker.scaling): the most instances this worker may run, the
        # instances asked of the control plane and not yet granted, and when to look again.
        self.max_instances = min(fn.maxInstances, fn.concurrency)
        self.next_index = 0
        self.asking = 0
        self.unstarted = 0   # granted, not started yet (autoscale starts one per loop turn)
        self.scale_out_at: float | None = None   # when the last grant came, until all ready
        self.scale_out_started = self.scale_out_pooled = 0   # since then: all, pre-started
        self.regrow_at = 0.0
        self.next_scale_in = 0.0
        self.scale_reason = ""
        self.cgroups = cgroups.GroupMaker(f"{fn.name}-{os.getpid()}-",
                                          f"the instances of {fn.name}")
        # isolation: container: the thread that makes the containers (start_containers).
        self.docker_socket, self.prestarted = docker_socket, prestarted
        self.image_config = image_config   # engine.check's, from main()
        self.containers: ContainerFactory | None = None
        self.image_path = spec.DEFAULT_PATH

    # --- signals: the handler only queues ------------------------------------------------------
    def _on_signal(self, signum, _frame) -> None:
        self.signals.append(signum)

    def install_signals(self) -> None:
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        signal.set_wakeup_fd(self._wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.poller.register(self._wake_r, zmq.POLLIN)

    # --- instances ------------------------------------------------------------------------------
    def spawn_instance(self, index: int | None = None) -> Instance:
        if index is None:
            index, self.next_index = self.next_index, self.next_index + 1
        if self.containers is not None and self.fn.package == "image":
            inst = ImageInstance(self.runtime, self.fn, index, self.log, None, {}, None,
                                 containers=self.containers, path=self.image_path)
        elif self.containers is not None:   # its container's own cgroup, not one of Sora's
            inst = ContainerInstance(self.runtime, self.fn, index, self.log, None,
                                     self.secrets.environment(), None,
                                     containers=self.containers, path=self.image_path)
        else:
            inst = Instance(self.runtime, self.fn, index, self.log, self.pool,
                            self.secrets.environment(), self.cgroups.new(self.fn.memory))
        try:
            inst.start()
        except nofollow.UnsafePath as exc:
            # A watched folder became a link (or not a folder) since the worker's start: the
            # instance does not start without its mount (sora.isolation.watched).
            if inst.cgroup is not None:
                inst.cgroup.remove()
            raise BootError(p.error_body("Sora.ConfigError",
                                         f"{self.fn.source}: {exc.strerror}")) from None
        if self.scale_out_at is not None:   # for the scale-out's summary (autoscale)
            self.scale_out_started += 1
            self.scale_out_pooled += isinstance(inst.proc, PooledProcess) or \
                getattr(inst.proc, "spare", False)
        self.instances.append(inst)
        for fd, kind in ((inst.control_fd, "control"), (inst.log_fds[0], "log"),
                         (inst.log_fds[1], "log")):
            self.fd_owner[fd] = (inst, kind)
            self.poller.register(fd, zmq.POLLIN)
        return inst

    def retire_instance(self, inst: Instance, kill: bool) -> None:
        for fd in (inst.control_fd, *inst.log_fds):
            if fd in self.fd_owner:
                self.poller.unregister(fd)
                del self.fd_owner[fd]
        if kill:
            inst.kill()
        else:
            inst.end()
        self.instances.remove(inst)
        if inst in self.idle:
            self.idle.remove(inst)

    def replace_instance(self, inst: Instance, kill: bool) -> None:
        """Retire an instance (dead, hung, or done under coldStart) and start a fresh one in
        its place; it serves what is still pending even while the worker stops."""
        booting = inst.state == State.BOOTING
        current = inst.release_current()
        self.requeue(inst)
        self.retire_instance(inst, kill)  # reaps it, so its exit status is known below
        if current is not None:
            if inst.oom_killed():
                body = p.error_body("Sora.OutOfMemory", (
                    f"The function used more than its memory ({self.fn.memory} MB) and was "
                    f"killed while handling request {current[1].decode()}"))
            else:
                body = p.error_body("Sora.RuntimeExited", (
                    f"Runtime exited with {inst.exit_description()} while handling request "
                    f"{current[1].decode()}"))
            self.finish(inst, current, p.RUNTIME_EXITED, body)
        if booting:
            self.init_failures += 1
            if inst.init_error is None:
                self.last_init_error = p.error_body(
                    "Runtime.ExitError",
                    f"Runtime exited with {inst.exit_description()} before it was ready")
            else:
                self.last_init_error = inst.init_error
            if self.init_failures >= MAX_INIT_FAILURES:
                raise BootError(self.last_init_error)
        if self.stopping and not self.pending:
            return
        if self.fn.coldStart == "always-setup":
            # The fresh instance starts once a fresh setup has run (poll_setups).
            run = SetupRun(self.fn, self.state_dir, force=True, withheld=self.setup_withheld,
                           docker_socket=self.docker_socket)
            run.start()
            self.setups[inst.index] = run
        else:
            self.spawn_instance(inst.index)

    def renew_instance(self, inst: Instance) -> None:
        """coldStart: always[-setup]: the instance that has just answered is replaced, so the
        next invocation runs cold."""
        inst.release_current()
        inst.drain_logs()
        self.replace_instance(inst, kill=True)

    def poll_setups(self) -> None:
        for index, run in list(self.setups.items()):
            outcome = run.poll()
            if outcome is None:
                continue
            del self.setups[index]
            if outcome.config_changed:   # the operator's file: no instance runs after that
                raise BootError(p.error_body("Sora.ConfigError", outcome.reason))
            if not outcome.ok:
                # The fresh instance starts all the same: what the setup left decides how the
                # next invocation goes, which is what a cold-path test wants to see.
                log.error("%s: setup before a fresh instance failed: %s", self.fn.name,
                          outcome.reason)
                self.log.write("-", "stderr", [f"sora: setup failed: {outcome.reason}"
                                               .encode()])
            self.spawn_instance(index)

    # --- the data endpoint and the control plane connection ----------------------------------
    def bind(self) -> None:
        """Bind the ROUTER clients send invocations to (before READY tells anyone of it)."""
        if self.advertise:
            self.data, self.data_endpoint, self.auth = bind_tcp(
                self.ctx, self.keys, self.advertise, max_request_bytes(self.max_body_bytes))
        else:
            self.data = self.ctx.socket(zmq.ROUTER)
        self.data.setsockopt(zmq.SNDHWM, 200_000)
        self.data.setsockopt(zmq.RCVHWM, 200_000)
        self.data.setsockopt(zmq.LINGER, 1000)
        # A reply to a client that is gone raises (and is dropped) rather than queueing.
        self.data.setsockopt(zmq.ROUTER_MANDATORY, 1)
        path = p.ipc_path(self.data_endpoint)
        if path is not None:
            if os.path.exists(path):
                os.unlink(path)   # left by a worker of this pid that was killed (pids recycle)
            self.data.bind(self.data_endpoint)
        self.poller.register(self.data, zmq.POLLIN)

    def connect(self) -> None:
        if self.sock is not None:
            self.poller.unregister(self.sock)
            self.sock.close(linger=0)
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, self.identity)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.connect(self.control_endpoint)
        self.poller.register(self.sock, zmq.POLLIN)
        self.asking = 0
        self.announce()
        self.last_heard = time.monotonic()

    def announce(self) -> None:
        self.announce_due = False
        self.send([p.READY, self.key.encode(), self.data_endpoint.encode(),
                   str(self.instance_count()).encode()])

    def window(self) -> int:
        """The credits each client gets: what its calls may hold here at once."""
        return self.max_instances * self.credits_per_instance

    def instance_count(self) -> int:
        """Instances running or starting (a fresh setup before one, or a granted instance
        not started yet, counts as one)."""
        return len(self.instances) + len(self.setups) + self.unstarted

    def held(self) -> int:
        """Invocations this worker holds: in its instances and waiting for one."""
        return sum(i.depth for i in self.instances) + len(self.pending)

    def figures(self) -> list[bytes]:
        """busy, idle, starting, queued: the heartbeat's live figures (once a second, off the
        invocation path), which the status and /metrics sum per function."""
        busy = sum(inst.state is State.BUSY for inst in self.instances)
        return [str(busy).encode(), str(len(self.idle)).encode(),
                str(self.starting()).encode(), str(len(self.pending)).encode()]

    def send(self, frames: list[bytes]) -> None:
        self.send_replies()   # in order: a reply is never overtaken by what followed it
        send_frames(self.sock, frames)
        self.last_sent = time.monotonic()

    def send_replies(self) -> None:
        """Send the replies of this loop turn back to back: ZeroMQ's I/O thread then wakes
        once for them all rather than once for each (a context switch each, on the path of
        every invocation)."""
        if self.replies and self.data is not None:
            replies, self.replies = self.replies, []
            for frames in replies:
                try:
                    send_frames(self.data, frames)
                except zmq.ZMQError:
                    pass   # the client is gone: nobody waits for this answer

    def send_clients(self, frames: list[bytes]) -> None:
        """Send a message to every client this worker knows (CREDIT, HEARTBEAT, DISCONNECT),
        after this turn's replies."""
        self.send_replies()
        for client in list(self.clients):
            try:
                send_frames(self.data, [client, *frames])
            except zmq.ZMQError:
                del self.clients[client]   # gone without a BYE

    def finish(self, inst: Instance | None, current: tuple, status: bytes,
               body: bytes) -> None:
        """Answer an invocation. Its record and its END and REPORT lines are made after the
        turn's replies have left (`record_finished`): they are nothing the caller waits for.
        An answer that carries its log's tail needs its END and REPORT lines first."""
        client, request_id, _, started = current
        if client == warmup.CLIENT:
            self.finish_warm_up(inst, current, status, body)
            return
        meta = self.meta.pop(request_id, None) if self.meta else None
        if meta is None and status == p.OK and b'"statusCode"' in body:
            status, body = checked_url_result(body)
        took = time.monotonic() - started
        cold = inst is None or inst.completed == 0
        if inst is not None:
            inst.completed += 1
        finished = (inst, request_id, status, body, meta, took, time.time() - took, cold)
        if meta is not None and meta.endswith(p.FLAG_TAIL):
            ends = self.record(*finished)
            if inst is not None:
                inst.drain_logs()  # its lines come before its result: read them first
                self.log.end(request_id.decode(), ends)
            self.replies.append([client, p.REPLY, request_id, status, body,
                                 self.log.tail(request_id.decode())])
        else:
            self.replies.append([client, p.REPLY, request_id, status, body])
            self.unrecorded.append(finished)

    def finish_warm_up(self, inst: Instance | None, current: tuple, status: bytes,
                       body: bytes) -> None:
        """The warm-up call answered (or failed): no reply and no record, only its END and
        REPORT lines (its Init Duration: the instance's cold start was the warm-up's)."""
        request_id, started = current[1], current[3]
        took = time.monotonic() - started
        if inst is not None:
            cold = inst.completed == 0
            inst.completed += 1
            record_status = RECORD_STATUS.get(status, b"error")
            error_type = None if status == p.OK else \
                ERROR_TYPES.get(status) or p.parse_error(body)[0]
            self.ends.append((request_id.decode(), end_lines(
                request_id, took * 1000, self.fn.memory, inst.max_memory_used_mb(),
                inst.init_duration_ms if cold else None, record_status, error_type)))
        self.warm_up_answer = (status, body)

    def record_finished(self) -> None:
        """Records and END/REPORT lines of the invocations answered since the last call."""
        finished, self.unrecorded = self.unrecorded, []
        for item in finished:
            ends = self.record(*item)
            if ends is not None:
                self.ends.append((item[1].decode(), ends))

    def record(self, inst: Instance | None, request_id: bytes, status: bytes, body: bytes,
               meta: bytes | None, took: float, start: float,
               cold: bool) -> list[bytes] | None:
        """Record one answered invocation (a formatted line, sent to the recorder with the
        others of its batch); return its END and REPORT lines (None: no instance ran it, as
        when the function could not boot)."""
        record_status = RECORD_STATUS.get(status, b"error")
        error_type, error_message = (None, None) if status == p.OK else p.parse_error(body)
        error_type = ERROR_TYPES.get(status) or error_type
        max_memory = ends = None
        if inst is not None:
            max_memory = inst.max_memory_used_mb()
            ends = end_lines(request_id, took * 1000, self.fn.memory, max_memory,
                             inst.init_duration_ms if cold else None, record_status,
                             error_type)
        self.records.record(
            request_id, self.fn_name, meta.partition(b"+")[0] if meta else p.TRIGGER_HTTP,
            start, took * 1000, record_status, error_type, cold, version=self.fn_version,
            error_message=error_message, max_memory_mb=max_memory,
            init_ms=inst.init_duration_ms if cold and inst else None)
        return ends

    def write_ends(self) -> None:
        """The END and REPORT lines of the invocations answered this turn, after their last
        lines: an answer is read before the log pipes in a loop turn, and the runtime wrote
        the invocation's end markers before its answer, so the turn has read them."""
        if self.unrecorded:
            self.record_finished()
        ends, self.ends = self.ends, []
        for request_id, lines in ends:
            self.log.end(request_id, lines)

    def handle_clients(self) -> None:
        """Invocations and hellos from clients. Every request joins the one FIFO (`pending`) in
        arrival order, whichever client sent it; each client's window bounds what it holds."""
        now = time.monotonic()
        clients = self.clients
        for frames in recv_ready(self.data):
            client, cmd = frames[0], frames[1]
            clients[client] = now   # a client forgotten while still there is known again
            if cmd == p.REQUEST and len(frames) >= 4:
                if not p.valid_request_id(frames[2]):   # it is spliced into text: refuse it
                    self.replies.append([client, p.REPLY, frames[2], p.BAD_REQUEST,
                                         p.BAD_REQUEST_ID])
                    continue
                self.pending.append((client, frames[2], frames[3], now))
                if self.stopping:
                    self.quiet_from = now
                if len(frames) > 4 and frames[4] != p.TRIGGER_HTTP:
                    self.meta[frames[2]] = frames[4]
                    if frames[4].endswith(p.FLAG_TAIL):
                        self.log.want_tail(frames[2].decode())
            elif cmd == p.HELLO:
                self.send_replies()
                try:
                    send_frames(self.data, [client, p.CREDIT, str(self.window()).encode()])
                    if self.stopping:
                        send_frames(self.data, [client, p.DISCONNECT])
                except zmq.ZMQError:
                    del clients[client]
            elif cmd == p.BYE:
                del clients[client]
        self.dispatch()

    def handle_control_plane(self) -> None:
        for frames in recv_ready(self.sock):
            self.last_heard = time.monotonic()
            self.reconnect_delay = RECONNECT_MIN
            cmd = frames[0]
            if cmd == p.GRANT:
                self.on_grant(int(frames[1]))
            elif cmd == p.DISCONNECT:
                # "I do not know you" (the control plane restarted, or forgot us while we
                # were silent): announce again with the next heartbeat.
                self.announce_due = True

    def beat(self, now: float) -> bool:
        """Heartbeats: to the control plane with what this worker runs and holds, and to
        every client heard from lately (a client silent too long is forgotten). True if one
        went to the control plane (so about once a second)."""
        to_control = now - self.last_sent >= p.HEARTBEAT_INTERVAL
        if to_control:
            if self.announce_due:
                self.announce()
            else:
                self.send([p.HEARTBEAT, str(self.instance_count()).encode(),
                           str(self.held()).encode(), *self.figures()])
        if now - self.last_client_beat >= p.HEARTBEAT_INTERVAL:
            self.last_client_beat = now
            silent_after = p.HEARTBEAT_INTERVAL * p.HEARTBEAT_LIVENESS
            for client, last in list(self.clients.items()):
                if now - last > silent_after:
                    del self.clients[client]
            self.send_clients([p.HEARTBEAT])
        return to_control

    def dispatch(self) -> None:
        """Idle instances first; for a fast function, then behind running ones. Each instance
        then gets what it was handed in one write."""
        while self.pending and self.idle:
            self._hand(self.idle.pop())
        if self.pending and self.credits_per_instance == CREDITS_FAST:
            for inst in self.instances:
                while self.pending and inst.state is State.BUSY and \
                        inst.depth < PIPELINE_DEPTH_FAST:
                    self._hand(inst)
        lost = False
        for inst in self.instances:
            taken_back = inst.flush_input()
            if taken_back:
                # The instance died since its last answer: its invocations go back to the
                # front, and it is replaced once its control pipe reports the end.
                inst.state = State.EXITING
                self.give_back(taken_back)
                lost = True
        if lost:
            self.dispatch()   # to the others: an EXITING instance is handed nothing more

    def track_duration(self, seconds: float) -> None:
        """Follow how long invocations take; grant or take back credits when that changes."""
        self.avg_duration += (seconds - self.avg_duration) * 0.1
        if self.fn.coldStart != "never":
            return  # one invocation per instance: never queue more behind a running one
        if self.credits_per_instance == CREDITS_SLOW and self.avg_duration < FAST:
            target = CREDITS_FAST
        elif self.credits_per_instance == CREDITS_FAST and self.avg_duration > SLOW:
            target = CREDITS_SLOW
        else:
            return
        delta = (target - self.credits_per_instance) * self.max_instances
        self.credits_per_instance = target
        if self.data is not None:
            self.send_clients([p.CREDIT, str(delta).encode()])   # each client's window

    def _hand(self, inst: Instance) -> None:
        item = self.pending.popleft()
        self.log.begin(item[1].decode(), start_line(item[1], self.fn_version))
        inst.send(item[0], item[1], item[2])

    def requeue(self, inst: Instance) -> None:
        """Give the invocations an instance never started back to the worker's queue."""
        self.give_back(inst.take_queued())

    def give_back(self, items: list[tuple[bytes, bytes, bytes]]) -> None:
        """Put invocations (client, id, payload) back at the front of the queue, in order."""
        now = time.monotonic()
        for client, request_id, payload in reversed(items):
            self.pending.appendleft((client, request_id, payload, now))

    # --- autoscaling (the policy is sora.worker.scaling) ----------------------------------------
    def autoscale(self, now: float) -> float:
        """Start granted instances, ask for more for waiting invocations, stop those idle too
        long; return seconds until the next look is due."""
        wait = p.HEARTBEAT_INTERVAL
        if self.unstarted:
            # One granted instance per loop turn: between two starts the turn reads the
            # READY of those started before and hands them work, so a burst's first calls
            # run on the first instances while the others start (starting all at once held
            # the loop ~15-60 ms per instance while none of them was given anything).
            self.unstarted -= 1
            if not self.stopping:
                self.spawn_instance()
            wait = 0.0
        elif self.scale_out_at is not None and not self.starting():
            log.info("%s: scale out done: %d instance(s), the last ready %.0f ms after the "
                     "last grant; %d of the %d started were pre-started runtimes",
                     self.fn.name, self.instance_count(), (now - self.scale_out_at) * 1000,
                     self.scale_out_pooled, self.scale_out_started)
            self.scale_out_at = None
            self.scale_out_started = self.scale_out_pooled = 0
        if self.pending and not self.idle and not self.asking and now >= self.regrow_at \
                and self.sock is not None:
            oldest = now - self.pending[0][3]
            plan = plan_scale_out(
                instances=self.instance_count(), starting=self.starting(),
                waiting=len(self.pending), oldest_wait=oldest, max_instances=self.max_instances,
                per_instance=PIPELINE_DEPTH_FAST if self.credits_per_instance == CREDITS_FAST
                else 1, avg_duration=self.avg_duration)
            if plan is not None:
                self.asking = plan.count
                self.scale_reason = plan.reason
                self.send([p.GROW, str(plan.count).encode()])
            elif oldest < SCALE_OUT_WAIT:
                wait = min(wait, SCALE_OUT_WAIT - oldest)
        if now >= self.next_scale_in:
            self.next_scale_in = now + SCALE_IN_INTERVAL
            if not self.pending:
                self.scale_in(now)
        return min(wait, SCALE_IN_INTERVAL)

    def starting(self) -> int:
        """Instances granted and not ready yet: not started, booting, or behind a setup."""
        return self.unstarted + len(self.setups) + \
            sum(i.state is State.BOOTING for i in self.instances)

    def on_grant(self, granted: int) -> None:
        """The control plane granted instances: autoscale starts them, one per loop turn."""
        asked, self.asking = self.asking, 0
        before = self.instance_count()
        self.unstarted += granted
        if granted:
            self.scale_out_at = time.monotonic()
            log.info("%s: scale out %d -> %d instance(s): %s", self.fn.name, before,
                     before + granted, self.scale_reason)
        if granted < asked:
            self.regrow_at = time.monotonic() + REGROW_AFTER
            log.info("%s: asked for %d more instance(s), granted %d: the function's "
                     "concurrency (%d) or the host's limits are reached", self.fn.name, asked,
                     granted, self.fn.concurrency)

    def scale_in(self, now: float) -> None:
        idle = {inst.index: inst for inst in self.idle}
        expired = idle_expired({i: inst.idle_since for i, inst in idle.items()}, now=now,
                               instances=self.instance_count(),
                               min_instances=self.fn.minInstances,
                               idle_timeout=self.fn.idleTimeout)
        for index in expired:
            inst = idle[index]
            before = self.instance_count()
            self.retire_instance(inst, kill=True)
            log.info("%s: scale in %d -> %d instance(s): instance %d idle for %.1fs "
                     "(idleTimeout %gs)", self.fn.name, before, before - 1, inst.pid,
                     now - inst.idle_since, self.fn.idleTimeout)
        if expired and self.sock is not None:
            self.send([p.SHRINK, str(len(expired)).encode()])

    # --- instance events ------------------------------------------------------------------------
    def handle_control(self, inst: Instance) -> None:
        while inst.state is not State.DEAD:
            lines = inst.read_control()
            if lines is None:
                inst.drain_logs()
                self.replace_instance(inst, kill=False)
                return
            if not lines:
                return
            for line in lines:
                self.handle_control_line(inst, line)
                if inst.state is State.DEAD:
                    return   # replaced: what else it wrote is not read

    def handle_control_line(self, inst: Instance, line: bytes) -> None:
        kind = line[:2]
        if kind == b"R " or kind == b"E " or kind == b"X ":
            request_id, _, body = line[2:].partition(b" ")
            if kind == b"X " and request_id == b"-":
                # An uncaught error while no invocation ran (in the child's view): it is
                # exiting. What it had not started goes to other instances; it is replaced
                # once its control pipe closes (what the worker had counted as running fails
                # then, as in a crash).
                inst.state = State.EXITING
                if inst in self.idle:
                    self.idle.remove(inst)
                self.requeue(inst)
                return
            current = inst.current
            if current is None or request_id != current[1]:
                # Answers are matched by id, never by position: one for an invocation it is
                # not running (one it holds queued, another's, or one already answered, by
                # code that wrote to the control pipe itself) must not reach that caller.
                self.reject_instance(inst, "an answer for a request it is not running", line)
                return
            self.finish(inst, current, p.OK if kind == b"R " else p.FUNCTION_ERROR, body)
            self.track_duration(time.monotonic() - current[3])
            if kind == b"X ":
                # The child is exiting: what it had not started goes to other instances, and
                # it is replaced once its control pipe closes.
                self.warm_up_exited |= current[0] == warmup.CLIENT
                inst.release_current()
                inst.state = State.EXITING
                self.requeue(inst)
                return
            if self.fn.coldStart != "never":
                self.renew_instance(inst)
                return
            inst.advance()
            if inst.current is None:
                inst.state = State.IDLE
                inst.idle_since = time.monotonic()
                self.idle.append(inst)
        elif line == b"READY" and inst.state is State.BOOTING:
            inst.ready()
            inst.drain_logs()
            self.idle.append(inst)
            self.init_failures = 0
        elif line.startswith(b"INIT ") and inst.state is State.BOOTING:
            inst.init_error = line[5:]
        else:
            self.reject_instance(inst, "a line that is not a message of the protocol here",
                                 line)

    def reject_instance(self, inst: Instance, what: str, line: bytes) -> None:
        """The instance wrote on its control pipe what the protocol does not allow (an answer
        for a request it is not running, `READY` twice, text that is no message): the
        function's code may write to that pipe, so nothing more the instance says can be
        trusted. The line is dropped and the instance replaced, as after a crash: what it had
        not started goes to another instance, the invocation it was running fails."""
        log.warning("%s: instance %d wrote %s on its control pipe (%r); replacing it",
                    self.fn.name, inst.pid, what, line[:80])
        inst.drain_logs()   # what it printed so far is the running invocation's
        current = inst.release_current()
        self.requeue(inst)
        if current is not None:
            self.finish(inst, current, p.RUNTIME_EXITED, p.error_body(
                "Sora.ProtocolError",
                f"The runtime wrote {what} while handling request {current[1].decode()}; "
                "its instance was replaced"))
        elif inst.state is State.BOOTING and inst.init_error is None:
            inst.init_error = p.error_body(
                "Sora.ProtocolError", f"The runtime wrote {what} before it was ready")
        self.replace_instance(inst, kill=True)

    def check_deadlines(self, now: float) -> float:
        """Kill instances past their deadline; return seconds until the next deadline."""
        nearest = p.HEARTBEAT_INTERVAL
        for inst in list(self.instances):
            if inst.current is None:
                continue
            left = inst.current[2] - now
            if left <= 0:
                current = inst.release_current()
                self.requeue(inst)
                inst.drain_logs()
                self.finish(inst, current, p.TIMEOUT, p.error_body(
                    "Sora.Timeout", p.timeout_message(self.fn.timeout)))
                log.warning("%s: request %s timed out after %.2fs; replacing instance %d",
                            self.fn.name, current[1].decode(), self.fn.timeout, inst.pid)
                self.replace_instance(inst, kill=True)
            else:
                nearest = min(nearest, left)
        return nearest

    # --- main loop ------------------------------------------------------------------------------
    def begin_stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            self.quiet_from = time.monotonic()
            log.info("%s: stopping; finishing %d in-flight invocations", self.fn.name,
                     self.held())
            # Clients send nothing more; what they sent already is still answered.
            if self.data is not None:
                self.send_clients([p.DISCONNECT])
            if self.sock is not None:
                self.send([p.DISCONNECT])

    def start_containers(self) -> None:
        """isolation: container: read the image's PATH and start the container thread, which
        makes the pre-started containers at once. An engine or image the worker cannot use is
        a boot error saying which (the supervisor checks both before the worker starts)."""
        config = self.image_config
        if config is None:
            try:
                config = engine.check(self.docker_socket, self.fn.image)
            except Exception as exc:
                raise BootError(p.error_body("Sora.ContainerError", str(exc))) from None
        if self.fn.package == "image":   # a Lambda container image
            self.containers = ImageContainerFactory(
                self.fn, self.runtime, config, self.state_dir, self.docker_socket,
                self.prestarted, self.secrets.directory)
            self.containers.fill()
            return
        for item in config.get("Env") or ():
            if item.startswith("PATH="):
                self.image_path = item[5:]
        env = self.runtime.environment(self.fn)   # no secret: those come with the assignment
        env.update({"PATH": self.image_path, "HOME": "/tmp", "SORA_STANDBY": "1",
                    "SORA_CONTROL_FD": "3"})
        self.containers = ContainerFactory(
            self.fn, self.runtime.argv(self.fn), env, self.state_dir, self.docker_socket,
            self.prestarted, self.secrets.directory, config.get("Volumes") or {})
        self.containers.fill()

    def boot(self) -> None:
        """Start the instances and wait until each is ready (or the function cannot boot)."""
        if in_container(self.fn):
            self.start_containers()
        for _ in range(max(self.fn.minInstances, 1 if self.warm_up else 0)):
            self.spawn_instance()
        deadline = time.monotonic() + max(30.0, self.fn.timeout)
        while any(i.state is State.BOOTING for i in self.instances):
            left = deadline - time.monotonic()
            if left <= 0:
                raise BootError(p.error_body("Runtime.InitTimeout", (
                    f"The runtime did not become ready within {max(30.0, self.fn.timeout):.0f} "
                    "seconds")))
            self.poll_once(left)
            if self.signals:
                raise SystemExit(0)
        if self.warm_up:
            self.warm()

    def warm(self) -> None:
        """Send one ready instance the warm-up call (sora.worker.warmup) through the usual
        dispatch and wait for its answer; raise BootError unless the handler answered."""
        request_id = warmup.request_id()
        started = time.monotonic()
        self.pending.append((warmup.CLIENT, request_id, warmup.EVENT, started))
        self.dispatch()   # to a ready instance now (else the first turn hands it over)
        # Once handed over, the function's timeout bounds it (check_deadlines); this bounds
        # the wait for an instance to hand it to (one replaced meanwhile boots again).
        deadline = started + max(30.0, self.fn.timeout) + self.fn.timeout
        while self.warm_up_answer is None:
            now = time.monotonic()
            if now >= deadline:
                raise BootError(p.error_body("Sora.Timeout", (
                    f"the warm-up call got no answer within {deadline - started:.0f} "
                    "seconds")))
            self.poll_once(min(self.check_deadlines(now), deadline - now))
            if self.signals:
                raise SystemExit(0)
        status, body = self.warm_up_answer
        if self.warm_up_exited:
            raise BootError(warmup.failure(p.RUNTIME_EXITED, body))
        if not warmup.warmed(status):
            raise BootError(warmup.failure(status, body))
        self.write_ends()   # its END and REPORT lines, before the worker says READY
        self.log.flush()
        log.info("%s: warm-up call %s answered in %.0f ms%s", self.fn.name,
                 request_id.decode(), (time.monotonic() - started) * 1000,
                 "" if status == p.OK else " (with the handler's error)")

    def poll_once(self, timeout: float) -> None:
        self.send_replies()   # answers given between turns (deadlines) go before any wait
        if self.unrecorded or self.ends:   # and their lines and records (drained)
            self.write_ends()
            self.log.flush()
            self.records_due = self.records.flush(time.monotonic())
        events = self.poller.poll(max(0, int(timeout * 1000)) if timeout else 0)
        for item, _ in events:
            if item is self.data:
                self.handle_clients()
            elif item is self.sock:
                self.handle_control_plane()
            elif item == self._wake_r:
                try:
                    while os.read(self._wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            else:
                owner = self.fd_owner.get(item)
                if owner is None:
                    continue
                inst, kind = owner
                if kind == "control":
                    self.handle_control(inst)
                else:
                    inst.drain_logs(item)
        if self.idle and self.pending:
            self.dispatch()
        self.send_replies()
        if self.unrecorded or self.ends:
            self.write_ends()
        now = time.monotonic()
        self.log_due = self.log.flush(now)
        self.records_due = self.records.flush(now)

    def run(self) -> int:
        self.install_signals()
        try:
            self.boot()
            quiet_gc()
            self.bind()
            self.connect()
            log.info("%s: worker %d ready with %d instance(s) at %s%s", self.fn.name,
                     os.getpid(), len(self.instances), self.data_endpoint,
                     "" if self.fn.sandboxed or in_container(self.fn) else
                     "; isolation: none (instances run as Sora's user, without a sandbox)")
            timeout = 0.0
            while True:
                self.poll_once(timeout)
                if self.signals:
                    self.signals.clear()
                    self.begin_stop()
                now = time.monotonic()
                timeout = min(self.check_deadlines(now), self.autoscale(now))
                if self.exits_when_idle and not self.stopping:
                    timeout = min(timeout, self.exit_if_idle(now))
                if self.log_due is not None:   # lines wait in the log file's buffer
                    timeout = min(timeout, self.log_due)
                if self.records_due is not None:   # records wait to be sent as one batch
                    timeout = min(timeout, self.records_due)
                if self.setups:
                    self.poll_setups()
                    timeout = min(timeout, 0.05)  # setup commands end without a wake-up
                if self.stopping and not self.pending and \
                        not any(i.current for i in self.instances):
                    quiet = now - self.quiet_from
                    if quiet >= STOP_QUIET:
                        break
                    timeout = min(timeout, STOP_QUIET - quiet)
                # Heartbeats go on while stopping: the control plane keeps this worker a
                # member (and clients wait for its answers) until it has exited.
                if self.beat(now) and os.getppid() != self.parent:
                    log.error("%s: supervisor is gone; exiting", self.fn.name)
                    break
                if now - self.last_heard > p.HEARTBEAT_INTERVAL * p.HEARTBEAT_LIVENESS and \
                        now >= self.reconnect_at:
                    # Clients keep sending here meanwhile: only the control plane is missing.
                    log.warning("%s: control plane silent; reconnecting", self.fn.name)
                    self.connect()
                    self.reconnect_at = now + self.reconnect_delay
                    self.reconnect_delay = min(self.reconnect_delay * 2, RECONNECT_MAX)
                timeout = min(timeout, max(0.0, p.HEARTBEAT_INTERVAL - (now - self.last_sent)),
                              max(0.0, p.HEARTBEAT_INTERVAL - (now - self.last_client_beat)))
        except BootError as exc:
            self.fail_pending(exc.body)
            path = p.boot_error_path(self.state_dir, self.key)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(exc.body)
            log.error("%s: cannot boot: %s", self.fn.name, exc.body.decode(errors="replace"))
            return p.EXIT_BOOT_ERROR
        finally:
            self.shutdown()
        return p.EXIT_IDLE if self.idle_exit else 0

    def exit_if_idle(self, now: float) -> float:
        """A version's worker: begin stopping once it has had no instance, nothing pending
        and nothing asked for idleTimeout; returns the seconds until it looks again."""
        if self.instances or self.pending or self.unstarted or self.asking or self.setups:
            self.quiet_since = now
        elif now - self.quiet_since >= self.fn.idleTimeout:
            log.info("%s: version %s idle for %.0fs with no instance; its worker exits",
                     self.fn.name, self.fn.version, now - self.quiet_since)
            self.idle_exit = True
            self.begin_stop()
            return 0.0
        return max(0.05, self.quiet_since + self.fn.idleTimeout - now)

    def fail_pending(self, body: bytes) -> None:
        while self.pending and self.data is not None:
            client, request_id, _, _ = self.pending.popleft()
            self.finish(None, (client, request_id, 0.0, time.monotonic()), p.INIT_ERROR, body)

    def shutdown(self) -> None:
        for run in self.setups.values():
            run.kill()
        for inst in list(self.instances):
            self.retire_instance(inst, kill=True)
        if self.containers is not None:   # its spares, and every container removed
            self.containers.close()
        self.pool.close()
        self.secrets.remove()
        self.send_replies()
        self.write_ends()
        self.log.flush()
        self.log.close()
        self.records.close()
        if self.sock is not None:
            self.sock.close(linger=1000)
        if self.data is not None:
            self.data.close(linger=1000)
            if (path := p.ipc_path(self.data_endpoint)) is not None:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()


# How each reply status is recorded.
RECORD_STATUS = {p.OK: b"ok", p.FUNCTION_ERROR: b"error", p.INIT_ERROR: b"error",
                 p.TIMEOUT: b"timeout", p.RUNTIME_EXITED: b"crashed"}
ERROR_TYPES = {p.TIMEOUT: "Sora.Timeout"}   # others: the errorType of the answer's body


def checked_url_result(result: bytes) -> tuple[bytes, bytes]:
    """(status, body) of a function URL call that answered `result` with a `statusCode`: a
    response object the gateway cannot send is the caller's 502 `Sora.InvalidResponse`, so it
    is the record's error too. Only results holding `"statusCode"` are parsed (as the gateway
    does; for others this costs the byte search, ~0.1 us). Measured (timeit, a response object
    with two headers, on the shared development machine at load 4): 7-9 us, of which orjson's
    parse is ~1 us, next to the worker's ~80-90 us of CPU per request. The alternative, the
    gateway correcting the record afterwards, would need a second record from another
    process, merged in whichever order the two arrive."""
    try:
        map_result(result)
    except BadFunctionResponse as exc:
        return p.FUNCTION_ERROR, p.error_body("Sora.InvalidResponse", str(exc))
    return p.OK, result


class BootError(Exception):
    def __init__(self, body: bytes):
        super().__init__(body.decode(errors="replace"))
        self.body = body


def parser() -> argparse.ArgumentParser:
    """The worker's command line (the arbiter's worker_launch writes it)."""
    parser = argparse.ArgumentParser(prog="python -m sora.worker")
    parser.add_argument("--name", required=True, help="the function's name, or NAME:N for "
                        "its published version N")
    parser.add_argument("--functions", required=True,
                        help="the supervisor's snapshot of the functions' configs (read before "
                             "setup; the function folder's sora.yaml is never read again)")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--control", help="the control plane's endpoint (default: the state "
                                          "dir's control.sock)")
    # The host config's caps on what the function's output may take on disk (defaults: theirs).
    parser.add_argument("--log-file-max-mb", type=int, default=LogsConfig.maxFileMB)
    parser.add_argument("--log-files-kept", type=int, default=LogsConfig.keepFiles)
    parser.add_argument("--log-bytes-per-invocation", type=int,
                        default=RecordsConfig.maxLogBytesPerInvocation)
    parser.add_argument("--min-free-disk-mb", type=int, default=0)
    # A host in a cluster (host-config.yaml cluster:).
    parser.add_argument("--advertise", help="serve on tcp at this address (CURVE), for other "
                                            "hosts' clients (cluster.advertise)")
    parser.add_argument("--keys", help="this host's CURVE keys folder (cluster.keys)")
    parser.add_argument("--max-body-bytes", type=int, default=6 << 20,
                        help="server.maxBodyBytes: bounds a message to the tcp endpoint")
    parser.add_argument("--records-endpoint", help="send records to this tcp recorder (the "
                                                   "main host's, CURVE)")
    parser.add_argument("--records-server-key", help="the z85 public key of that recorder's "
                                                     "host")
    parser.add_argument("--docker-socket", default=engine.DEFAULT_SOCKET,
                        help="the Docker engine's socket (server.docker.socket), for a "
                             "function with isolation: container")
    parser.add_argument("--prestarted-runtimes", type=int, default=0,
                        help="isolation: container: containers kept started ahead of need "
                             "(server.prestartedRuntimes)")
    parser.add_argument("--warm-up", action="store_true",
                        help="start one instance (at least), let it load the module and answer "
                             "one warm-up call before READY: a reload's new generation (a load "
                             "error, a warm-up timeout or exit is a boot error)")
    return parser


def check_engine(fn, socket: str) -> dict:
    """A containerized function's engine and image, checked at its worker's start (the image's
    Config returned): a boot error with the reason when no engine answers or the image is not
    in it (the function is then reported broken, and the others serve)."""
    try:
        return engine.check(socket, fn.image)
    except engine.ImageMissing as exc:
        raise ConfigError(fn.source, [f"image: {exc}"]) from None
    except engine.EngineUnavailable as exc:
        raise ConfigError(fn.source, [f"isolation: container: {exc}"]) from None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s [worker %(process)d] %(levelname)s %(message)s")
    try:
        functions, _ = config_snapshot.read(args.functions)
        name, version = split_key(args.name)
        if version == LATEST:
            fn = next((f for f in functions if f.name == name), None)
        else:   # a published version: its config from this host's copy (sora.versions.store:
            # the arbiter made the copy current from the store before starting this worker)
            fn = VersionStore(args.state_dir).local_config(name, version)
        if fn is None:
            raise ConfigError(args.functions, [f"expected the config of function "
                                               f"{args.name!r}, got none"])
        image = None
        if fn.containerized:   # first: without its engine and image nothing else can start
            image = check_engine(fn, args.docker_socket)
        runtime = runtime_for(fn.language)
        runtime.prepare(fn)
        secrets = Secrets(fn, read_secrets(fn), args.state_dir)
        if fn.sandboxed and (reason := sandbox.unavailable_reason()) is not None:
            raise ConfigError(fn.source, [f"isolation: {reason}"])
        if fn.sandboxed and (reason := sandbox.interpreter_problem(runtime.argv(fn),
                                                                 fn.directory)):
            raise ConfigError(fn.source, [f"runtime: {reason}"])
        if (reason := sandbox.grant_folder(fn)) is not None:
            raise ConfigError(fn.source, [f"writableFolder: {reason}"])
        if (reason := watched.problem(fn) or watched.grant(fn, sandbox.confined)) is not None:
            raise ConfigError(fn.source, [reason])
        keys = None
        if args.keys:
            try:
                keys = load_keys(args.keys)
            except KeysError as exc:
                raise ConfigError(args.keys, [f"cluster.keys: {exc}"]) from None
    except ConfigError as exc:
        path = p.boot_error_path(args.state_dir, args.name)
        log.error("%s", exc)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(p.error_body("Sora.ConfigError", str(exc)))
        return p.EXIT_BOOT_ERROR
    log_limits = {"logs": LogsConfig(args.log_file_max_mb, args.log_files_kept),
                  "stored_per_invocation": args.log_bytes_per_invocation,
                  "min_free_mb": args.min_free_disk_mb}
    worker = Worker(fn, runtime, os.path.abspath(args.state_dir),
                    args.control or p.control_endpoint(os.path.abspath(args.state_dir)), secrets,
                    log_limits, setup_withheld=declared_env_names(functions), keys=keys,
                    advertise=args.advertise, records_endpoint=args.records_endpoint,
                    records_server_key=args.records_server_key.encode()
                    if args.records_server_key else None, max_body_bytes=args.max_body_bytes,
                    warm_up=args.warm_up, docker_socket=args.docker_socket,
                    prestarted=args.prestarted_runtimes, image_config=image)
    return worker.run()
