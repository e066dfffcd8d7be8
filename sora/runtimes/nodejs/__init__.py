"""Node.js: `bootstrap.cjs` beside this file loads the user's module once per instance."""
from __future__ import annotations

import os

from ...config import FunctionConfig
from ..base import Runtime, find_interpreter, in_container, shim_path, task_root

BOOTSTRAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bootstrap.cjs")


class NodeRuntime(Runtime):
    name = "nodejs"

    def __init__(self) -> None:
        self.node = ""

    def prepare(self, fn: FunctionConfig) -> None:
        if in_container(fn):   # the image's: a command on its PATH, or a path inside it
            self.node = fn.runtime or "node"
            return
        self.node = find_interpreter(fn, os.environ.get("SORA_NODE") or "node",
                                     "a Node.js 18 or newer executable")

    def argv(self, fn: FunctionConfig) -> list[str]:
        # The heap limit follows the function's memory so a leak ends in a clear crash rather
        # than in the host swapping.
        return [self.node, f"--max-old-space-size={fn.memory}", shim_path(fn, BOOTSTRAP)]

    def standby(self, fn: FunctionConfig) -> bool:
        # NODE_OPTIONS is read when Node starts; a function that sets it starts its own.
        return "NODE_OPTIONS" not in fn.env

    def environment(self, fn: FunctionConfig) -> dict[str, str]:
        env = super().environment(fn)
        env["SORA_ENTRYPOINT"] = os.path.join(task_root(fn), fn.entrypoint)
        env["_HANDLER_EXPORT"] = fn.handler
        env["NODE_ENV"] = fn.env.get("NODE_ENV", "production")
        return env
