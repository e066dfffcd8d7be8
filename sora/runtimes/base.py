"""The runtime interface: how to start one instance of a function in a given language."""
from __future__ import annotations

import os
import shutil
import sys

from ..config import HOST_ENV_PASSTHROUGH, ConfigError, FunctionConfig

DEFAULT_REGION = "us-east-1"
# The account every Sora ARN names (functions, schedule rules, the runtimes' context).
ACCOUNT = "000000000000"


class Runtime:
    """One language. An instance is started as `argv()` in the function folder with
    `environment()`; it then speaks the control-fd protocol described in
    `sora.worker.instance` (its fd number is given in SORA_CONTROL_FD)."""

    name = "base"

    def prepare(self, fn: FunctionConfig) -> None:
        """Check, once setup has run, what the instances need (the interpreter, the
        executable); raise ConfigError naming the field otherwise."""

    def argv(self, fn: FunctionConfig) -> list[str]:
        raise NotImplementedError

    def standby(self, fn: FunctionConfig) -> bool:
        """Whether a pre-started process of `argv(fn)` can load this function (its bootstrap
        has a standby mode, and nothing the function sets must be known at process start)."""
        return False

    def environment(self, fn: FunctionConfig) -> dict[str, str]:
        """The Lambda-standard variables plus the function's own `env`; nothing else of the
        host's environment but PATH and HOME."""
        if in_container(fn):   # the image's PATH (set by the instance), not the host's
            env = {"HOME": "/tmp"}
        else:
            env = {key: os.environ[key] for key in HOST_ENV_PASSTHROUGH if key in os.environ}
        env.update({
            "AWS_REGION": DEFAULT_REGION,
            "AWS_DEFAULT_REGION": DEFAULT_REGION,
            "LANG": "C.UTF-8",
            "TZ": ":UTC",
        })
        env.update(fn.env)
        env.update({
            "AWS_LAMBDA_FUNCTION_NAME": fn.name,
            "AWS_LAMBDA_FUNCTION_VERSION": fn.version,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fn.memory),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{fn.name}",
            "AWS_EXECUTION_ENV": f"Sora_{self.name}",
            "LAMBDA_TASK_ROOT": task_root(fn),
            "_HANDLER": f"{os.path.splitext(fn.entrypoint)[0]}.{fn.handler}",
        })
        return env


# Where a container instance finds Sora's runtime shims (sora.containers.spec mounts them).
CONTAINER_RUNTIMES = "/opt/sora/runtimes"
RUNTIMES_DIR = os.path.dirname(os.path.abspath(__file__))


def in_container(fn: FunctionConfig) -> bool:
    """`isolation: container`: the instance runs in a container of the function's image."""
    return fn.containerized


def task_root(fn: FunctionConfig) -> str:
    """The function folder as its code sees it: `taskRoot` in a container, else itself."""
    if in_container(fn):
        return fn.taskRoot
    return fn.directory


def shim_path(fn: FunctionConfig, path: str) -> str:
    """A shim file of Sora's (`path`, on the host) as the instance sees it."""
    if in_container(fn):
        return CONTAINER_RUNTIMES + path[len(RUNTIMES_DIR):]
    return path


def find_interpreter(fn: FunctionConfig, default: str | None, what: str) -> str:
    """The interpreter named by the function's `runtime` (a command on PATH or a path relative
    to the function folder), else `default`. Sora's own virtualenv is never searched, so a
    function cannot pick up Sora's packages by accident."""
    wanted = fn.runtime or default
    found = None
    if wanted and os.sep in wanted:
        path = os.path.join(fn.directory, os.path.expanduser(wanted))
        found = path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    elif wanted:
        own_bin = os.path.join(sys.prefix, "bin") if sys.prefix != sys.base_prefix else None
        search = os.pathsep.join(d for d in os.environ.get("PATH", os.defpath).split(os.pathsep)
                                 if d and os.path.abspath(d) != own_bin)
        found = shutil.which(wanted, path=search)
    if found is None:
        raise ConfigError(fn.source, [
            f"runtime: expected {what}: a command on PATH or an executable path (relative to "
            f"{fn.directory} or absolute), got {wanted!r} (not found)"])
    return os.path.abspath(found)
