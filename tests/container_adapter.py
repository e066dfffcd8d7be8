"""Drive one Lambda-image instance by hand, as the worker does: a container started through the
engine, the Runtime API's listener, the adapter (`runtime_api.py` in container mode) with its
pipes, and the line protocol on them. For the adapter's own tests, below the worker."""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
import uuid

from sora.runtimes.image import ImageRuntime

# As the worker's container wrapper does: stdin is the requests FIFO, and the runtime starts
# only once told `go` (its Runtime API is listening by then).
WRAPPER = ('exec </run/sora/requests; read go; '
           'exec "$@" >/run/sora/stdout 2>/run/sora/stderr')


class Fn:
    """The fields of a FunctionConfig the image runtime reads."""

    def __init__(self, **fields):
        self.name = fields.pop("name", "img")
        self.version = "$LATEST"
        self.memory = 256
        self.env = fields.pop("env", {})
        self.handler = fields.pop("handler", "")
        self.network = fields.pop("network", False)
        self.taskRoot = "/var/task"
        self.isolation, self.containerized = "container", True
        self.package = "image"
        self.entrypoint = ""
        self.directory = fields.pop("directory", "/nonexistent")
        assert not fields, fields


class AdapterInstance:
    def __init__(self, client, image: str, fn: Fn, image_config: dict | None = None,
                 volumes: dict | None = None, user: str = "65534:65534"):
        self.client, self.fn, self.user = client, fn, user
        self.runtime = ImageRuntime()
        config = image_config or client.images.get(image).attrs["Config"]
        self.channel = tempfile.mkdtemp(prefix="sora-test-channel-")
        os.chmod(self.channel, 0o711)   # the container's user opens its FIFOs by name
        for name in ("requests", "stdout", "stderr"):
            os.mkfifo(os.path.join(self.channel, name), 0o600)
            os.chown(os.path.join(self.channel, name), *map(int, user.split(":")))
        self.out_r = os.open(os.path.join(self.channel, "stdout"), os.O_RDONLY | os.O_NONBLOCK)
        self.err_r = os.open(os.path.join(self.channel, "stderr"), os.O_RDONLY | os.O_NONBLOCK)
        self.requests = os.open(os.path.join(self.channel, "requests"), os.O_RDWR)
        before = self.runtime.api_listener_before(fn)
        address = self.runtime.runtime_api_address(before)
        mounts = dict(volumes or {})
        mounts[self.channel] = {"bind": "/run/sora", "mode": "rw"}
        self.container = client.containers.create(
            image, ["/bin/sh", "-c", WRAPPER, "sh", *self.runtime.container_command(fn, config)],
            entrypoint=[], name=f"sora-test-img-{uuid.uuid4().hex[:12]}",
            environment=self.runtime.container_environment(fn, config, address),
            working_dir=self.runtime.working_dir(fn, config),
            network_mode="host" if fn.network else "none", user=user, cap_drop=["ALL"],
            read_only=True, security_opt=["no-new-privileges"], volumes=mounts,
            tmpfs={"/tmp": "size=16m,mode=1777"}, labels={"sora-test": "image-adapter"})
        try:
            self._start(fn, before)
        except BaseException:
            self.container.remove(force=True)
            shutil.rmtree(self.channel, ignore_errors=True)
            raise

    def _start(self, fn: Fn, before) -> None:
        user = self.user
        address = self.runtime.runtime_api_address(before)
        self.container.start()
        self.container.reload()
        self.init_pid = self.container.attrs["State"]["Pid"]
        if not self.init_pid:
            logs = self.container.logs()
            raise RuntimeError(f"the container exited at once: {logs!r}")
        self.pidfd = os.pidfd_open(self.init_pid)
        self.listener = before or self.runtime.api_listener_after(fn, self.init_pid, self.pidfd)
        self.listener_address = address
        control_r, control_w = os.pipe()
        env = self.runtime.environment(fn)
        env.update(self.runtime.adapter_environment(
            self.listener.fileno(), self.init_pid, self.pidfd, self.out_r, self.err_r))
        env["SORA_CONTROL_FD"] = str(control_w)
        env["SORA_RUN_AS_UID"] = user.split(":")[0]   # as the worker starts it
        fds = (control_w, self.listener.fileno(), self.pidfd, self.out_r, self.err_r)
        self.adapter = subprocess.Popen(
            self.runtime.argv(fn), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, pass_fds=fds, start_new_session=True)
        os.close(control_w)
        for fd in (self.out_r, self.err_r, self.pidfd):   # the adapter holds them now
            os.close(fd)
        self.listener.close()
        self.control = control_r
        self.control_buf = b""
        os.write(self.requests, b"go\n")

    def control_line(self, timeout: float = 20) -> bytes | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.control_buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.control], [], [], left)[0]:
                raise TimeoutError("no control line in %ss; adapter %s" % (timeout,
                                                                          self.adapter.poll()))
            chunk = os.read(self.control, 1 << 16)
            if not chunk:
                return None
            self.control_buf += chunk
        line, _, self.control_buf = self.control_buf.partition(b"\n")
        return line

    def invoke(self, event, request_id: str | None = None, timeout_ms: int = 10000) -> bytes:
        request_id = request_id or str(uuid.uuid4())
        self.adapter.stdin.write(json.dumps({"id": request_id, "timeoutMs": timeout_ms,
                                             "event": event}, separators=(",", ":")).encode() + b"\n")
        self.adapter.stdin.flush()
        return self.control_line()

    def output(self, stream: str, until: bytes, timeout: float = 10) -> bytes:
        """What the adapter wrote on its stdout or stderr, up to and with `until`."""
        pipe = self.adapter.stdout if stream == "stdout" else self.adapter.stderr
        fd, data = pipe.fileno(), b""
        os.set_blocking(fd, False)
        deadline = time.monotonic() + timeout
        while until not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{until!r} not in {stream}: {data!r}")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                data += chunk
        return data

    def close(self) -> None:
        try:
            os.killpg(self.adapter.pid, 9)
        except ProcessLookupError:
            pass
        self.adapter.wait(10)
        for f in (self.adapter.stdin, self.adapter.stdout, self.adapter.stderr):
            f.close()
        os.close(self.control)
        os.close(self.requests)
        self.container.remove(force=True)
        shutil.rmtree(self.channel, ignore_errors=True)
