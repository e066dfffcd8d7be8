"""The containers of a Lambda image's instances, and the Runtime API adapter beside each.

`ImageContainerFactory` is the worker's container thread (`sora.containers.spares`) with what
differs for an image: the container runs the image's own ENTRYPOINT + CMD (or `handler:`) in
the image's WorkingDir with Lambda's environment (`ImageRuntime.container_*`), none of Sora's
shims and not the function folder (an image brings its code: a folder bound over its
/var/task would hide it); its wrapper waits for a `go` line before it execs the runtime, so the
Runtime API listens before the runtime looks for it:

    exec </run/sora/requests; read go; exec ENTRYPOINT CMD... >/run/sora/stdout 2>/run/sora/stderr

After the thread has started a container it makes its Runtime API listener (in the container's
network namespace, or a host port bound before the container with `network: true`). The
adapter (`provided/runtime_api.py` in container mode) is started once both the container and
an instance that wants it exist: by the instance on the worker's loop when it takes a spare
that is ready, else by the thread as soon as the container it is making for that instance is.
Either way the worker's ends of the adapter's pipes exist from the instance's start (its
requests wait in the pipe), and a failure to make the container reaches the worker as
`INIT <error>` on the adapter's control pipe, as a runtime's own would.
"""
from __future__ import annotations

import logging
import os
import subprocess
import time
import uuid

from ...config import FunctionConfig
from ...containers import spec
from ...containers.process import ContainerProcess
from ...containers.spares import ContainerFactory
from ...isolation.uids import sandbox_uid
from . import ImageRuntime

log = logging.getLogger("sora.containers")
# `|| exit 1`: the end of `requests` before `go` (its worker died) ends the container; going
# on would start the client and block opening stdout, which no reader will ever open.
WRAPPER = ('exec </run/sora/requests; read go || exit 1; '
           'exec "$@" >/run/sora/stdout 2>/run/sora/stderr')
GO = b"go\n"
SECRETS_ENV = "SORA_SECRETS_DIR"


class AdapterPipes:
    """The adapter of one instance before and after it runs: the child's ends of its pipes
    (stdin, stdout, stderr, control), its environment, and once started its Popen."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.argv, self.env = argv, env
        self.stdin_r, self.stdin_w = os.pipe2(os.O_CLOEXEC)
        self.stdout_r, self.stdout_w = os.pipe2(os.O_CLOEXEC)
        self.stderr_r, self.stderr_w = os.pipe2(os.O_CLOEXEC)
        self.control_r, self.control_w = os.pipe2(os.O_CLOEXEC)
        self.popen: subprocess.Popen | None = None
        self.killed = False
        self.failed = False

    def child_ends(self) -> tuple[int, ...]:
        return self.stdin_r, self.stdout_w, self.stderr_w, self.control_w

    def close_child_ends(self) -> None:
        for name in ("stdin_r", "stdout_w", "stderr_w", "control_w"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


class ImageContainerFactory(ContainerFactory):
    def __init__(self, fn: FunctionConfig, runtime: ImageRuntime, image_config: dict,
                 state_dir: str, socket: str, spares: int = 0, secrets_dir: str | None = None):
        self.runtime, self.image_config = runtime, image_config
        extra = {SECRETS_ENV: spec.SECRETS_MOUNT} if secrets_dir else {}
        env = runtime.container_environment(fn, image_config, runtime.runtime_api_address(None),
                                            extra)
        super().__init__(fn, runtime.container_command(fn, image_config), env, state_dir,
                         socket, spares, secrets_dir, (image_config.get("Volumes") or {}))
        # The container's user (sora.containers.spec), which the adapter becomes as well.
        self.container_uid = sandbox_uid(fn) or 65534

    # --- on the worker's loop -----------------------------------------------------------------
    def adapter_for(self, proc: ContainerProcess, pipes: AdapterPipes) -> None:
        """The instance that took `proc` wants its adapter: started now if the container is
        ready, else by the thread once it is (whichever comes second starts it)."""
        with self.cond:
            proc.adapter = pipes
            ready = getattr(proc, "api_listener", None) is not None
            failed = getattr(proc, "failure", None)
        if failed is not None:
            self._tell_failure(pipes, failed)
        elif ready:
            self._start_adapter(proc)

    # --- the thread ---------------------------------------------------------------------------
    def _new(self) -> ContainerProcess:
        proc = super()._new()
        proc.adapter = None
        proc.api_listener = None
        proc.failure = None
        # Lambda's log stream names the execution environment: the container.
        proc.log_stream = (time.strftime("%Y/%m/%d/", time.gmtime()) + f"[{self.fn.version}]" +
                           uuid.uuid4().hex)
        return proc

    def _make(self, api, proc: ContainerProcess) -> bool:
        if api is None:
            self._fail(proc, f"no Docker engine client at {self.socket}")
            return False
        listener = None
        try:
            listener = self.runtime.api_listener_before(self.fn)
            env = dict(self.create_env)
            env["AWS_LAMBDA_RUNTIME_API"] = self.runtime.runtime_api_address(listener)
            env["AWS_LAMBDA_LOG_STREAM_NAME"] = proc.log_stream
            options = spec.create_options(self.fn, self.argv, env, proc.channel.path,
                                          self.secrets_dir, self.host_id, os.getpid(),
                                          proc.name, self.image_volumes)
            options["Cmd"] = ["/bin/sh", "-c", WRAPPER, "sh", *self.argv]
            options["WorkingDir"] = self.runtime.working_dir(self.fn, self.image_config)
            # Only the channel (and the secrets): the image brings its own code and runtime.
            host = options["HostConfig"]
            host["Mounts"] = [m for m in host["Mounts"] if m["Target"] not in (
                self.fn.taskRoot, spec.RUNTIMES_MOUNT)]
            name = options.pop("name")
            container_id = api.create_container_from_config(options, name)["Id"]
            proc.created(container_id)
            api.start(container_id)
            state = api.inspect_container(container_id)["State"]
        except Exception as exc:
            if listener is not None:
                listener.close()
            self._fail(proc, self._reason(exc))
            return False
        if not proc.attach(container_id, state.get("Pid") or 0):
            if listener is not None:
                listener.close()
            return False   # killed meanwhile: attach killed it; removed next
        try:
            if proc.pidfd < 0:   # it exited before it could be watched: nothing to serve
                raise OSError(f"the container's command exited at once (docker logs "
                              f"{proc.name})")
            if listener is None:
                listener = self.runtime.api_listener_after(self.fn, proc.pid, proc.pidfd)
        except OSError as exc:   # it exited at once (its status says why), or no privilege
            if listener is not None:
                listener.close()
            proc.kill()
            self._fail(proc, f"could not serve the Runtime API in the container of image "
                             f"{self.fn.image!r}: {exc}")
            return False
        with self.cond:
            proc.api_listener = listener
            wanted = proc.adapter is not None
        if wanted:
            self._start_adapter(proc)
        return True

    def _fail(self, proc: ContainerProcess, reason: str) -> None:
        super()._fail(proc, reason)
        with self.cond:
            proc.failure = reason
            pipes = proc.adapter
        if pipes is not None:
            self._tell_failure(pipes, reason)

    def _remove(self, api, proc: ContainerProcess) -> None:
        listener = getattr(proc, "api_listener", None)
        if listener is not None:
            listener.close()
        pipes = getattr(proc, "adapter", None)
        if pipes is not None:
            pipes.close_child_ends()
        super()._remove(api, proc)

    # --- the adapter --------------------------------------------------------------------------
    @staticmethod
    def _tell_failure(pipes: AdapterPipes, reason: str) -> None:
        """No container: what its runtime would have said (`INIT <error>`), then the end of
        every pipe, so the worker reads an instance that failed to start."""
        from ... import protocol as p
        if pipes.control_w >= 0 and not pipes.failed:
            pipes.failed = True
            try:
                os.write(pipes.control_w, b"INIT " + p.error_body("Sora.ContainerError", reason)
                         + b"\n")
            except OSError:
                pass
        pipes.close_child_ends()

    def _start_adapter(self, proc: ContainerProcess) -> None:
        """Start the adapter beside the running container and let the container's runtime
        start (`go`). On the worker's loop or the thread: no engine call here."""
        pipes: AdapterPipes = proc.adapter
        with self.cond:
            if pipes.killed or pipes.popen is not None:
                return
            listener = proc.api_listener
            env = dict(pipes.env)
            env.update(self.runtime.adapter_environment(
                listener.fileno(), proc.pid, proc.pidfd, proc.stdout.fileno(),
                proc.stderr.fileno()))
            env["SORA_CONTROL_FD"] = str(pipes.control_w)
            env["SORA_PARENT_PID"] = str(os.getpid())
            env["SORA_RUN_AS_UID"] = str(self.container_uid)
            try:
                pipes.popen = subprocess.Popen(
                    pipes.argv, env=env, stdin=pipes.stdin_r, stdout=pipes.stdout_w,
                    stderr=pipes.stderr_w, start_new_session=True,
                    pass_fds=(pipes.control_w, listener.fileno(), proc.pidfd,
                              proc.stdout.fileno(), proc.stderr.fileno()))
            except OSError as exc:
                log.error("%s: could not start the Runtime API adapter: %s", self.fn.name, exc)
                proc.kill()
                self._tell_failure(pipes, f"could not start the Runtime API adapter: {exc}")
                return
            pipes.close_child_ends()
            # The adapter holds the listener now.
            listener.close()
            proc.api_listener = listener
        try:
            proc.stdin.write(GO)
        except OSError:
            pass   # the container died meanwhile: its adapter sees it and exits
