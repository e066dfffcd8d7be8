"""Which processes are Sora's, and their CPU, memory, fds and start time (psutil), for the
process metrics of a scrape.

Named by role: `supervisor` (the pid in run/supervisor.lock), `gateway-http` (a listener's
gunicorn master) and its workers by their metric slot (`gateway-http-0`, ...), `recorder`,
`dispatcher`, `triggers`, `worker-<function>` (`-<n>` for a function's second and later
worker processes). Function instances (the runtimes running a function's code) are not Sora
processes and are left out.
"""
from __future__ import annotations

import os

import psutil

from .. import protocol as p
from .live import ProcessFigures
from .slots import slot_holders

SERVICES = ("recorder", "dispatcher", "triggers")


def _pid(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
        else None


def supervisor_pid(state_dir: str) -> int | None:
    try:
        with open(os.path.join(p.run_dir(state_dir), "supervisor.lock")) as f:
            text = f.read(32).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def sora_processes(status: dict, state_dir: str, metrics_dir: str) -> dict[str, int]:
    """process label -> pid, from the supervisor's status and the metric slots."""
    named: dict[str, int] = {}
    pid = supervisor_pid(state_dir)
    if pid:
        named["supervisor"] = pid
    slots = slot_holders(metrics_dir)
    for listener, info in sorted((status.get("gateways") or {}).items()):
        master = _pid(info.get("pid")) if isinstance(info, dict) else None
        if master is None:
            continue
        named[f"gateway-{listener}"] = master
        try:
            children = psutil.Process(master).children()
        except psutil.Error:
            children = []
        for child in children:
            named[slots.get(child.pid, f"gateway-{listener}-pid{child.pid}")] = child.pid
    for service in SERVICES:
        info = status.get(service)
        if isinstance(info, dict) and (pid := _pid(info.get("pid"))):
            named[service] = pid
    for name, info in sorted((status.get("functions") or {}).items()):
        if not isinstance(info, dict) or info.get("remote"):
            continue
        workers = info.get("workerProcesses") or [info]
        for i, worker in enumerate(workers):
            if isinstance(worker, dict) and (pid := _pid(worker.get("pid"))):
                named[f"worker-{name}" if i == 0 else f"worker-{name}-{i}"] = pid
    return named


def figures(named: dict[str, int]) -> list[ProcessFigures]:
    out = []
    for label, pid in sorted(named.items()):
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                times = proc.cpu_times()
                memory = proc.memory_info().rss
                started = proc.create_time()
                try:
                    fds = proc.num_fds()
                except psutil.AccessDenied:
                    fds = None
        except psutil.Error:
            continue   # gone since the status was taken
        out.append(ProcessFigures(label, times.user + times.system, memory, fds, started))
    return out
