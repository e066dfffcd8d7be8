"""A supervised child process as an explicit state machine (after supervisord's process.py).

    SETUP -> STARTING -> RUNNING -> BACKOFF -> STARTING ...
                 \\-> BACKOFF (exited before it was ready)    BACKOFF -> FATAL (too many failures)
    any -> STOPPING -> STOPPED

Every transition is checked and recorded with its reason, so the health endpoint can say why a
function is where it is. A failure is an exit before the child became ready, or soon after; a
child that stayed up `STABLE_AFTER` seconds starts counting afresh. After `start_retries`
failures in a row the child goes FATAL instead of restarting forever.
"""
from __future__ import annotations

import enum
import logging
import os
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass

from ..parent_death import die_with_parent  # noqa: F401 - the workers' instances use it too

log = logging.getLogger("sora.supervisor")

BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 10.0


class State(str, enum.Enum):
    SETUP = "SETUP"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FATAL = "FATAL"


ALLOWED = {
    State.SETUP: {State.STARTING, State.FATAL, State.STOPPED},
    State.STARTING: {State.RUNNING, State.BACKOFF, State.FATAL, State.STOPPING},
    State.RUNNING: {State.BACKOFF, State.FATAL, State.STOPPING},
    State.BACKOFF: {State.STARTING, State.FATAL, State.STOPPED},
    State.STOPPING: {State.STOPPED},
    State.STOPPED: set(),
    State.FATAL: set(),
}


class IllegalTransition(RuntimeError):
    pass


@dataclass(frozen=True)
class Transition:
    at: float          # wall clock, for people reading the health endpoint
    source: State
    target: State
    reason: str


@dataclass
class Launch:
    """What to run: argv and environment, plus how long the child may take to become ready."""
    argv: list[str]
    env: dict[str, str]
    start_timeout: float
    start_retries: int
    ready_after: float | None = None   # None: ready when told (mark_ready); else seconds up
    pass_fds: tuple[int, ...] = ()     # inherited by the child (a gateway's listening socket)


class Supervised:
    def __init__(self, name: str, kind: str, launch: Launch, state: State = State.STARTING):
        self.name = name
        self.kind = kind
        self.launch = launch
        self.state = state
        self.reason = ""
        self.proc: subprocess.Popen | None = None
        self.failures = 0
        self.restarts = 0
        self.started_at = 0.0
        self.ready_at = 0.0
        self.backoff_until = 0.0
        self.stop_deadline = 0.0
        self.transitions: deque[Transition] = deque(maxlen=20)
        self.generation = 1   # a worker's: each reload's switch of its function adds one

    # --- state ----------------------------------------------------------------------------------
    def to(self, target: State, reason: str) -> None:
        if target not in ALLOWED[self.state]:
            raise IllegalTransition(f"{self.kind} {self.name}: {self.state.value} -> "
                                    f"{target.value} ({reason})")
        self.transitions.append(Transition(time.time(), self.state, target, reason))
        level = logging.ERROR if target is State.FATAL else logging.INFO
        log.log(level, "%s %s: %s -> %s%s", self.kind, self.name, self.state.value,
                target.value, f" ({reason})" if reason else "")
        self.state = target
        self.reason = reason

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    # --- process --------------------------------------------------------------------------------
    def spawn(self, now: float) -> None:
        self.proc = subprocess.Popen(self.launch.argv, env=self.launch.env,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     pass_fds=self.launch.pass_fds,
                                     preexec_fn=die_with_parent)
        self.started_at = now
        if self.state is not State.STARTING:
            self.to(State.STARTING, f"spawned pid {self.proc.pid}")
        else:
            log.info("%s %s: spawned pid %d", self.kind, self.name, self.proc.pid)

    def mark_ready(self, now: float) -> None:
        if self.state is State.STARTING:
            self.ready_at = now
            self.to(State.RUNNING, f"pid {self.proc.pid} ready after "
                                   f"{now - self.started_at:.2f}s")

    def signal(self, sig: int) -> None:
        """Signal the child's whole process group (it leads its own session)."""
        if self.pid is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def poll_exit(self) -> int | None:
        """The exit status if the child has just exited (reaped here), else None."""
        if self.proc is None or self.proc.returncode is not None:
            return None
        return self.proc.poll()

    def on_exit(self, code: int, now: float, why: str) -> None:
        """Decide what follows an exit: STOPPED, BACKOFF or FATAL."""
        # Whatever the child left in its group goes with it.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.state is State.STOPPING:
            self.to(State.STOPPED, why)
            return
        if self.state is State.RUNNING and now - self.ready_at >= STABLE_AFTER:
            self.failures = 1
        else:
            self.failures += 1
        if self.failures >= self.launch.start_retries:
            self.to(State.FATAL, f"{why}; gave up after {self.failures} failures in a row")
            return
        delay = min(BACKOFF_BASE * 2 ** (self.failures - 1), BACKOFF_MAX)
        self.backoff_until = now + delay
        self.restarts += 1
        self.to(State.BACKOFF, f"{why}; restarting in {delay:.1f}s")

    def due(self, now: float) -> bool:
        """Whether a BACKOFF child should be started again now."""
        return self.state is State.BACKOFF and now >= self.backoff_until

    def start_overdue(self, now: float) -> bool:
        return self.state is State.STARTING and self.pid is not None and \
            now - self.started_at > self.launch.start_timeout

    def ready_by_time(self, now: float) -> bool:
        return self.state is State.STARTING and self.launch.ready_after is not None and \
            self.pid is not None and now - self.started_at >= self.launch.ready_after

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "state": self.state.value,
            "reason": self.reason,
            "pid": self.pid,
            "restarts": self.restarts,
            "since": self.transitions[-1].at if self.transitions else None,
        }


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"
