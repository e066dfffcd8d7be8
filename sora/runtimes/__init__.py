"""Runtimes: what differs between languages (the command and environment of an instance).

Everything else — spawning, the line protocol on stdin and the control fd, timeouts, crashes,
logs — is shared by all runtimes in `sora.worker.instance`.
"""
from __future__ import annotations

from .base import Runtime
from .image import ImageRuntime
from .nodejs import NodeRuntime
from .provided import ProvidedRuntime
from .python import PythonRuntime

RUNTIMES: dict[str, type[Runtime]] = {
    "nodejs": NodeRuntime,
    "python": PythonRuntime,
    "provided": ProvidedRuntime,
    "image": ImageRuntime,
}


def runtime_for(language: str) -> Runtime:
    return RUNTIMES[language]()
