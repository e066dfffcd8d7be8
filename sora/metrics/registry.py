"""prometheus_client's multiprocess mode, Sora's way: one folder per host, one slot per process.

The supervisor empties `<stateDir>/metrics/` at each host start (`reset`); each process that
counts (the gateway's workers, the recorder, the dispatcher) calls `start(state_dir, role)`
once, which takes its slot (sora.metrics.slots), points prometheus_client's value class at the
slot's files and makes the counters (sora.metrics.definitions). The gateway that serves
/metrics merges every slot's files (`MultiProcessCollector`) with the live figures.

The folder is named to the processes that need it, never through the environment: no
function instance (whose environment descends from its worker's) learns of it.
"""
from __future__ import annotations

import logging
import os
import shutil

from .slots import take_slot

log = logging.getLogger("sora.metrics")

_started: tuple | None = None   # (Slot, SoraMetrics) once start() ran


def metrics_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "metrics")


def reset(state_dir: str) -> None:
    """Empty the folder (the supervisor, before any child starts): counts start at zero with
    the host, as Prometheus expects of a restarted target."""
    directory = metrics_dir(state_dir)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory, mode=0o700, exist_ok=True)


def start(state_dir: str, role: str):
    """This process's SoraMetrics, counting into its slot's files (made once per process; a
    second call returns the same)."""
    global _started
    if _started is not None and _started[0].fd >= 0:
        return _started[1]
    directory = metrics_dir(state_dir)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    slot = take_slot(directory, role)
    # The value class must be chosen before any metric is made; prometheus_client reads the
    # folder from its environment variable when it opens a file (this process's only).
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from prometheus_client import values
    values.ValueClass = values.MultiProcessValue(lambda: slot.name)
    from .definitions import SoraMetrics
    metrics = SoraMetrics()
    _started = (slot, metrics)
    log.debug("metrics: %s counts as %s", role, slot.name)
    return metrics


def current():
    """This process's SoraMetrics, or None where it does not count."""
    return _started[1] if _started is not None else None
