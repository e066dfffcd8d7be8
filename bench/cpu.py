"""CPU per request of each Sora process, for the hello function under wrk (concurrency 64, or
--connections).

Where bench/run.py times the whole chain, this splits its cost: gunicorn gateways, the
supervisor (broker), the function's worker, Node, and the recorder, which is the whole cost of
invocation records (workers only hand it a formatted line per invocation). CPU time is less
noisy than throughput on a shared machine. Run with

    .venv/bin/python bench/cpu.py [--duration 8] [--rounds 3] [--connections 64]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import urllib.request
from pathlib import Path

import psutil

from sora.config import default_gateway_workers

from common import free_port, start_sora, stop, wait_http, wrk


def role(proc: psutil.Process, supervisor: int, worker: int) -> str:
    if proc.pid == supervisor:
        return "supervisor"
    if proc.pid == worker:
        return "worker"
    cmd = " ".join(proc.cmdline())
    if "sora.store.recorder" in cmd:
        return "recorder"
    if "gunicorn" in cmd:
        return "gateway"
    return "node" if "node" in proc.name() else proc.name()


def cpu_by_role(procs: list[psutil.Process], supervisor: int, worker: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for proc in procs:
        try:
            times = proc.cpu_times()
            name = role(proc, supervisor, worker)
        except psutil.Error:
            continue
        out[name] = out.get(name, 0.0) + times.user + times.system
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64,
                        help="wrk connections (1: the serial cost behind the c=1 latency)")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="sora-bench-cpu-") as tmp:
        proc = start_sora(Path(tmp), port, default_gateway_workers(), 1)
        try:
            url = f"http://127.0.0.1:{port}/functions/hello"
            wait_http(url)
            wrk(url, 64, 3, 2)  # warm-up
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as r:
                worker = json.load(r)["functions"]["hello"]["pid"]
            procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(True)]
            for i in range(args.rounds):
                before = cpu_by_role(procs, proc.pid, worker)
                result = wrk(url, args.connections, args.duration,
                             min(2, args.connections))
                after = cpu_by_role(procs, proc.pid, worker)
                requests = result["rps"] * args.duration
                parts = {k: 1e6 * (after[k] - before.get(k, 0.0)) / requests for k in after}
                print(f"round {i + 1}: {result['rps']:.0f} req/s; µs of CPU per request: "
                      + "  ".join(f"{k} {v:.0f}" for k, v in sorted(parts.items()))
                      + f"  total {sum(parts.values()):.0f}", flush=True)
        finally:
            stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
