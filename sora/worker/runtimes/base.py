"""The runtime interface: how to start one instance of a function in a given language."""
from __future__ import annotations

import os

from ...config import HOST_ENV_PASSTHROUGH, FunctionConfig

DEFAULT_REGION = "us-east-1"


class Runtime:
    """One language. An instance is started as `argv()` in the function folder with
    `environment()`; it then speaks the control-fd protocol described in
    `sora.worker.instance` (its fd number is given in SORA_CONTROL_FD)."""

    name = "base"

    def argv(self, fn: FunctionConfig) -> list[str]:
        raise NotImplementedError

    def environment(self, fn: FunctionConfig) -> dict[str, str]:
        """The Lambda-standard variables plus the function's own `env`; nothing else of the
        host's environment but PATH and HOME."""
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
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fn.memory),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{fn.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"sora/{fn.name}",
            "AWS_EXECUTION_ENV": f"Sora_{self.name}",
            "LAMBDA_TASK_ROOT": fn.directory,
            "_HANDLER": f"{os.path.splitext(fn.entrypoint)[0]}.{fn.handler}",
        })
        return env
