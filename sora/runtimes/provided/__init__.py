"""provided: any language, through the AWS Lambda Runtime API.

An instance is `runtime_api.py` beside this file, run on Sora's own Python; it serves the
Runtime API on a loopback port and runs the function's executable (`bootstrap` unless the
function names another entrypoint) with AWS_LAMBDA_RUNTIME_API set, so any Lambda runtime
interface client works unchanged. Only the instance's own processes may use that port
(`runtime_api.py`, `peers.py`).
"""
from __future__ import annotations

import os
import sys

from ...config import ConfigError, FunctionConfig
from ..base import Runtime

RUNTIME_API = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runtime_api.py")


class ProvidedRuntime(Runtime):
    name = "provided"

    def prepare(self, fn: FunctionConfig) -> None:
        # Checked here rather than at load: `setup` may be what builds the executable.
        path = fn.entrypoint_path
        if not os.path.isfile(path):
            problem = "not found"
        elif not os.access(path, os.X_OK):
            problem = "not executable: chmod +x it"
        else:
            return
        raise ConfigError(fn.source, [
            f"entrypoint: expected an executable file in {fn.directory} (built by setup or "
            f"shipped), got {fn.entrypoint!r} ({problem})"])

    def argv(self, fn: FunctionConfig) -> list[str]:
        # -I: the adapter sees Sora's own packages (httptools) and nothing of the function's.
        return [sys.executable, "-I", RUNTIME_API]

    def environment(self, fn: FunctionConfig) -> dict[str, str]:
        env = super().environment(fn)
        env["_HANDLER"] = fn.handler  # passed as written, for the runtime to interpret
        env["SORA_ENTRYPOINT"] = fn.entrypoint_path
        # Which processes are the instance's, for the adapter's check of who connects.
        env["SORA_SANDBOXED"] = "1" if fn.sandboxed else "0"
        return env
