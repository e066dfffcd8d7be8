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

import logging
import os
import re
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from .. import protocol as p
from ..config import FunctionConfig
from ..isolation.uids import sandbox_uid
from . import engine, spec
from .labels import host_id
from .channel import Channel
from .process import ContainerProcess

log = logging.getLogger("sora.containers")
# After a take, how long the thread leaves the CPU to the instances taken before it makes
# spares or removes containers (the runtime pool waits as long: sora.runtimes.pool).
QUIET_AFTER_TAKE = 0.25


def api_client(socket: str):
    """A low-level client of the engine (one per thread that calls it)."""
    import docker
    return docker.APIClient(base_url=f"unix://{socket}", timeout=60)


class ContainerFactory:
    def __init__(self, fn: FunctionConfig, argv: list[str], create_env: dict[str, str],
                 state_dir: str, socket: str = engine.DEFAULT_SOCKET, spares: int = 0,
                 secrets_dir: str | None = None, image_volumes=()):
        """`argv` is the runtime's command inside the container (in standby mode),
        `create_env` its environment at start (the function's own, no secret),
        `image_volumes` the VOLUMEs the image declares (each gets a capped tmpfs)."""
        self.fn, self.argv, self.create_env = fn, argv, create_env
        self.image_volumes = tuple(image_volumes)
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
        self.quiet_from = 0.0   # spares and removals wait until then (take)
        self._status_api = None
        self.thread = threading.Thread(target=self._run, name=f"containers-{fn.name}",
                                       daemon=True)
        self.thread.start()

    # --- on the worker's loop -----------------------------------------------------------------
    def take(self) -> ContainerProcess:
        """A runtime for a new instance: a running spare, else one being made now."""
        with self.cond:
            # Spares and removals wait until takes pause: the engine's work (runc, dockerd:
            # ~0.3 s of CPU per container) would compete with the instances just taken.
            self.quiet_from = time.monotonic() + QUIET_AFTER_TAKE
            proc = self.spares.popleft() if self.spares else None
            if proc is not None:
                proc.spare = True
            else:
                proc = self._new()
                self.jobs.appendleft(("instance", proc))
            proc.taken = True   # its FIFO ends are the instance's to close from now on
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
                while not self.stopping:
                    if self.jobs and self.jobs[0][0] == "instance":
                        break
                    wait = self.quiet_from - time.monotonic()
                    if self.jobs and wait <= 0:
                        break
                    self.cond.wait(wait if self.jobs else None)
                if not self.jobs:
                    return
                kind, proc = self.jobs.popleft()
            if api is None:
                try:
                    api = api_client(self.socket)
                except Exception as exc:   # (the docker package missing) said per instance
                    log.error("%s: no Docker engine client: %s", self.fn.name, exc)
            if kind == "remove" and self.stopping:
                self._remove_all(api, proc)
                continue
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
                                      self.secrets_dir, self.host_id, os.getpid(), proc.name,
                                      self.image_volumes)
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

    def _remove_all(self, api, first: ContainerProcess) -> None:
        """At the worker's stop: every container left to remove, a few at a time (each takes
        the engine ~0.1-1 s; the supervisor's stop waits for the worker only so long)."""
        with self.cond:
            procs = [first, *(proc for kind, proc in self.jobs if kind == "remove")]
            self.jobs = deque((kind, proc) for kind, proc in self.jobs if kind != "remove")
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda proc: self._remove(api, proc), procs))

    def _remove(self, api, proc: ContainerProcess) -> None:
        if proc.id is not None and api is not None:
            try:
                api.remove_container(proc.id, force=True, v=True)
            except Exception as exc:
                if getattr(getattr(exc, "response", None), "status_code", None) != 404:
                    log.warning("%s: could not remove container %s: %s", self.fn.name,
                                proc.name, exc)
        proc.close()
        proc.channel.remove()
