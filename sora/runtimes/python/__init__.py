"""Python: `bootstrap.py` beside this file imports the user's module once per instance.

The shim runs on the function's interpreter (`runtime`), by default the base interpreter of
the Python that runs Sora: the function sees the standard library, the packages of that
interpreter or of the virtualenv it names, and its own folder first on `sys.path` (where
`pip install -t .` puts its dependencies), never Sora's virtualenv.
"""
from __future__ import annotations

import os
import sys

from ...config import FunctionConfig
from ..base import Runtime, find_interpreter, in_container, shim_path

BOOTSTRAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bootstrap.py")


def default_python() -> str:
    return getattr(sys, "_base_executable", None) or sys.executable


class PythonRuntime(Runtime):
    name = "python"

    def __init__(self) -> None:
        self.python = ""

    def prepare(self, fn: FunctionConfig) -> None:
        if in_container(fn):   # the image's: a command on its PATH, or a path inside it
            self.python = fn.runtime or "python3"
            return
        self.python = find_interpreter(fn, default_python(), "a Python 3.8 or newer interpreter")

    def argv(self, fn: FunctionConfig) -> list[str]:
        # -s: no user site-packages (a host's ~/.local must not change what a function sees).
        return [self.python, "-s", shim_path(fn, BOOTSTRAP)]

    def standby(self, fn: FunctionConfig) -> bool:
        # Only in a container, where every instance starts this way (sora.containers.spares):
        # the pool's pre-started runtimes are Node's. PYTHON* variables are read at start,
        # so the container's own environment has the function's (ContainerInstance).
        return in_container(fn)

    def environment(self, fn: FunctionConfig) -> dict[str, str]:
        env = super().environment(fn)
        env["SORA_ENTRYPOINT"] = fn.entrypoint
        env["_HANDLER_EXPORT"] = fn.handler
        # UTF-8 whatever the host's locale (Lambda's runtimes run in C.UTF-8 too).
        env.setdefault("PYTHONUTF8", "1")
        return env
