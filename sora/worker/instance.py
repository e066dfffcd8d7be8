"""One runtime instance: a long-lived child process that runs one invocation at a time.

The protocol is the same for every runtime (OpenWhisk ActionLoop style):
- the worker writes one request per line on the child's stdin:
  `{"id": "<request id>", "timeoutMs": <ms>, "event": <event JSON>}`; the child runs them one
  at a time, in order (the worker may write the next line while one runs: that saves a round
  trip between invocations, and a line not yet started is handed to another instance if this
  one dies)
- the child answers on a dedicated pipe whose fd number it finds in SORA_CONTROL_FD:
  `READY`, `INIT <error JSON>`, `R <request id> <result JSON>`, `E <request id> <error JSON>`,
  one per line, or `X <request id> <error JSON>`: an uncaught error ended the invocation and
  the child is exiting (`X - <error JSON>` if none was running);
- stdout and stderr are only logs; a line `\\0SORA-END <request id>` closes the lines an
  invocation printed on that stream.

The function's code runs in the child and can write to the control pipe and print markers
itself, so neither is taken on trust: an answer counts only for the invocation the instance is
running (the worker replaces an instance that answers for any other, see
`sora.worker.main.Worker.reject_instance`), and a marker closes lines only for an invocation this
instance was handed: running, queued or just run (`ran_here`); any other is an ordinary line of
output.
"""
from __future__ import annotations

import enum
import json
import os
import select
import signal
import subprocess
import time
import uuid
from collections import deque

import psutil

from .. import protocol as p
from ..config import FunctionConfig
from ..parent_death import die_with_parent
from ..isolation import sandbox
from ..isolation.cgroups import InstanceGroup, join_in_child
from ..isolation.secrets import SECRETS_DIR_ENV
from ..runtimes.pool import PoolClient
from .logs import FunctionLog
from .memory_peak import PeakMemory
from ..runtimes import Runtime

MARKER = b"\x00SORA-END "
# Ids of the invocations an instance has finished that its end markers may still name: a
# marker is written before the answer, but the worker may read the answer first and several
# more before it drains the log pipes (at most the 8 an instance holds on the fast path, per
# loop turn). Older ones fall out; a marker naming one is then ordinary output.
RAN_KEPT = 32
# An answer line's head: the kind ("R "), the request id (36 characters) and a space, with room.
ANSWER_HEAD = 64


def describe_exit(code: int | None, wrapped: bool) -> str:
    """An instance's exit status in words. `wrapped`: its process is bubblewrap, which exits
    128 + n when its child dies of signal n, or a container, of which the engine says so when
    its init died of it."""
    if code is None:
        return "still running"
    if wrapped and code > 128:
        code = 128 - code
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class State(enum.Enum):
    BOOTING = "booting"
    IDLE = "idle"
    BUSY = "busy"
    EXITING = "exiting"   # said it is ending (uncaught error) or refused input: takes no work
    DEAD = "dead"


class Instance:
    def __init__(self, runtime: Runtime, fn: FunctionConfig, index: int, log: FunctionLog,
                 pool: PoolClient | None = None, extra_env: dict[str, str] | None = None,
                 cgroup: InstanceGroup | None = None):
        self.runtime = runtime
        self.cgroup = cgroup   # its memory and pids limits (sora.isolation.cgroups), if in force
        self.pool = pool
        self.extra_env = extra_env or {}   # the function's secrets (sora.isolation.secrets)
        self.fn = fn
        self.index = index
        # Lambda's log stream names one execution environment, so code that tells instances
        # apart by it works unchanged (its pid does not: each sandbox has its own pid space).
        self.log_stream = (time.strftime("%Y/%m/%d/", time.gmtime()) + f"[{fn.version}]" +
                           uuid.uuid4().hex)
        self.log = log
        self.state = State.BOOTING
        self.proc: subprocess.Popen | None = None
        self.control_fd = -1
        self.started = 0.0
        self.init_duration_ms = 0.0   # from start() to READY: a cold start's Init Duration
        self.memory: PeakMemory | None = None   # Max Memory Used, once started
        self.init_error: bytes | None = None
        # The invocation in progress: (client, request id, monotonic deadline, start).
        self.current: tuple[bytes, bytes, float, float] | None = None
        # Invocations written to the child that have not started yet: (client, id, payload).
        self.queued: deque[tuple[bytes, bytes, bytes]] = deque()
        # Ids of the invocations it has finished, newest last (RAN_KEPT of them).
        self.ran: deque[bytes] = deque(maxlen=RAN_KEPT)
        # Handed over but not yet written (flush_input): (client, id, payload).
        self._unsent: list[tuple[bytes, bytes, bytes]] = []
        self._control_buf = b""
        self._oversized = 0   # bytes of a result line past the limit, being skipped
        self._oversized_head = b""   # that line's start: it names the request it answers
        self._log_bufs: dict[int, bytes] = {}
        self._log_cut: set[int] = set()   # streams inside a line cut at MAX_LOG_LINE
        self._pending_lines: dict[int, list[bytes]] = {}
        self.invocations = 0
        self.completed = 0   # invocations finished: the first one of an instance is cold
        self.idle_since = 0.0  # monotonic time it last became idle (autoscaling stops it later)
        self._oom_killed = False  # its cgroup's OOM-kill count, read when it closed (> 0)

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the runtime (`launch`) and watch its pipes."""
        self.launch()
        self.stdin_fd = self.proc.stdin.fileno()
        os.set_blocking(self.control_fd, False)
        for stream in (self.proc.stdout, self.proc.stderr):
            os.set_blocking(stream.fileno(), False)
            self._log_bufs[stream.fileno()] = b""
            self._pending_lines[stream.fileno()] = []
        self.started = time.monotonic()
        self.state = State.BOOTING
        self.memory = PeakMemory(self.cgroup, self.proc.pid)

    def launch(self) -> None:
        """A pre-started runtime from the pool where the runtime can load a function into one
        (sora.supervisor.runtime_pool), else a process of its own."""
        if not self.adopt():
            read_fd, write_fd = os.pipe()
            try:
                env = self.environment()
                if self.fn.sandboxed:   # set inside the sandbox instead (sandbox.LOADER_ENV)
                    env = sandbox.without_loader_variables(env, self.fn)
                env["SORA_CONTROL_FD"] = str(write_fd)
                # Its own process group, killed as one; PDEATHSIG: if the worker dies, even by
                # SIGKILL, the kernel kills the instance: no orphaned runtimes. It joins its
                # cgroup before exec, so nothing it runs escapes the limits.
                procs = self.cgroup.procs_files() if self.cgroup else []

                def in_child() -> None:
                    die_with_parent()
                    join_in_child(procs)

                with sandbox.passed_to(self.argv()) as (argv, filter_fds):
                    self.proc = subprocess.Popen(
                        argv, cwd=self.fn.directory, env=env,
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        pass_fds=(write_fd, *filter_fds), start_new_session=True,
                        preexec_fn=in_child)
            except BaseException:   # not started (a watched folder refused: UnsafePath)
                os.close(read_fd)
                raise
            finally:
                os.close(write_fd)
            self.control_fd = read_fd

    def argv(self) -> list[str]:
        argv = self.runtime.argv(self.fn)
        if self.fn.sandboxed:
            argv = sandbox.wrap(argv, self.fn, self.extra_env.get(SECRETS_DIR_ENV))
        return argv

    def adopt(self) -> bool:
        """Take a pre-started runtime and tell it which function to load (its folder and
        environment: the first line on its stdin). A sandboxed function's pre-started runtime
        already runs in its sandbox (the pool keeps one per sandboxed function)."""
        if self.pool is None or not self.runtime.standby(self.fn):
            return False
        proc = self.pool.take(self.argv())
        if proc is None:
            return False
        if self.cgroup is not None:
            try:
                # Before it loads anything of the function. Its own group becomes the
                # instance's; else every process of it (a sandbox is bubblewrap, its init and
                # the runtime) moves into the instance's group.
                if proc.group is not None:
                    self.cgroup.take_over(proc.group)
                else:
                    for pid in [proc.pid, *(c.pid for c in
                                            psutil.Process(proc.pid).children(recursive=True))]:
                        self.cgroup.join(pid)
            except (OSError, psutil.Error):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
                return False
        line = json.dumps({"cwd": self.fn.directory,
                           "env": self.environment()}).encode() + b"\n"
        try:
            proc.stdin.write(line)
        except OSError:
            pass  # it died waiting: the control pipe closes and the worker replaces it
        self.proc, self.control_fd = proc, proc.control_fd
        return True

    def environment(self) -> dict[str, str]:
        env = self.runtime.environment(self.fn)
        env.update(self.extra_env)
        env["AWS_LAMBDA_LOG_STREAM_NAME"] = self.log_stream
        if self.fn.sandboxed:
            env["HOME"] = "/tmp"   # the host's home is not in the sandbox
        return env

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else -1

    @property
    def log_fds(self) -> tuple[int, int]:
        return self.proc.stdout.fileno(), self.proc.stderr.fileno()

    def kill(self) -> None:
        """Kill the instance and everything it started (its own process group), then reap."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a stuck kernel task
            pass
        self.close()

    def end(self, grace: float = 5.0) -> None:
        """The instance is ending by itself (its control pipe closed): let it exit, then kill
        whatever it left behind in its process group (a grandchild of a shell `bootstrap`,
        a child the function spawned) and reap it. The group is killed before the leader is
        reaped, so its id cannot have been reused yet."""
        try:
            exited = os.pidfd_open(self.proc.pid)  # readable once it exits; reaps nothing
        except ProcessLookupError:
            pass
        else:
            select.select([exited], [], [], grace)
            os.close(exited)
        self.kill()

    def close(self) -> None:
        """Release the pipes of an instance that has ended; keep its exit status."""
        self.drain_logs(final=True)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        if self.control_fd >= 0:
            os.close(self.control_fd)
            self.control_fd = -1
        if self.memory is not None:
            self.memory.read()   # before the group goes: the invocation it ran is reported
            self.memory.close()
        if self.cgroup is not None:
            self._oom_killed = self.cgroup.oom_kills() > 0   # read before the group goes
            self.cgroup.remove()
        self.state = State.DEAD

    def ready(self) -> None:
        """The runtime said READY: how long it took is the Init Duration of its first
        invocation."""
        self.state = State.IDLE
        self.idle_since = time.monotonic()
        self.init_duration_ms = (self.idle_since - self.started) * 1000

    def max_memory_used_mb(self) -> int:
        """Its peak memory so far (sora.worker.memory_peak); after it closed, the last
        figure read."""
        if self.memory is None:
            return 0
        if self.state is not State.DEAD:
            self.memory.read()
        return self.memory.peak_mb

    def oom_killed(self) -> bool:
        """Whether its memory limit killed a process of it (the cgroup's own counter)."""
        if self.state is State.DEAD or self.cgroup is None:
            return self._oom_killed
        return self.cgroup.oom_kills() > 0

    def exit_description(self) -> str:
        return describe_exit(self.proc.poll() if self.proc else None,
                             self.fn.isolation in ("sandbox", "container"))

    # --- invocations ----------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Invocations this instance holds: the one running and those queued behind it."""
        return (self.current is not None) + len(self.queued)

    def send(self, client: bytes, request_id: bytes, payload: bytes) -> None:
        """Hand one invocation to the instance; it starts when the one before it ends. It is
        written to the child by the next `flush_input()`."""
        if b"\n" in payload:
            # A raw newline in valid JSON can only be whitespace between tokens.
            payload = payload.replace(b"\r\n", b" ").replace(b"\n", b" ")
        self._unsent.append((client, request_id, payload))
        self.invocations += 1
        if self.current is None:
            now = time.monotonic()
            self.current = (client, request_id, now + self.fn.timeout, now)
            self.state = State.BUSY
        else:
            self.queued.append((client, request_id, payload))

    def flush_input(self) -> list[tuple[bytes, bytes, bytes]]:
        """Write the invocations handed over since the last flush, in one write (one system
        call, one wake-up of the child). If the child is gone, take them back and return them
        (client, request id, payload) for another instance; otherwise return []."""
        if not self._unsent:
            return []
        items, self._unsent = self._unsent, []
        timeout_ms = int(self.fn.timeout * 1000)
        data = b"".join(b'{"id":"%s","timeoutMs":%d,"event":%s}\n' % (
            request_id, timeout_ms, payload or b"null") for _, request_id, payload in items)
        try:
            written = os.write(self.stdin_fd, data)
            while written < len(data):  # a large event: the pipe takes it in pieces
                written += os.write(self.stdin_fd, data[written:])
        except OSError:
            taken = {request_id for _, request_id, _ in items}
            if self.current is not None and self.current[1] in taken:
                self.current = None
            self.queued = deque(q for q in self.queued if q[1] not in taken)
            self.invocations -= len(items)
            return items
        return []

    def advance(self) -> None:
        """The running invocation ended: the next queued one (if any) is now running."""
        self.release_current()
        if self.queued:
            client, request_id, _ = self.queued.popleft()
            now = time.monotonic()
            self.current = (client, request_id, now + self.fn.timeout, now)

    def release_current(self) -> tuple[bytes, bytes, float, float] | None:
        """End the running invocation (answered, timed out, or lost with the instance) and
        return it; nothing else starts. Its end markers may still be in the log pipes."""
        current, self.current = self.current, None
        if current is not None:
            self.ran.append(current[1])
        return current

    def ran_here(self, request_id: bytes) -> bool:
        """Whether that invocation is this instance's own — running, handed to it and queued,
        or just run: only then may a marker close lines for it (a marker naming any other is
        the function's own text). Queued ones count: on the fast path the runtime runs them
        back to back, and their markers can be read before the worker has read their answers
        (the lines of ~2 % of invocations under load were tied to the wrong one without)."""
        return (self.current is not None and request_id == self.current[1]) or \
            request_id in self.ran or any(q[1] == request_id for q in self.queued)

    def take_queued(self) -> list[tuple[bytes, bytes, bytes]]:
        """Invocations that never started, for another instance to run."""
        queued, self.queued = list(self.queued), deque()
        return queued

    def read_control(self) -> list[bytes] | None:
        """Complete control lines that have arrived; None once the child closed the pipe."""
        try:
            chunk = os.read(self.control_fd, 1 << 20)
        except BlockingIOError:
            return []
        if not chunk:
            return None
        data = self._control_buf + chunk
        *lines, rest = data.split(b"\n")
        if self._oversized:
            # The rest of a line too large to keep: count it, then answer for it.
            if not lines:
                self._oversized += len(rest)
                self._control_buf = b""
                return []
            lines[0] = self._too_large(self._oversized_head, self._oversized + len(lines[0]))
            self._oversized = 0
        lines = [line if len(line) <= p.MAX_RESULT_BYTES + 2 or self._json_size(line) <=
                 p.MAX_RESULT_BYTES else self._too_large(line[:ANSWER_HEAD], len(line))
                 for line in lines]
        if len(rest) > p.MAX_RESULT_BYTES + ANSWER_HEAD:   # "R <request id> " and the JSON
            self._oversized, self._oversized_head, rest = len(rest), rest[:ANSWER_HEAD], b""
        self._control_buf = rest
        return lines

    @staticmethod
    def _json_size(line: bytes) -> int:
        """The size of an answer's JSON: what follows `R <request id> `."""
        return len(line) - line.find(b" ", 2) - 1

    @staticmethod
    def _too_large(head: bytes, size: int) -> bytes:
        """What stands for an answer line past the limit: an error for the request it names
        (the worker checks that id like any other)."""
        request_id = head[2:].partition(b" ")[0]
        return b"E %s %s" % (request_id, p.error_body("Sora.ResponseTooLarge", (
            f"The function's response is {size - len(request_id) - 3} bytes; the limit is "
            f"{p.MAX_RESULT_BYTES} bytes")))

    def drain_logs(self, fd: int | None = None, final: bool = False) -> None:
        """Read what the child printed and write it to the function log, tied to invocations."""
        fds = [fd] if fd is not None else list(self._log_bufs)
        for f in fds:
            stream = "stdout" if self.proc and f == self.proc.stdout.fileno() else "stderr"
            while True:
                try:
                    chunk = os.read(f, 1 << 16)
                except (BlockingIOError, OSError):
                    break
                if not chunk:
                    break
                data = self._log_bufs[f] + chunk
                *lines, rest = data.split(b"\n")
                if f in self._log_cut:
                    # The rest of a cut line: dropped up to its end.
                    if not lines:
                        rest = b""
                    else:
                        lines.pop(0)
                        self._log_cut.discard(f)
                if len(rest) > p.MAX_LOG_LINE:
                    lines.append(rest)
                    rest = b""
                    self._log_cut.add(f)
                self._log_bufs[f] = rest
                for line in lines:
                    if len(line) > p.MAX_LOG_LINE:
                        line = line[:p.MAX_LOG_LINE] + b" [sora: line cut at %d bytes]" % \
                            p.MAX_LOG_LINE
                    if line.startswith(MARKER) and self.ran_here(line[len(MARKER):]):
                        self._flush_lines(f, stream, line[len(MARKER):])
                    else:
                        # A marker naming an invocation this instance did not run (another
                        # function's, say) is the function's own text, kept as printed.
                        self._pending_lines[f].append(line)
                if len(chunk) < 1 << 16:
                    break
            if self._pending_lines[f] and self.current is not None and not self.queued:
                # Stored now rather than at the end marker, so they can be followed while the
                # invocation runs. They are the running invocation's: the pipe is drained (so
                # an earlier invocation's marker, written before its result, has been read),
                # and no later invocation has been handed to the instance to print them.
                self._flush_lines(f, stream, self.current[1])
            if final or self.state in (State.IDLE, State.BOOTING):
                # Nothing will close these lines with a marker: tie them to what ran last.
                if final and self._log_bufs[f]:
                    self._pending_lines[f].append(self._log_bufs[f])
                    self._log_bufs[f] = b""
                if self._pending_lines[f] and (final or self.state == State.BOOTING):
                    self._flush_lines(f, stream, self.current[1] if self.current else b"-")

    def _flush_lines(self, fd: int, stream: str, request_id: bytes) -> None:
        lines = self._pending_lines[fd]
        if lines:
            self.log.write(request_id.decode("ascii", "replace"), stream, lines)
            self._pending_lines[fd] = []
