"""The Docker engine the container tests run against (issue 20): the one at
/var/run/docker.sock when it answers, else a dockerd of the test session's own.

The session's own dockerd listens on a private socket (nobody else's engine is touched), makes
no network (`--bridge=none --iptables=false`: no bridge, no NAT rules, no private addresses
taken), keeps its images in a data root that outlives the session
(~/.cache/sora-tests/docker), so the test images are built once per machine, and is stopped at
the session's end with no process, mount or file descriptor left behind.

Nothing is skipped: where Debian's docker.io is not installed the fixture fails and says so
(`make test` installs it, see the Makefile's docker-deps).
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
import psutil

SYSTEM_SOCKET = "/var/run/docker.sock"
# SORA_TEST_DOCKER_SOCKET points the tests at another engine (one that answers there).
SOCKET_ENV = "SORA_TEST_DOCKER_SOCKET"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sora-tests"
START_TIMEOUT = 60.0   # a first start on an empty data root takes a few seconds
STOP_TIMEOUT = 30.0    # dockerd gives running containers --shutdown-timeout, then stops
SHUTDOWN_TIMEOUT = 5   # seconds dockerd waits for a container before killing it at its stop
# How many data roots may be in use at once (two test sessions at the same time, each with a
# dockerd of its own): one dockerd per data root (it locks it), so a second one takes the next.
DATA_ROOTS = 4
MNT_DETACH = 2


class EngineFailed(Exception):
    """No engine could be had: the message says why and what to do."""


@dataclass
class DockerEngine:
    """What the tests are given: the engine's socket (for Sora's `server.docker.socket`) and a
    client of it (the `docker` package) for the tests' own calls."""
    socket: str
    client: docker.DockerClient
    own: bool = False   # True when this session started the dockerd
    _daemon: "OwnDaemon | None" = field(default=None, repr=False)

    @property
    def api(self) -> docker.APIClient:
        return self.client.api


def answers(socket: str, timeout: float = 5.0) -> bool:
    """Whether an engine answers a ping on `socket` (a Unix socket path)."""
    if not os.path.exists(socket):
        return False
    client = docker.DockerClient(base_url=f"unix://{socket}", timeout=timeout)
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - refused, absent, not an engine: all mean "no"
        return False
    finally:
        client.close()


def connect(socket: str) -> docker.DockerClient:
    # Image builds and imports take minutes on this 2-core machine: a long read timeout.
    return docker.DockerClient(base_url=f"unix://{socket}", timeout=900)


def open_engine() -> DockerEngine:
    """The engine to test with: the one named by SORA_TEST_DOCKER_SOCKET or the system's when
    it answers, else a dockerd of our own (stop it with close_engine)."""
    wanted = os.environ.get(SOCKET_ENV)
    if wanted:
        if not answers(wanted):
            raise EngineFailed(f"{SOCKET_ENV}={wanted}: no Docker engine answers there")
        return DockerEngine(wanted, connect(wanted))
    if answers(SYSTEM_SOCKET):
        return DockerEngine(SYSTEM_SOCKET, connect(SYSTEM_SOCKET))
    daemon = OwnDaemon()
    daemon.start()
    return DockerEngine(daemon.socket, connect(daemon.socket), own=True, _daemon=daemon)


def close_engine(engine: DockerEngine) -> None:
    engine.client.close()
    if engine._daemon is not None:
        engine._daemon.stop()


class OwnDaemon:
    """A dockerd of this test session: private socket, exec root and pid file in a temporary
    folder, a data root kept between runs, no network of its own."""

    def __init__(self):
        self.dockerd = shutil.which("dockerd") or next(
            (p for p in ("/usr/sbin/dockerd", "/usr/bin/dockerd") if os.access(p, os.X_OK)), None)
        if self.dockerd is None:
            raise EngineFailed("no Docker engine answers at /var/run/docker.sock and dockerd is "
                               "not installed: run `make docker-deps` (installs Debian's docker.io)")
        if os.geteuid() != 0:
            raise EngineFailed("no Docker engine answers at /var/run/docker.sock and starting "
                               "one needs root")
        # Short path: the socket's path and containerd's (under the exec root) must fit a
        # sockaddr_un (108 bytes).
        self.run_dir = Path(tempfile.mkdtemp(prefix="sora-dockerd-", dir="/tmp"))
        self.socket = str(self.run_dir / "docker.sock")
        self.exec_root = self.run_dir / "exec"
        self.pidfile = self.run_dir / "docker.pid"
        self.log_path = self.run_dir / "dockerd.log"
        self.data_root, self._lock_fd = _take_data_root()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        _stop_orphans(self.data_root)
        with open(self.log_path, "wb") as log:   # the child keeps its own copy of the fd
            self.process = subprocess.Popen(
                [self.dockerd, "--bridge=none", "--iptables=false", "--ip-masq=false",
                 f"--host=unix://{self.socket}", f"--data-root={self.data_root}",
                 f"--exec-root={self.exec_root}", f"--pidfile={self.pidfile}",
                 f"--shutdown-timeout={SHUTDOWN_TIMEOUT}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # ^C in the terminal reaches pytest, not dockerd; if pytest dies (kill -9)
                # dockerd is sent SIGTERM and stops cleanly rather than living on.
                start_new_session=True, preexec_fn=_term_with_parent)
        deadline = time.monotonic() + START_TIMEOUT
        while not answers(self.socket, timeout=2):
            if self.process.poll() is not None:
                self._cleanup()
                raise EngineFailed(f"dockerd exited ({self.process.returncode}) at its start:\n"
                                   f"{self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise EngineFailed(f"dockerd did not answer within {START_TIMEOUT:.0f}s:\n"
                                   f"{self._log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM (dockerd stops its containers and its containerd), then, past the deadline,
        SIGKILL to it and every process it started; then what it left mounted is detached."""
        if self.process is None:
            self._cleanup()
            return
        try:
            family = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # containerd and its shims die with dockerd's clean stop; after a SIGKILL they may not.
        for child in family:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(family, timeout=10)
        self._cleanup()

    def _cleanup(self) -> None:
        for mount in reversed(_mounts_under((str(self.run_dir), str(self.data_root)))):
            _detach(mount)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)   # releases the data root's lock
            self._lock_fd = None

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _term_with_parent() -> None:
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop_orphans(data_root: Path) -> None:
    """A dockerd an earlier test session started on this data root and did not stop (that
    session was killed before PR_SET_PDEATHSIG could act, or dockerd ignored it): stopped, so
    two daemons never share a data root. Found by its exact --data-root argument only."""
    flag = f"--data-root={data_root}"
    orphans = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if proc.info["name"] == "dockerd" and flag in (proc.info["cmdline"] or []):
                proc.terminate()
                orphans.append(proc)
        except psutil.Error:
            continue
    _gone, alive = psutil.wait_procs(orphans, timeout=STOP_TIMEOUT)
    for proc in alive:
        proc.kill()
    psutil.wait_procs(alive, timeout=10)


def _take_data_root() -> tuple[Path, int]:
    """The first data root no other test session's dockerd holds (flock on a file beside it),
    and the lock's fd (held until the daemon stops)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    for n in range(DATA_ROOTS):
        root = CACHE / ("docker" if n == 0 else f"docker-{n + 1}")
        fd = os.open(f"{root}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        root.mkdir(mode=0o710, exist_ok=True)
        return root, fd
    raise EngineFailed(f"{DATA_ROOTS} test dockerds already run on this machine "
                       f"({CACHE}/docker*.lock are all held)")


def _mounts_under(prefixes: tuple[str, ...]) -> list[str]:
    """Mount points below any of `prefixes`, in mount order (mountinfo's field 5, with the
    kernel's octal escapes for spaces and the like undone)."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if any(point == p or point.startswith(p.rstrip("/") + "/") for p in prefixes):
                found.append(point)
    return found


def _detach(point: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.umount2(point.encode(), MNT_DETACH)   # best effort: gone already is fine
