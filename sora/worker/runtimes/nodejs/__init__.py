"""Node.js: `bootstrap.cjs` beside this file loads the user's module once per instance."""
from __future__ import annotations

import os
import shutil

from ....config import FunctionConfig
from ..base import Runtime

BOOTSTRAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bootstrap.cjs")


def node_binary() -> str:
    """The node executable: $SORA_NODE, else the one on PATH."""
    path = os.environ.get("SORA_NODE") or shutil.which("node")
    if not path:
        raise RuntimeError("node was not found on PATH (install Node.js 18 or newer, or set "
                           "SORA_NODE to its path)")
    return path


class NodeRuntime(Runtime):
    name = "nodejs"

    def argv(self, fn: FunctionConfig) -> list[str]:
        # The heap limit follows the function's memory so a leak ends in a clear crash rather
        # than in the host swapping.
        return [node_binary(), f"--max-old-space-size={fn.memory}", BOOTSTRAP]

    def environment(self, fn: FunctionConfig) -> dict[str, str]:
        env = super().environment(fn)
        env["SORA_ENTRYPOINT"] = fn.entrypoint_path
        env["_HANDLER_EXPORT"] = fn.handler
        env["NODE_ENV"] = fn.env.get("NODE_ENV", "production")
        return env
