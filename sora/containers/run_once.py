"""One command in a container, as one process the setup's poll loop can wait on:
`python -m sora.containers.run_once` creates the container its spec describes, starts it,
copies its output (stdout and stderr, in order) to its own stdout, waits for it, removes it,
and exits with the container's exit status. SIGTERM, SIGINT or SIGHUP (the setup's timeout,
the host stopping) kill and remove the container first, then it exits 128 + the signal.

The spec comes in the environment variable SORA_RUN_ONCE_SPEC (JSON, written by
sora.setup.run from the operator's config; never the function's): `socket`, and the
engine's create options `image`, `command`, `user`, `working_dir`, `environment`, `mounts`
(source, target, read_only), `tmpfs`, `network_mode`, `labels`; and `error_file`, where
it writes why the container could not be run at all (no engine, no image: exit status 125),
for the setup's reason (the log holds what the container wrote, which the function chose). The container's label
`sora.worker` is this process's pid, so what a SIGKILL leaves is found and removed by the
supervisor (sora.supervisor.container_sweeps, or the setup right after).

Not the hot path: a setup command runs for seconds to minutes.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import docker
import docker.errors
import docker.types

from . import engine
from .labels import WORKER

SPEC_ENV = "SORA_RUN_ONCE_SPEC"
POLL_INTERVAL = 0.2
# What the container may take of processes: a setup (npm, pip, a compiler) starts many.
PIDS_LIMIT = 4096
EXIT_ENGINE_ERROR = 125   # as `docker run`: the container could not be run at all


class RunOnce:
    def __init__(self, spec: dict):
        self.spec = spec
        self.engine = None
        self.container_id: str | None = None
        self.stop_signal: int | None = None

    def connect(self) -> None:
        self.engine = engine.client(self.spec["socket"])

    def on_signal(self, signum, _frame) -> None:
        self.stop_signal = signum   # handled by the loop (only queued here)

    def create(self) -> str:
        spec = self.spec
        mounts = [docker.types.Mount(m["target"], m["source"], type="bind",
                                     read_only=m.get("read_only", False))
                  for m in spec.get("mounts", ())]
        labels = dict(spec.get("labels", {}), **{WORKER: str(os.getpid())})
        host_config = self.engine.api.create_host_config(
            mounts=mounts, tmpfs=spec.get("tmpfs") or None,
            network_mode=spec.get("network_mode", "none"), read_only=True,
            cap_drop=["ALL"], security_opt=["no-new-privileges"], pids_limit=PIDS_LIMIT,
            auto_remove=False, init=False,
            mem_limit=f"{spec['memory_mb']}m" if spec.get("memory_mb") else None,
            memswap_limit=f"{spec['memory_mb']}m" if spec.get("memory_mb") else None)
        created = self.engine.api.create_container(
            # entrypoint []: the command itself, not arguments to the image's ENTRYPOINT (a
            # Lambda image's is its runtime interface client)
            spec["image"], command=spec["command"], entrypoint=[], user=spec.get("user"),
            working_dir=spec.get("working_dir"), environment=spec.get("environment") or {},
            labels=labels, host_config=host_config, stdin_open=False, tty=False,
            network_disabled=spec.get("network_mode") == "none")
        self.container_id = created["Id"]
        return self.container_id

    def copy_output(self) -> None:
        """The container's output, as it comes, to this process's stdout (the setup log)."""
        out = sys.stdout.buffer
        try:
            # The engine's log of it from its start, followed until it stops (an attach
            # made as it starts can miss what it wrote first).
            for chunk in self.engine.api.logs(self.container_id, stdout=True, stderr=True,
                                              stream=True, follow=True):
                out.write(chunk)
                out.flush()
        except (docker.errors.APIError, OSError, ValueError):
            pass   # the container went away: its status says the rest

    def state(self) -> dict:
        return self.engine.api.inspect_container(self.container_id)["State"]

    def run(self) -> int:
        self.create()
        self.engine.api.start(self.container_id)
        copier = threading.Thread(target=self.copy_output, name="output", daemon=True)
        copier.start()
        while True:
            if self.stop_signal is not None:
                self.engine.api.kill(self.container_id)
                return 128 + self.stop_signal
            state = self.state()
            if not state.get("Running") and state.get("Status") not in ("created", "restarting"):
                copier.join(5)
                if state.get("OOMKilled"):
                    print("sora: the setup command's container ran out of memory",
                          flush=True)
                return int(state.get("ExitCode") or 0)
            time.sleep(POLL_INTERVAL)

    def remove(self) -> None:
        if self.container_id is None or self.engine is None:
            return
        try:
            self.engine.api.remove_container(self.container_id, force=True, v=True)
        except docker.errors.NotFound:
            pass


def main() -> int:
    spec = json.loads(os.environ.pop(SPEC_ENV))
    runner = RunOnce(spec)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, runner.on_signal)
    try:
        runner.connect()
        return runner.run()
    except (engine.EngineUnavailable, docker.errors.DockerException) as exc:
        why = _reason(exc, spec["image"])
        print(f"sora: the setup container could not run: {why}", flush=True)
        if spec.get("error_file"):
            with open(spec["error_file"], "w", encoding="utf-8") as fh:
                fh.write(why)
        return EXIT_ENGINE_ERROR
    finally:
        # Masked while removing: a second SIGTERM must not leave the container behind.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
        try:
            runner.remove()
        except (engine.EngineUnavailable, docker.errors.DockerException) as exc:
            print(f"sora: the setup container could not be removed: {exc}", flush=True)


def _reason(exc: Exception, image: str) -> str:
    """What the operator is told: the engine's own words for the usual two cases."""
    if isinstance(exc, docker.errors.ImageNotFound):
        return str(engine.ImageMissing(image))
    if isinstance(exc, docker.errors.APIError):
        return f"the engine refused: {exc.explanation or exc}"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
