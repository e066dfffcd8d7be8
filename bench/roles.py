"""CPU seconds of a Sora host's processes by role (psutil cpu_times), for per-request costs
that machine load hardly moves: unlike a throughput figure, the CPU a process spends per
request does not drop because another program took the core.

Roles: `supervisor` (the host's root process), `gateway-master` (gunicorn's arbiter),
`gateway-workers`, `recorder`, `dispatcher`, `triggers`, `worker` (the function's worker
process) and `runtimes` (the function's instances, bwrap included).
"""
from __future__ import annotations

import psutil

ROLES = ("gateway-master", "gateway-workers", "recorder", "dispatcher", "triggers",
         "supervisor", "worker", "runtimes")


def role_of(proc: psutil.Process, root: int) -> str:
    if proc.pid == root:
        return "supervisor"
    cmd = " ".join(proc.cmdline())
    if "gunicorn" in cmd:
        return "gateway-master" if proc.ppid() == root else "gateway-workers"
    for module, role in (("sora.store.recorder", "recorder"),
                         ("sora.events.dispatcher", "dispatcher"),
                         ("sora.triggers.service", "triggers"), ("sora.worker", "worker")):
        if f"-m {module}" in cmd:
            return role
    return "runtimes"


def cpu_by_pid(root: int) -> dict[int, tuple[str, float]]:
    """pid -> (role, CPU seconds so far) of the host's whole process tree, read now (the tree
    is walked each time: instances come and go)."""
    out: dict[int, tuple[str, float]] = {}
    try:
        top = psutil.Process(root)
        procs = [top, *top.children(recursive=True)]
    except psutil.Error:
        return out
    for proc in procs:
        try:
            times = proc.cpu_times()
            out[proc.pid] = (role_of(proc, root), times.user + times.system)
        except psutil.Error:
            continue
    return out


def cpu_spent(before: dict[int, tuple[str, float]],
              after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds by role between two readings (a process born between them counts whole;
    one that died between them is lost, which a measurement under steady load hardly sees)."""
    spent = dict.fromkeys(ROLES, 0.0)
    for pid, (role, seconds) in after.items():
        earlier = before.get(pid)
        spent[role] = spent.get(role, 0.0) + seconds - (earlier[1] if earlier else 0.0)
    return spent
