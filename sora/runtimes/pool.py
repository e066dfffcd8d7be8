"""Pre-started runtimes: interpreter processes started ahead of need, ready to load any function.

Most of a cold start is the interpreter starting (a bare `node -e ''` takes tens of
milliseconds); loading a small handler takes one or two. So the supervisor keeps
`prestartedRuntimes` processes of each kind already started, running the runtime's bootstrap
in standby: it waits on stdin for one line naming the function to load (folder, environment),
then becomes an ordinary instance. A worker that needs an instance takes one over a Unix socket
(`run/runtimes.sock`) and receives the process's pipes (stdin, stdout, stderr, control) and a
pidfd by SCM_RIGHTS; from then on it owns the process as if it had started it, and the pool
starts a replacement (when, and how many it keeps: below).

A kind is the exact command line (interpreter and flags such as the heap limit that must be
set at start), so a taken process is the one the worker would have started itself.

How many of a kind are kept follows demand (`Kind`): the configured number at rest; after a
scale-out took more than that within DEMAND_WINDOW, as many as it took (at most MOST_STANDBYS
of a kind, and MOST_EXTRA_STANDBYS past the configured numbers of all kinds together), until
STANDBY_KEEP seconds pass with no scale-out asking for more than the configured number. A
function that bursts to 16 instances then finds 15 runtimes already started the next time and
has them ready in milliseconds, instead of ~35 ms of CPU each (a sandboxed Node start), which
on a small host is most of a burst's delay; a host that never bursts keeps what it kept
before. A kept standby costs memory only (~7 MB private to it for a sandboxed Node, the rest
shared), no CPU.

Refilling waits until takes have paused for REFILL_QUIET (at most REFILL_MAX_DEFER), and for
GROWN_REFILL_QUIET for the standbys past the configured number: during a scale-out the takes
are answered at once instead of each waiting for a replacement's spawn, and the replacements'
starts do not compete for the CPU with the scale-out's own instances. It starts one process per
loop turn, answering takes in between.

Each is started into a cgroup of its own (where cgroups are in force), which the worker that
takes it renames to its instance's group and limits (sora.isolation.cgroups): no process has to
move between groups on a cold start's path.

The processes stay the supervisor's children, so the pool reaps them: a worker asks
`status <pid>` for the exit status of one it owned. If a worker's connection closes (the worker
died), the pool kills every process it had handed to it: nothing outlives its function. The
pool runs on its own thread in the supervisor process, whose lifetime the processes share
(PR_SET_PDEATHSIG).

Messages (SOCK_SEQPACKET, one per packet):
    worker -> pool   b"take " + JSON argv        pool -> worker  b"pid <pid> [<cgroup>]" + 5 fds,
                                                                 or b"none"
    worker -> pool   b"status <pid>"             pool -> worker  b"running" | b"exit <code>" |
                                                                 b"signal <n>" | b"unknown"
"""
from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .. import protocol as p
from ..isolation import cgroups, sandbox
from ..isolation.cgroups import InstanceGroup
from ..parent_death import die_with_parent

log = logging.getLogger("sora.runtime-pool")

# A kind whose standby processes keep dying young is not refilled for a while.
QUICK_DEATH = 2.0
REFILL_PAUSE = 30.0
# Demand: takes (answered or not) within DEMAND_WINDOW seconds count as one scale-out; a kind
# keeps as many standbys as the largest recent one asked for, at most MOST_STANDBYS, until
# STANDBY_KEEP seconds have passed without one asking for more than its configured number.
# Past their configured numbers, all kinds together keep at most MOST_EXTRA_STANDBYS (~7 MB
# each for a sandboxed Node).
DEMAND_WINDOW = 1.0
MOST_STANDBYS = 32
MOST_EXTRA_STANDBYS = 64
STANDBY_KEEP = 600.0
# Refilling waits for takes to pause this long, but no longer than REFILL_MAX_DEFER after the
# first take it has not refilled (a steady stream of takes, as `coldStart: always` makes).
# Past a kind's configured number it waits longer: the scale-out that took them has its
# instances (warm until their idleTimeout), and their starts are then over.
REFILL_QUIET, REFILL_MAX_DEFER = 0.25, 1.0
GROWN_REFILL_QUIET, GROWN_REFILL_MAX_DEFER = 2.0, 10.0
# Exit statuses kept for `status` questions, the oldest dropped first.
KEEP_STATUSES = 1024


def pool_socket(state_dir: str) -> str:
    return os.path.join(p.run_dir(state_dir), "runtimes.sock")


def standby_environment(control_fd: int) -> dict[str, str]:
    """What a standby process starts with; the function's own environment replaces it when
    the process loads the function."""
    env = {key: os.environ[key] for key in ("PATH", "HOME") if key in os.environ}
    env.update(LANG="C.UTF-8", TZ=":UTC", SORA_CONTROL_FD=str(control_fd), SORA_STANDBY="1")
    return env


@dataclass
class Standby:
    proc: subprocess.Popen
    control_fd: int
    pidfd: int
    started: float
    group: InstanceGroup | None = None   # its cgroup, until a worker takes it over

    def fds(self) -> list[int]:
        return [self.proc.stdin.fileno(), self.proc.stdout.fileno(), self.proc.stderr.fileno(),
                self.control_fd, self.pidfd]

    def close_pipes(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()
        os.close(self.control_fd)


@dataclass
class Kind:
    argv: list[str]
    size: int                # kept at rest (the configuration's number)
    ready: list[Standby] = field(default_factory=list)
    quick_deaths: int = 0
    paused_until: float = 0.0
    target: int = 0          # kept now: `size`, or more after a scale-out asked for more
    wanted_at: float = 0.0   # when a scale-out last asked for more than `size`
    requests: deque = field(default_factory=deque)   # times of the takes in DEMAND_WINDOW
    unrefilled_since: float | None = None   # the first take not refilled yet

    def __post_init__(self) -> None:
        self.target = self.size

    def asked(self, now: float) -> None:
        """A take (answered or not): follow demand, defer refilling."""
        self.requests.append(now)
        while self.requests[0] < now - DEMAND_WINDOW:
            self.requests.popleft()
        demand = min(len(self.requests), MOST_STANDBYS)
        if demand > self.size:
            self.wanted_at = now
            self.target = max(self.target, demand)
        if self.unrefilled_since is None:
            self.unrefilled_since = now

    def refill_due(self, now: float) -> float | None:
        """Seconds until this kind may start another standby (0: now), or None if it has
        all it should keep."""
        if now - self.wanted_at >= STANDBY_KEEP:
            self.target = self.size
        if len(self.ready) >= self.target:
            self.unrefilled_since = None
            return None
        if now < self.paused_until:
            return self.paused_until - now
        if self.unrefilled_since is None:   # at start, or after a standby died
            return 0.0
        quiet, most = (REFILL_QUIET, REFILL_MAX_DEFER) if len(self.ready) < self.size else \
            (GROWN_REFILL_QUIET, GROWN_REFILL_MAX_DEFER)
        return max(0.0, min(self.requests[-1] + quiet, self.unrefilled_since + most) - now)


class RuntimePool(threading.Thread):
    def __init__(self, state_dir: str, kinds: list[tuple[list[str], int]]):
        """`kinds`: each command line to keep ready, and how many of it."""
        super().__init__(name="sora-runtime-pool", daemon=True)
        self.kinds = {json.dumps(argv): Kind(argv, size) for argv, size in kinds}
        self.path = pool_socket(state_dir)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(self.path)
        self.listener.listen(64)
        self.conns: dict[int, socket.socket] = {}
        # pidfd -> (pid, the connection it was handed to, or None for a standby)
        self.watched: dict[int, tuple[int, int | None]] = {}
        self.handed: dict[int, int] = {}    # pid -> pidfd, of processes owned by a worker
        self.statuses: dict[int, int] = {}  # pid -> wait status, once reaped
        self.standby_of: dict[int, tuple[str, Standby]] = {}  # pidfd -> its kind and itself
        self._lock = threading.Lock()       # guards the pid sets the arbiter reads
        self._pids: set[int] = set()
        # Each standby in a group of its own, where cgroups are in force.
        self.cgroups = cgroups.GroupMaker(f"{cgroups.STANDBY_PREFIX}{os.getpid()}-",
                                          "pre-started runtimes")
        self.groups: dict[int, InstanceGroup] = {}   # pid -> its group, removed when reaped
        self._wake_r, self._wake_w = os.pipe()
        self.running = True

    # --- for the arbiter (another thread) -------------------------------------------------------
    def pids(self) -> set[int]:
        """Every process of the pool's that is not reaped yet."""
        with self._lock:
            return set(self._pids)

    def stop(self) -> None:
        self.running = False
        os.write(self._wake_w, b"x")
        self.join(timeout=10)

    # --- standby processes ----------------------------------------------------------------------
    def refill(self, now: float) -> float | None:
        """Start one standby of a kind that is due, trim kinds past their target; return the
        seconds until the next refill is due (0: at once, after answering what waits), or
        None if every kind is full."""
        nearest = None
        for key, kind in self.kinds.items():
            while len(kind.ready) > kind.target:
                self.retire(kind.ready.pop())   # the newest: it cost the least to start
            due = kind.refill_due(now)
            if due == 0.0 and nearest != 0.0:
                standby = self.spawn(kind.argv)
                if standby is None:
                    kind.paused_until = now + REFILL_PAUSE
                    continue
                kind.ready.append(standby)
                self.standby_of[standby.pidfd] = (key, standby)
                self.watched[standby.pidfd] = (standby.proc.pid, None)
                due = kind.refill_due(now)
            if due is not None and (nearest is None or due < nearest):
                nearest = due
        return nearest

    def retire(self, standby: Standby) -> None:
        """Stop a standby that is no longer wanted (reaped like any other process)."""
        del self.standby_of[standby.pidfd]
        standby.close_pipes()
        try:
            os.killpg(standby.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def spawn(self, argv: list[str]) -> Standby | None:
        group = self.cgroups.new(None)
        procs = group.procs_files() if group else []

        def in_child() -> None:
            die_with_parent()
            cgroups.join_in_child(procs)

        read_fd, write_fd = os.pipe()
        try:
            # Under the lock until its pid is listed, so the arbiter's orphan sweep never
            # mistakes it for an orphan.
            with self._lock, sandbox.passed_to(argv) as (command, filter_fds):
                proc = subprocess.Popen(
                    command, cwd="/", env=standby_environment(write_fd), stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    pass_fds=(write_fd, *filter_fds), start_new_session=True,
                    preexec_fn=in_child)
                self._pids.add(proc.pid)
        except (OSError, subprocess.SubprocessError) as exc:
            os.close(read_fd)
            if group:
                group.remove()
            log.error("cannot pre-start %s: %s", argv[0], exc)
            return None
        finally:
            os.close(write_fd)
        if group:
            self.groups[proc.pid] = group
        return Standby(proc, read_fd, os.pidfd_open(proc.pid), time.monotonic(), group)

    def take(self, key: str) -> Standby | None:
        kind = self.kinds.get(key)
        if kind is None:
            return None
        kind.asked(time.monotonic())
        others = sum(k.target - k.size for k in self.kinds.values() if k is not kind)
        kind.target = min(kind.target, kind.size + max(0, MOST_EXTRA_STANDBYS - others))
        if not kind.ready:
            return None
        standby = kind.ready.pop(0)   # the oldest: the most likely to have finished booting
        del self.standby_of[standby.pidfd]
        return standby

    # --- reaping --------------------------------------------------------------------------------
    def reap(self, pidfd: int) -> None:
        pid, _ = self.watched.pop(pidfd)
        self.handed.pop(pid, None)
        try:
            _, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            status = None
        os.close(pidfd)
        if (group := self.groups.pop(pid, None)) is not None:
            group.remove()   # unless a worker took it over (renamed): then it is the worker's
        if status is not None:
            self.remember(pid, status)
        with self._lock:
            self._pids.discard(pid)
        entry = self.standby_of.pop(pidfd, None)
        if entry is not None:  # a standby died before anyone took it
            key, standby = entry
            kind = self.kinds[key]
            kind.ready.remove(standby)
            standby.close_pipes()
            if not self.running:
                return  # the pool is closing: it killed them
            young = time.monotonic() - standby.started < QUICK_DEATH
            kind.quick_deaths = kind.quick_deaths + 1 if young else 0
            log.warning("pre-started %s (pid %d) exited with status %s", kind.argv[0], pid,
                        status)
            if kind.quick_deaths >= 3:
                kind.paused_until = time.monotonic() + REFILL_PAUSE
                log.error("pre-started %s keeps exiting at start; not refilling for %.0fs",
                          kind.argv[0], REFILL_PAUSE)

    def remember(self, pid: int, status: int) -> None:
        self.statuses[pid] = status
        while len(self.statuses) > KEEP_STATUSES:
            del self.statuses[next(iter(self.statuses))]

    def status_of(self, pid: int) -> bytes:
        pidfd = self.handed.get(pid)
        if pidfd is not None:
            if not select.select([pidfd], [], [], 0)[0]:
                return b"running"
            self.reap(pidfd)
        status = self.statuses.get(pid)
        if status is None:
            return b"unknown"
        if os.WIFSIGNALED(status):
            return b"signal %d" % os.WTERMSIG(status)
        return b"exit %d" % os.waitstatus_to_exitcode(status)

    # --- workers --------------------------------------------------------------------------------
    def serve(self, conn: socket.socket) -> None:
        try:
            msg = conn.recv(4096)
        except OSError:
            msg = b""
        if not msg:
            self.drop(conn)
            return
        if msg.startswith(b"take "):
            standby = self.take(msg[5:].decode())
            if standby is None:
                conn.send(b"none")
                return
            pid = standby.proc.pid
            reply = b"pid %d" % pid
            if standby.group is not None:
                reply += b" " + standby.group.name.encode()
            try:
                socket.send_fds(conn, [reply], standby.fds())
            except OSError:
                os.killpg(pid, signal.SIGKILL)
            # The worker holds the pipes now; the pool keeps only the pidfd, to reap.
            standby.close_pipes()
            self.watched[standby.pidfd] = (pid, conn.fileno())
            self.handed[pid] = standby.pidfd
        elif msg.startswith(b"status "):
            conn.send(self.status_of(int(msg[7:])))

    def drop(self, conn: socket.socket) -> None:
        """A worker went away: whatever it had taken goes with it."""
        fd = conn.fileno()
        for pidfd, (pid, owner) in list(self.watched.items()):
            if owner == fd:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                # Reaped when its pidfd turns readable; it no longer belongs to anyone.
                self.watched[pidfd] = (pid, None)
        del self.conns[fd]
        conn.close()

    def run(self) -> None:
        due = self.refill(time.monotonic())
        while self.running:
            fds = [self.listener.fileno(), self._wake_r, *self.conns, *self.watched]
            ready, _, _ = select.select(fds, [], [], 1.0 if due is None else min(due, 1.0))
            for fd in ready:
                if fd == self.listener.fileno():
                    conn, _ = self.listener.accept()
                    self.conns[conn.fileno()] = conn
                elif fd == self._wake_r:
                    os.read(self._wake_r, 64)
                elif fd in self.conns:
                    self.serve(self.conns[fd])
                elif fd in self.watched:
                    self.reap(fd)
            if self.running:
                due = self.refill(time.monotonic())
        self.close()

    def close(self) -> None:
        for pidfd, (pid, _) in list(self.watched.items()):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            select.select([pidfd], [], [], 5.0)
            self.reap(pidfd)
        if self.cgroups.serial:   # it made groups (even if it could not make them all)
            cgroups.remove_groups(self.cgroups.prefix, wait=2.0)
        for conn in list(self.conns.values()):
            conn.close()
        self.listener.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


# --- the worker's side ----------------------------------------------------------------------------

class PoolClient:
    """A worker's connection to the pool. Any trouble (no pool, a pool that went away) means
    no pre-started process: the worker starts its own, as it would without a pool."""

    TIMEOUT = 2.0

    def __init__(self, state_dir: str):
        self.path = pool_socket(state_dir)
        self.sock: socket.socket | None = None
        self.retry_at = 0.0

    def _conn(self) -> socket.socket | None:
        if self.sock is None and time.monotonic() >= self.retry_at:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sock.settimeout(self.TIMEOUT)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                self.retry_at = time.monotonic() + 5.0
                return None
            self.sock = sock
        return self.sock

    def _broken(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def take(self, argv: list[str]) -> "PooledProcess | None":
        sock = self._conn()
        if sock is None:
            return None
        try:
            sock.send(b"take " + json.dumps(argv).encode())
            msg, fds, _, _ = socket.recv_fds(sock, 64, 5)
        except OSError:
            self._broken()
            return None
        if not msg.startswith(b"pid ") or len(fds) != 5:
            for fd in fds:
                os.close(fd)
            return None
        _, pid, *group = msg.decode().split()
        return PooledProcess(int(pid), fds, self, group[0] if group else None)

    def status(self, pid: int) -> bytes:
        sock = self._conn()
        if sock is None:
            return b"unknown"
        try:
            sock.send(b"status %d" % pid)
            return sock.recv(64)
        except OSError:
            self._broken()
            return b"unknown"

    def close(self) -> None:
        self._broken()


class PooledProcess:
    """A taken process, with the parts of subprocess.Popen's interface an instance uses. Its
    exit status comes from the pool, which reaps it."""

    def __init__(self, pid: int, fds: list[int], pool: PoolClient, group: str | None = None):
        stdin, stdout, stderr, self.control_fd, self.pidfd = fds
        self.pid = pid
        self.group = group   # the cgroup it runs in (sora.isolation.cgroups), to take over
        self.stdin = os.fdopen(stdin, "wb", buffering=0)
        self.stdout = os.fdopen(stdout, "rb", buffering=0)
        self.stderr = os.fdopen(stderr, "rb", buffering=0)
        self.pool = pool
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and self.pidfd >= 0 and \
                select.select([self.pidfd], [], [], 0)[0]:
            answer = self.pool.status(self.pid)
            kind, _, number = answer.partition(b" ")
            if kind in (b"exit", b"signal"):
                self.returncode = int(number) if kind == b"exit" else -int(number)
            elif kind == b"unknown":
                self.returncode = -signal.SIGKILL  # the pool lost track: it ended all the same
            if self.returncode is not None:
                os.close(self.pidfd)
                self.pidfd = -1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and self.pidfd >= 0 and \
                not select.select([self.pidfd], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(str(self.pid), timeout)
        code = self.poll()
        return code if code is not None else -signal.SIGKILL
