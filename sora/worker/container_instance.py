"""An instance whose runtime runs in a container (`isolation: container`).

Everything but how the runtime starts and ends is `Instance`'s: the worker reads and writes
the channel's FIFOs (sora.containers.channel) as it would a local process's pipes, so the
warm path is the same code, with no engine call, thread hop or relay. Starting takes a
runtime from the worker's `ContainerFactory` (a spare already running, in standby, or one it
is making) and writes the line that names the function (`{"cwd", "env"}`), as for a
pre-started runtime of the pool. Max Memory Used and the OOM kill come from the container's
own memory cgroup (`ContainerGroup`); the container is removed by the factory's thread once
the instance has ended.
"""
from __future__ import annotations

import json

from ..containers.process import ContainerGroup, ContainerProcess
from ..containers.spares import ContainerFactory
from ..containers.spec import SECRETS_MOUNT
from ..isolation.secrets import SECRETS_DIR_ENV
from ..runtimes.base import task_root
from .instance import Instance, State


class ContainerInstance(Instance):
    def __init__(self, *args, containers: ContainerFactory, path: str, **kwargs):
        """`path`: the PATH inside the image (its own, else the usual one)."""
        super().__init__(*args, **kwargs)
        self.containers = containers
        self.image_path = path
        self.proc: ContainerProcess | None = None

    def launch(self) -> None:
        proc = self.containers.take()
        self.proc, self.control_fd = proc, proc.control_fd
        self.cgroup = ContainerGroup(proc)
        line = json.dumps({"cwd": task_root(self.fn),
                           "env": self.environment()}).encode() + b"\n"
        # The FIFO holds it until the runtime reads it (the worker's end is O_RDWR until READY).
        proc.stdin.write(line)

    def environment(self) -> dict[str, str]:
        env = self.runtime.environment(self.fn)
        env.update(self.extra_env)
        if SECRETS_DIR_ENV in env:   # the folder as the container sees it
            env[SECRETS_DIR_ENV] = SECRETS_MOUNT
        env["AWS_LAMBDA_LOG_STREAM_NAME"] = self.log_stream
        env["PATH"] = self.image_path
        env["HOME"] = "/tmp"
        env["SORA_CONTROL_FD"] = "3"
        return env

    def ready(self) -> None:
        super().ready()
        self.proc.channel.write_end_only()

    def kill(self) -> None:
        """SIGKILL to the container's init; the container is removed off the loop."""
        if self.proc is None or self.state is State.DEAD:
            return
        self.proc.kill()
        self.proc.exited(5)
        self.close()
        self.containers.remove(self.proc)

    def end(self, grace: float = 5.0) -> None:
        """It is ending by itself: its status (and OOM state) from the engine, then removal."""
        if self.proc.wait(grace) is None:
            self.kill()
            return
        self.close()
        self.containers.remove(self.proc)
