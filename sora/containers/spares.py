"""The worker's container thread: it makes, starts and removes the containers of one
function's instances, and keeps `server.prestartedRuntimes` of them started in advance.

Engine calls take milliseconds to a second, so none runs on the worker's loop on the way to
an instance: `take()` (on the loop) hands over a spare that is already running — its runtime
(the Node.js or Python shim in standby mode, `SORA_STANDBY=1`) waits for the one line that
names its function's folder and environment — or, when none is left, a `ContainerProcess`
whose channel exists and whose container this thread is making; the instance is BOOTING
meanwhile, its assignment line already in the requests FIFO. Either way the thread then
makes a replacement spare. Jobs are one queue, instances' containers first, then spares,
then removals (`remove()`: a dead or killed instance's container, forced, and its channel
folder), so a cold instance never waits behind a spare.

A creation failure (no engine, no `/bin/sh` in the image, ...) is written to the instance's
control FIFO as `INIT <error JSON>`, read by the worker like a runtime's own load error.
`close()` (the worker's shutdown) kills the spares, removes every container it made and
ends the thread: none is left after the worker stops (and what a killed worker left, the
supervisor sweeps by its labels: sora.containers.engine).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections import deque

from .. import protocol as p
from ..config import FunctionConfig
from ..isolation.uids import sandbox_uid
from . import spec
from .channel import Channel
from .process import ContainerProcess

log = logging.getLogger("sora.containers")
DEFAULT_SOCKET = "/var/run/docker.sock"


def host_id(state_dir: str) -> str:
    try:
        from .engine import host_id as engine_host_id
    except ImportError:   # before the engine module: the same idea
        return hashlib.sha256(os.path.abspath(state_dir).encode()).hexdigest()[:12]
    return engine_host_id(state_dir)


def api_client(socket: str):
    """A low-level client of the engine (one per thread that calls it)."""
    import docker
    return docker.APIClient(base_url=f"unix://{socket}", timeout=60)


def image_config(socket: str, image: str) -> dict:
    """The image's own config (Env, Entrypoint, Cmd...), or an error saying what is wrong."""
    try:
        from .engine import check
    except ImportError:   # before the engine module: the same call
        api = api_client(socket)
        try:
            return api.inspect_image(image).get("Config") or {}
        finally:
            api.close()
    return check(socket, image)


class ContainerFactory:
    def __init__(self, fn: FunctionConfig, argv: list[str], create_env: dict[str, str],
                 state_dir: str, socket: str = DEFAULT_SOCKET, spares: int = 0,
                 secrets_dir: str | None = None):
        """`argv` is the runtime's command inside the container (in standby mode),
        `create_env` its environment at start (the function's own, no secret)."""
        self.fn, self.argv, self.create_env = fn, argv, create_env
        self.socket = socket
        self.secrets_dir = secrets_dir
        self.run_dir = p.run_dir(state_dir)
        self.host_id = host_id(state_dir)
        self.uid = sandbox_uid(fn) or 65534
        self.wanted = spares
        self.prefix = "sora-%s-%s-%d-" % (self.host_id, re.sub(r"[^a-zA-Z0-9_.-]", "_",
                                                               fn.name), os.getpid())
        self.count = 0
        self.spares: deque[ContainerProcess] = deque()   # running, waiting in standby
        self.making = 0   # spares asked of the thread, not yet running
        self.jobs: deque[tuple[str, ContainerProcess]] = deque()
        self.cond = threading.Condition()
        self.stopping = False
        self._status_api = None
        self.thread = threading.Thread(target=self._run, name=f"containers-{fn.name}",
                                       daemon=True)
        self.thread.start()

    # --- on the worker's loop -----------------------------------------------------------------
    def take(self) -> ContainerProcess:
        """A runtime for a new instance: a running spare, else one being made now."""
        with self.cond:
            proc = self.spares.popleft() if self.spares else None
            if proc is not None:
                proc.spare = True
            else:
                proc = self._new()
                self.jobs.appendleft(("instance", proc))
            self._refill()
            self.cond.notify()
        return proc

    def fill(self) -> None:
        """Start making the spares (at the worker's start)."""
        with self.cond:
            self._refill()
            self.cond.notify()

    def remove(self, proc: ContainerProcess) -> None:
        """The instance has ended (killed, or exited and its status read): remove its
        container and its channel folder, off the loop."""
        with self.cond:
            self.jobs.append(("remove", proc))
            self.cond.notify()

    def close(self, timeout: float = 30.0) -> None:
        """Kill the spares, remove every container made, end the thread."""
        with self.cond:
            self.stopping = True
            for proc in self.spares:
                proc.kill()
                self.jobs.append(("remove", proc))
            self.spares.clear()
            self.cond.notify()
        self.thread.join(timeout)

    def status_api(self):
        if self._status_api is None:
            self._status_api = api_client(self.socket)
        return self._status_api

    def _new(self) -> ContainerProcess:
        self.count += 1
        name = f"{self.prefix}{self.count}"
        # The channel is named by the worker's pid (channel.remove_leftovers finds a killed
        # worker's), the container by the host's id too (two hosts may share one engine).
        channel = Channel(self.run_dir, f"{os.getpid()}-{self.count}", self.uid)
        return ContainerProcess(channel, name, self.status_api)

    def _refill(self) -> None:   # with self.cond held
        while not self.stopping and len(self.spares) + self.making < self.wanted:
            self.making += 1
            self.jobs.append(("spare", self._new()))

    # --- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        api = None
        while True:
            with self.cond:
                while not self.jobs and not self.stopping:
                    self.cond.wait()
                if not self.jobs:
                    return
                kind, proc = self.jobs.popleft()
            if api is None:
                try:
                    api = api_client(self.socket)
                except Exception as exc:   # (the docker package missing) said per instance
                    log.error("%s: no Docker engine client: %s", self.fn.name, exc)
            if kind == "remove":
                self._remove(api, proc)
                continue
            made = self._make(api, proc)
            with self.cond:
                if kind == "spare":
                    self.making -= 1
                    if made and not self.stopping:
                        self.spares.append(proc)
                        continue
                    if made:   # the worker is stopping: not kept
                        proc.kill()
                    self.jobs.append(("remove", proc))
                elif not made:
                    self.jobs.append(("remove", proc))

    def _make(self, api, proc: ContainerProcess) -> bool:
        if api is None:
            self._fail(proc, f"no Docker engine client at {self.socket}")
            return False
        options = spec.create_options(self.fn, self.argv, self.create_env, proc.channel.path,
                                      self.secrets_dir, self.host_id, os.getpid(), proc.name)
        name = options.pop("name")
        try:
            container_id = api.create_container_from_config(options, name)["Id"]
            proc.created(container_id)
            api.start(container_id)
            state = api.inspect_container(container_id)["State"]
        except Exception as exc:
            self._fail(proc, self._reason(exc))
            return False
        if not proc.attach(container_id, state.get("Pid") or 0):
            return False   # killed meanwhile: attach killed it; removed next
        return True

    def _reason(self, exc: Exception) -> str:
        text = str(getattr(exc, "explanation", None) or exc)
        if "/bin/sh" in text and ("no such file" in text or "not found" in text):
            return (f"image {self.fn.image!r} has no /bin/sh, which Sora's container "
                    f"instances need to open their channel (the engine said: {text})")
        return f"could not start a container of image {self.fn.image!r}: {text}"

    def _fail(self, proc: ContainerProcess, reason: str) -> None:
        log.error("%s: %s", self.fn.name, reason)
        proc.failed(b"INIT " + p.error_body("Sora.ContainerError", reason) + b"\n", reason)

    def _remove(self, api, proc: ContainerProcess) -> None:
        if proc.id is not None and api is not None:
            try:
                api.remove_container(proc.id, force=True)
            except Exception as exc:
                if getattr(getattr(exc, "response", None), "status_code", None) != 404:
                    log.warning("%s: could not remove container %s: %s", self.fn.name,
                                proc.name, exc)
        proc.close()
        proc.channel.remove()
