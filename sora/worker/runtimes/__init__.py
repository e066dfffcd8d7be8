"""Runtimes: what differs between languages (the command and environment of an instance).

Everything else — spawning, the control fd protocol, timeouts, crashes, logs — is shared by all
runtimes in `sora.worker.instance`.
"""
from __future__ import annotations

from .base import Runtime
from .nodejs import NodeRuntime

RUNTIMES: dict[str, type[Runtime]] = {"nodejs": NodeRuntime}


def runtime_for(language: str) -> Runtime:
    return RUNTIMES[language]()
