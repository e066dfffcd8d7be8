"""Removing the containers that Sora's workers and setups left behind (design20.md, "Engine").

A container's processes belong to the engine, not to the worker that created it: a worker
killed -9 leaves its containers running, and a host killed -9 leaves all of them. Each carries
the host's id and the worker's pid as labels (sora.containers.labels), so the supervisor
removes them by label:
- at the host's start, before any worker starts: all of this host's (a crashed host's);
- after a worker exits, any way: that worker's (a thread does it, the arbiter loop never
  waits on the engine; its replacement has another pid, so nothing of it is touched), and
  again RESWEEP_AFTER later: a create the worker had sent when it was killed completes in
  the engine (which finishes a request whose client is gone) after the first sweep;
- at the host's stop, once every worker has exited: all of this host's.
Only on a host that runs containers: a host without `isolation: container` never talks to an
engine (it may have none). The host's id comes from its stateDir, so two hosts sharing an
engine never remove each other's containers.
"""
from __future__ import annotations

import heapq
import logging
import queue
import threading
import time

from ..containers import engine

log = logging.getLogger("sora.supervisor")
# How long the stop waits for the sweeps of exited workers still queued before its own.
STOP_WAIT = 10.0
# When a dead worker's containers are swept again, in seconds after the first sweep: a
# container create in flight at its death takes up to a few seconds on a loaded engine.
RESWEEP_AFTER = (5.0, 15.0)


class ContainerSweeps:
    def __init__(self, socket: str, state_dir: str):
        self.socket = socket
        self.host_id = engine.host_id(state_dir)
        self.used = False   # some function of this host runs in containers
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def use(self) -> None:
        """A containerized function is (or was) on this host: sweep from now on."""
        self.used = True

    def at_start(self) -> None:
        """What a host with this stateDir left (killed -9): removed before a worker starts."""
        if self.used:
            self._sweep(None, "left by an earlier run of this host")

    def after_worker(self, pid: int) -> None:
        """A worker exited: its containers go, off the arbiter loop."""
        if not self.used:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="container-sweeps",
                                            daemon=True)
            self._thread.start()
        self._queue.put(pid)

    def at_stop(self) -> None:
        """Every worker has exited: no container of this host may remain."""
        if not self.used:
            return
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(STOP_WAIT)
            self._thread = None
        self._sweep(None, "at the host's stop")

    def _run(self) -> None:
        again: list[tuple[float, int, int]] = []   # (when, worker pid, index in RESWEEP_AFTER)
        while True:
            wait = max(0.0, again[0][0] - time.monotonic()) if again else None
            try:
                pid = self._queue.get(timeout=wait)
            except queue.Empty:
                _, pid, done = heapq.heappop(again)
                self._sweep(pid, f"left by worker {pid} (created as it died)")
                if done + 1 < len(RESWEEP_AFTER):
                    heapq.heappush(again, (time.monotonic() + RESWEEP_AFTER[done + 1]
                                           - RESWEEP_AFTER[done], pid, done + 1))
                continue
            if pid is None:
                return   # the host's stop sweeps everything of the host next
            self._sweep(pid, f"left by worker {pid}")
            heapq.heappush(again, (time.monotonic() + RESWEEP_AFTER[0], pid, 0))

    def _sweep(self, worker_pid: int | None, what: str) -> None:
        try:
            removed = engine.remove_containers(self.socket, self.host_id, worker_pid)
        except engine.EngineUnavailable as exc:
            # The functions' workers report it (each its own boot error): a warning here.
            log.warning("containers %s not swept: %s", what, exc)
            return
        except Exception as exc:   # the engine answered with an error: logged, the host goes on
            log.warning("containers %s not swept: %s", what, exc)
            return
        if removed:
            log.info("removed %d container(s) %s", removed, what)
