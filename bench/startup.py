"""Cold starts and idle memory, for the one table bench/run.py prints.

Cold start, each a median of several:
  - `node -e ''`: a bare Node process start and exit, the bar a Sora cold start must beat;
  - plain Node: from spawning the plain Node server to its first answer;
  - Sora: one call to a function scaled to zero (`minInstances: 0`), measured by the client,
    once the function has no instance and the runtime pool is refilled;
  - serverless-offline: its first call after it started (it loads the handler then).
Idle memory: the resident memory (RSS) one idle instance costs: for Sora the function's worker
process plus its runtime process; for plain Node its one process; for serverless-offline its
whole process tree (one process serves every function).
"""
from __future__ import annotations

import http.client
import json
import socket
import statistics
import subprocess
import time

import psutil

from common import ROOT, HELLO, free_port, stop


def timed_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def node_bare_ms(samples: int = 10) -> float:
    return statistics.median(timed_ms(lambda: subprocess.run(["node", "-e", ""], check=True))
                             for _ in range(samples))


def first_answer(port: int, path: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.001)
    raise SystemExit(f"no answer on port {port}{path}")


def plain_node_cold_ms(samples: int = 5) -> float:
    def once():
        port = free_port()
        proc = subprocess.Popen(["node", str(ROOT / "bench" / "plain_node_server.js"),
                                 str(port), str(HELLO / "index.js")], start_new_session=True)
        try:
            return timed_ms(lambda: first_answer(port, "/", time.monotonic() + 30))
        finally:
            stop(proc)
    return statistics.median(once() for _ in range(samples))


def function_state(port: int, name: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/healthz")
    return json.loads(conn.getresponse().read())["functions"][name]


def wait_scaled_to_zero(port: int, name: str, timeout: float = 60.0) -> None:
    """Until the function has no instance (its idleTimeout ended the last one)."""
    deadline = time.monotonic() + timeout
    while function_state(port, name).get("instances") != 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} did not scale to zero")
        time.sleep(0.05)


def sora_cold_ms(port: int, name: str, samples: int = 10) -> tuple[float, list[float]]:
    """Median client-side time of a call to a function scaled to zero, and every sample."""
    times = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(samples):
        wait_scaled_to_zero(port, name)
        time.sleep(0.3)  # the pool's replacement process has started by now
        start = time.perf_counter()
        conn.request("GET", f"/functions/{name}")
        resp = conn.getresponse()
        resp.read()
        times.append((time.perf_counter() - start) * 1000)
        if resp.status != 200:
            raise SystemExit(f"cold call to {name} answered {resp.status}")
    return statistics.median(times), times


def peer_cold_ms(port: int, path: str) -> float:
    """serverless-offline's first call after it listens."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    return timed_ms(lambda: first_answer(port, path, time.monotonic() + 60))


def tree_rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / (1 << 20)


def sora_idle_instance_mb(supervisor_pid: int, name: str, function_dir: str) -> float:
    """RSS of the function's worker and its runtime instance(s). An instance taken from the
    runtime pool is the supervisor's child, not the worker's: instances are found by their
    working directory (the function's folder)."""
    worker = None
    runtimes = []
    for proc in psutil.Process(supervisor_pid).children(recursive=True):
        try:
            cmd = proc.cmdline()
            if "sora.worker" in cmd and cmd[cmd.index("--name") + 1] == name:
                worker = proc
            elif proc.cwd() == function_dir:
                runtimes.append(proc)
        except (psutil.Error, ValueError, IndexError):
            continue
    if worker is None or not runtimes:
        raise SystemExit(f"no worker or no instance for {name}")
    return sum(p.memory_info().rss for p in [worker, *runtimes]) / (1 << 20)
