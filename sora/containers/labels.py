"""The labels every container Sora creates carries, and the sweep that removes them.

A container outlives whoever created it (its processes are the engine's, not the worker's
children): a worker killed -9, or the whole host, leaves its containers running. Each one is
labelled with the host it belongs to (a hash of the host's stateDir, so two hosts on one
engine never sweep each other's), the function, the worker's pid and its role, and the
supervisor removes by label what a worker or a host left (engine.remove_containers).
"""
from __future__ import annotations

import hashlib
import os

HOST = "sora.host"
FUNCTION = "sora.function"
WORKER = "sora.worker"
ROLE = "sora.role"
ROLES = ("instance", "setup")


def labels(host_id: str, function: str, worker_pid: int, role: str) -> dict[str, str]:
    """The labels of one container: `role` is "instance" (a function's runtime) or "setup"."""
    if role not in ROLES:
        raise ValueError(f"role: expected one of {', '.join(ROLES)}, got {role!r}")
    return {HOST: host_id, FUNCTION: function, WORKER: str(worker_pid), ROLE: role}


def host_id(state_dir: str) -> str:
    """This host's id on the engine: the same stateDir gives the same id (a host started again
    after a crash finds what it left), another stateDir another id. The stateDir's real path:
    two spellings of one folder are one host (one supervisor per stateDir, by its lock)."""
    real = os.path.realpath(state_dir)
    return hashlib.sha256(real.encode()).hexdigest()[:16]


def selector(host_id: str, worker_pid: int | None = None) -> list[str]:
    """The engine's label filter for a host's containers, or one worker's."""
    wanted = [f"{HOST}={host_id}"]
    if worker_pid is not None:
        wanted.append(f"{WORKER}={worker_pid}")
    return wanted
