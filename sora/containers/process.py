"""`ContainerProcess`: one container instance's runtime, seen by the worker like a Popen.

The worker reads and writes the channel's FIFOs (sora.containers.channel) as a local
process's pipes: `stdin` (requests), `stdout`, `stderr`, `control_fd`. The container itself is
made by the worker's container thread (sora.containers.spares), which `attach`es what it
learnt (the container's id, its init's host pid, a pidfd of it, its memory cgroup); until
then `pid` is -1 and a `kill` is remembered and done by the thread once the container exists.

Killing is SIGKILL to the container's init through its pidfd (no engine call, no pid reuse:
the pidfd names that process), the engine's forced removal (off the worker's loop) being the
fallback for a container that was never started. The exit status of a runtime that ended by
itself (a crash) is the engine's (`wait`, then `State.OOMKilled`): the only engine calls the
worker's loop makes, on the crash path only.
"""
from __future__ import annotations

import os
import select
import signal
import threading

from ..isolation.cgroups import read_oom_kills
from .channel import Channel

CGROUP_ROOT = "/sys/fs/cgroup"


def cgroup_dir(pid: int) -> str | None:
    """The memory cgroup folder of a process (the container's, made by the engine)."""
    try:
        with open(f"/proc/{pid}/cgroup") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return os.path.join(CGROUP_ROOT, "memory", path.lstrip("/"))
    for line in lines:
        if line.startswith("0::"):
            return os.path.join(CGROUP_ROOT, line[3:].lstrip("/"))
    return None


class ContainerProcess:
    def __init__(self, channel: Channel, name: str, status_client=None):
        self.channel = channel
        self.name = name   # the container's name (known before it exists)
        self._status_client = status_client   # () -> docker APIClient, for exit statuses
        self.stdin = open(channel.fds["requests"], "wb", buffering=0)
        self.stdout = open(channel.fds["stdout"], "rb", buffering=0)
        self.stderr = open(channel.fds["stderr"], "rb", buffering=0)
        self.control_fd = channel.fds["control"]
        self.id: str | None = None
        self.pid = -1   # the container's init (the runtime) as the host sees it
        self.pidfd = -1
        self.cgroup: str | None = None
        self.returncode: int | None = None
        self.oom_killed = False
        self.error: str | None = None   # why no container could be made
        self.killed = False
        self.spare = False   # taken started (a pre-started container), for the scale-out log
        self.taken = False   # handed to an instance, which closes the FIFO ends
        self.attached = threading.Event()   # the thread made it (or failed to)
        self._lock = threading.Lock()

    # --- the container thread's side ----------------------------------------------------------
    def attach(self, container_id: str, pid: int) -> bool:
        """The container runs with its init at host pid `pid`. Returns False if the worker
        killed the instance meanwhile (the thread then removes the container)."""
        pidfd = -1
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pass   # it has exited already: its status comes from the engine
        group = cgroup_dir(pid) if pidfd >= 0 else None
        with self._lock:
            self.id, self.pid, self.pidfd, self.cgroup = container_id, pid, pidfd, group
            killed = self.killed
        if killed and pidfd >= 0:
            self._signal()
        self.attached.set()
        return not killed

    def created(self, container_id: str) -> None:
        with self._lock:
            self.id = container_id

    def failed(self, error_line: bytes, reason: str) -> None:
        """No container: the worker reads `INIT <error>` and the end of the control FIFO."""
        self.error = reason
        if self.returncode is None:
            self.returncode = 1
        self.attached.set()
        self.channel.fail(error_line)

    # --- the worker's side --------------------------------------------------------------------
    def _signal(self) -> None:
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except OSError:
            pass   # already exited

    def kill(self) -> None:
        """SIGKILL to the container's init (now, or by the thread once it exists)."""
        with self._lock:
            self.killed = True
            pidfd = self.pidfd
        if pidfd >= 0:
            self._signal()
        if self.returncode is None:
            self.returncode = -signal.SIGKILL

    def exited(self, timeout: float = 0.0) -> bool:
        """Whether its init has exited (waiting up to `timeout` seconds)."""
        if self.pidfd < 0:
            return self.attached.is_set()
        readable, _, _ = select.select([self.pidfd], [], [], timeout)
        return bool(readable)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for its exit (up to `timeout`) and return the status (Docker's: 128 + n for a
        death by signal n), asking the engine for it once it has exited by itself."""
        if self.returncode is not None:
            return self.returncode
        if not self.exited(timeout or 0.0) or self.id is None:
            return None
        try:
            api = self._status_client()
            self.returncode = api.wait(self.id, timeout=5)["StatusCode"]
            self.oom_killed = bool(api.inspect_container(self.id)["State"].get("OOMKilled"))
        except Exception:   # the engine did not say: an unknown status rather than a hang
            self.returncode = 255
        return self.returncode

    def poll(self) -> int | None:
        return self.wait(0.0)

    def close(self) -> None:
        """The pidfd, and the FIFO ends of a container no instance took (a spare at the
        worker's stop, one whose making failed): a taken one's are its instance's."""
        with self._lock:
            pidfd, self.pidfd = self.pidfd, -1
        if pidfd >= 0:
            os.close(pidfd)
        if not self.taken:
            for f in (self.stdin, self.stdout, self.stderr):
                f.close()
            if self.control_fd >= 0:
                os.close(self.control_fd)
                self.control_fd = -1


class ContainerGroup:
    """The container's own memory cgroup (the engine's): Max Memory Used and the OOM-kill
    counter, read like an instance's own group (sora.isolation.cgroups.InstanceGroup)."""

    def __init__(self, proc: ContainerProcess):
        self.proc = proc
        self.v2 = os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers"))

    def _dir(self) -> str | None:
        # READY can come before the thread has attached: it does within milliseconds.
        self.proc.attached.wait(5)
        return self.proc.cgroup

    def peak_memory_file(self) -> str | None:
        folder = self._dir()
        if folder is None:
            return None
        return os.path.join(folder, "memory.peak" if self.v2 else "memory.max_usage_in_bytes")

    def oom_kills(self) -> int:
        folder = self._dir()
        kills = read_oom_kills(folder, self.v2) if folder is not None else None
        # None: the engine removed the group already; its own OOM state says
        return kills if kills is not None else int(self.proc.oom_killed)

    def remove(self) -> None:
        """The engine removes it with the container."""
