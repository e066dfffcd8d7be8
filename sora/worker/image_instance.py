"""An instance of a Lambda container image: its container and the Runtime API adapter beside it.

The worker speaks the usual line protocol with the adapter (`provided/runtime_api.py` in
container mode, on the host) over pipes, exactly as with a `provided` function's adapter; the
adapter speaks the Runtime API with the runtime interface client in the container. So the warm
path is the worker's pipe to the adapter and the adapter's loopback connection to the runtime:
no engine call and no thread of the worker in between. Max Memory Used and the OOM kill are the
container's (its memory cgroup); the exit status is the container's (the engine's), not the
adapter's, which only says that the container has ended.
"""
from __future__ import annotations

import os
import signal
import subprocess

from ..containers.process import ContainerGroup, ContainerProcess
from ..runtimes.image.containers import AdapterPipes, ImageContainerFactory
from .container_instance import ContainerInstance
from .instance import Instance, State, describe_exit


class AdapterProcess:
    """Popen-like for the worker: the worker's ends of the adapter's pipes from the start,
    the adapter's process once the container is there to start it beside."""

    def __init__(self, pipes: AdapterPipes, container: ContainerProcess):
        self.pipes, self.container = pipes, container
        self.stdin = open(pipes.stdin_w, "wb", buffering=0)
        self.stdout = open(pipes.stdout_r, "rb", buffering=0)
        self.stderr = open(pipes.stderr_r, "rb", buffering=0)
        self.control_fd = pipes.control_r
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.pipes.popen.pid if self.pipes.popen is not None else -1

    def poll(self) -> int | None:
        if self.returncode is None and self.pipes.popen is not None:
            self.returncode = self.pipes.popen.poll()
        elif self.returncode is None and self.pipes.failed:
            self.returncode = 1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        if self.pipes.popen is None:
            return self.poll()
        try:
            self.returncode = self.pipes.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def kill(self) -> None:
        """The adapter's process group and the container (by its init's pidfd)."""
        self.pipes.killed = True
        # Only while it has not been reaped: after that its pid may be another process's.
        if self.pipes.popen is not None and self.pipes.popen.returncode is None:
            try:
                os.killpg(self.pipes.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.container.kill()


class ImageInstance(ContainerInstance):
    containers: ImageContainerFactory

    def launch(self) -> None:
        container = self.containers.take()
        self.container = container
        self.log_stream = container.log_stream   # the container is the execution environment
        pipes = AdapterPipes(self.runtime.argv(self.fn), self.environment())
        self.proc = AdapterProcess(pipes, container)
        self.control_fd = pipes.control_r
        self.cgroup = ContainerGroup(container)
        self.containers.adapter_for(container, pipes)

    def environment(self) -> dict[str, str]:
        """The adapter's (the container's is made by the factory): what its ARN names."""
        env = self.runtime.environment(self.fn)
        env["AWS_LAMBDA_LOG_STREAM_NAME"] = self.log_stream
        return env

    def ready(self) -> None:
        Instance.ready(self)

    def exit_description(self) -> str:
        """The container's exit, as the engine tells it (the adapter's is always 1)."""
        return describe_exit(self.container.poll(), wrapped=True)

    def kill(self) -> None:
        if self.proc is None or self.state is State.DEAD:
            return
        self.proc.kill()
        self.proc.wait(5)
        self.container.exited(5)
        self.close()
        self.containers.remove(self.container)

    def end(self, grace: float = 5.0) -> None:
        """It is ending by itself: the adapter exits once the container has; the container's
        status (and OOM state) from the engine, then removal."""
        if self.proc.wait(grace) is None or self.container.wait(grace) is None:
            self.kill()
            return
        self.close()
        self.containers.remove(self.container)

    def close(self) -> None:
        super().close()
        # The worker's ends of the container's FIFOs (the adapter had its own copies).
        for f in (self.container.stdin, self.container.stdout, self.container.stderr):
            try:
                f.close()
            except OSError:
                pass
        if self.container.control_fd >= 0:
            os.close(self.container.control_fd)
            self.container.control_fd = -1
