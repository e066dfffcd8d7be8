"""image: a Lambda container image (`package: image`), run as Lambda runs it.

The image's own ENTRYPOINT and CMD run in the instance's container: a runtime interface client
(aws-lambda-ric for Node.js, awslambdaric for Python, or any other) that talks to the Runtime
API at AWS_LAMBDA_RUNTIME_API. `handler:` in sora.yaml replaces CMD, as Lambda's
ImageConfig.Command does. The Runtime API is `provided/runtime_api.py` in container mode, on the
host beside the container: the instance's local process, with its pipes to the worker as for
any other runtime; it does not start the executable (the container is it).

How an instance comes up (the worker, through `sora.containers`):
1. `api_listener_before(fn)`: with `network: true` (the host's network) a loopback port of the
   host, bound now, so its address can be in the container's environment;
2. the container is created with `container_command`, `container_environment(...,
   runtime_api_address(...))` and `working_dir`, and started: its wrapper waits for a `go` line;
3. `api_listener_after(fn, init_pidfd)`: with `network: false`, 127.0.0.1:9001 made inside the
   container's network namespace (`sora.containers.netns_listener`);
4. the adapter is started (`argv`, `environment` + `adapter_environment(...)`, passing the
   listener, the init's pidfd and the read ends of the container's stdout/stderr FIFOs), then
   the container is told `go`: its runtime connects to a socket that is already listening.
"""
from __future__ import annotations

import os
import socket
import sys

from ...config import FunctionConfig
from ..base import DEFAULT_REGION, Runtime

RUNTIME_API = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "provided", "runtime_api.py")
RUNTIME_API_PORT = 9001          # where Lambda serves it in its execution environments
LAMBDA_RUNTIME_DIR = "/var/runtime"
# Set by Sora whatever the image or the function's env say: they name the function, its
# instance and Sora's Runtime API (Lambda reserves them too).
RESERVED = ("AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_LOG_GROUP_NAME",
            "AWS_LAMBDA_LOG_STREAM_NAME", "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT",
            "LAMBDA_RUNTIME_DIR", "_HANDLER")


def uses_host_network(fn: FunctionConfig) -> bool:
    """`network: true` runs a container on the host's network (the engine has no bridge)."""
    return bool(fn.network)


def image_env(image_config: dict) -> dict[str, str]:
    """The image's ENV (the engine's `Config.Env`, a list of `NAME=value`)."""
    env = {}
    for item in image_config.get("Env") or []:
        name, _, value = item.partition("=")
        env[name] = value
    return env


def handler_override(fn: FunctionConfig) -> str | None:
    """`handler:` from sora.yaml, or None when it is not given (the image's CMD then)."""
    return fn.handler or None   # the config leaves it empty for an image when not given


class ImageRuntime(Runtime):
    name = "image"

    # --- the adapter, on the host ------------------------------------------------------------
    def argv(self, fn: FunctionConfig) -> list[str]:
        # -I: the adapter sees Sora's own packages (httptools) and nothing of the function's.
        return [sys.executable, "-I", RUNTIME_API]

    def environment(self, fn: FunctionConfig) -> dict[str, str]:
        """The adapter's own environment: what names the function in its ARN. The container's
        is `container_environment`."""
        env = super().environment(fn)
        env["SORA_CONTAINER_NETWORK"] = "host" if uses_host_network(fn) else "none"
        return env

    @staticmethod
    def adapter_environment(listen_fd: int, init_pid: int, init_pidfd: int,
                            stdout_fd: int, stderr_fd: int) -> dict[str, str]:
        """The fds the adapter inherits (all must be in the Popen's pass_fds)."""
        return {"SORA_API_LISTEN_FD": str(listen_fd), "SORA_CONTAINER_PID": str(init_pid),
                "SORA_CONTAINER_PIDFD": str(init_pidfd),
                "SORA_CONTAINER_STDOUT_FD": str(stdout_fd),
                "SORA_CONTAINER_STDERR_FD": str(stderr_fd)}

    # --- the Runtime API's socket --------------------------------------------------------------
    @staticmethod
    def api_listener_before(fn: FunctionConfig) -> socket.socket | None:
        """With the host's network: a loopback port of the host, before the container exists."""
        if not uses_host_network(fn):
            return None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        return sock

    @staticmethod
    def api_listener_after(fn: FunctionConfig, init_pid: int,
                           init_pidfd: int | None = None) -> socket.socket | None:
        """With no network: 127.0.0.1:9001 inside the started container's namespace."""
        if uses_host_network(fn):
            return None
        from ...containers.netns_listener import listen_in
        return listen_in(init_pid, RUNTIME_API_PORT, pidfd=init_pidfd)

    @staticmethod
    def runtime_api_address(listener: socket.socket | None) -> str:
        if listener is None:
            return f"127.0.0.1:{RUNTIME_API_PORT}"
        return "127.0.0.1:%d" % listener.getsockname()[1]

    # --- the container -------------------------------------------------------------------------
    @staticmethod
    def container_command(fn: FunctionConfig, image_config: dict) -> list[str]:
        """ENTRYPOINT + CMD, with `handler:` as CMD when given (Lambda's ImageConfig.Command
        replaces CMD and keeps ENTRYPOINT)."""
        entrypoint = list(image_config.get("Entrypoint") or [])
        handler = handler_override(fn)
        command = [handler] if handler else list(image_config.get("Cmd") or [])
        return entrypoint + command

    @staticmethod
    def working_dir(fn: FunctionConfig, image_config: dict) -> str:
        """The image's WORKDIR, if it is a plain folder path (the image is not trusted: a
        WORKDIR under /proc, such as /proc/self/fd/N, is how runc's CVE-2024-21626 leaked a
        host descriptor), else `taskRoot`."""
        wanted = image_config.get("WorkingDir") or ""
        plain = os.path.normpath(wanted)
        if not wanted.startswith("/") or plain != (wanted.rstrip("/") or "/") or \
                plain.split("/")[1] in ("proc", "sys", "dev"):
            return fn.taskRoot
        return wanted

    def container_environment(self, fn: FunctionConfig, image_config: dict,
                              runtime_api: str, extra: dict[str, str] | None = None,
                              log_stream: str = "") -> dict[str, str]:
        """Lambda's environment inside the container. In order, each over the one before:
        Sora's defaults (region, LANG, TZ, AWS_EXECUTION_ENV), the image's ENV, the function's
        `env` (and its secrets' folder, `extra`), then the variables that name the function,
        its instance and its Runtime API. Nothing of the host's environment (its PATH and HOME
        mean nothing inside an image)."""
        env = {"AWS_REGION": DEFAULT_REGION, "AWS_DEFAULT_REGION": DEFAULT_REGION,
               "LANG": "C.UTF-8", "TZ": ":UTC", "AWS_EXECUTION_ENV": "Sora_image"}
        env.update(image_env(image_config))
        env.update(fn.env)
        env.update(extra or {})
        command = self.container_command(fn, image_config)
        handler = handler_override(fn) or (list(image_config.get("Cmd") or []) or [""])[0]
        env.update({
            "AWS_LAMBDA_FUNCTION_NAME": fn.name,
            "AWS_LAMBDA_FUNCTION_VERSION": fn.version,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fn.memory),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{fn.name}",
            "AWS_LAMBDA_RUNTIME_API": runtime_api,
            "LAMBDA_TASK_ROOT": fn.taskRoot,
            "LAMBDA_RUNTIME_DIR": LAMBDA_RUNTIME_DIR,
            "_HANDLER": handler or (command[-1] if command else ""),
        })
        if log_stream:
            env["AWS_LAMBDA_LOG_STREAM_NAME"] = log_stream
        return env
