"""CPU per request of each Sora process, for the hello function under wrk (concurrency 64, or
--connections).

Where bench/run.py times the whole chain, this splits its cost: gunicorn gateways, the
supervisor, the function's worker, Node, and the recorder, which is the whole cost of
invocation records (workers only hand it a formatted line per invocation). Since issue 16 the
supervisor is off the data path (gateways send each call straight to a worker; its control
plane does no per-call work), so its figure must be ~0; before, its broker thread spent ~45 µs
per call. CPU time is less noisy than throughput on a shared machine. Run with

    .venv/bin/python bench/cpu.py [--duration 8] [--rounds 3] [--connections 64]
                                  [--baseline REV]

`--baseline REV` measures Sora's code at git revision REV as well, in alternating rounds
(before and after a change under the same machine load).
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

from common import (HELLO, copy_function, export_revision, free_port, start_host, stop, wait_http,
                    wrk)


def role(proc: psutil.Process, supervisor: int, worker: int) -> str:
    if proc.pid == supervisor:
        return "supervisor"
    if proc.pid == worker:
        return "worker"
    cmd = " ".join(proc.cmdline())
    if "sora.store.recorder" in cmd:
        return "recorder"
    if "sora.events.dispatcher" in cmd:
        return "dispatcher"
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


class Host:
    def __init__(self, label: str, tmp: Path, python: str):
        self.label = label
        self.port = free_port()
        self.proc = start_host(tmp, self.port, default_gateway_workers(),
                               [copy_function(HELLO, tmp, instances=1)], python=python)
        self.url = f"http://127.0.0.1:{self.port}/functions/hello"

    def ready(self) -> None:
        wait_http(self.url)
        wrk(self.url, 64, 3, 2)  # warm-up
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz") as r:
            self.worker = json.load(r)["functions"]["hello"]["pid"]
        root = psutil.Process(self.proc.pid)
        self.procs = [root, *root.children(True)]

    def round(self, connections: int, duration: int) -> str:
        before = cpu_by_role(self.procs, self.proc.pid, self.worker)
        result = wrk(self.url, connections, duration, min(2, connections))
        after = cpu_by_role(self.procs, self.proc.pid, self.worker)
        requests = result["rps"] * duration
        parts = {k: 1e6 * (after[k] - before.get(k, 0.0)) / requests for k in after}
        return (f"{self.label}: {result['rps']:.0f} req/s; µs of CPU per request: "
                + "  ".join(f"{k} {v:.0f}" for k, v in sorted(parts.items()))
                + f"  total {sum(parts.values()):.0f}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64,
                        help="wrk connections (1: the serial cost behind the c=1 latency)")
    parser.add_argument("--baseline", metavar="REV",
                        help="also measure Sora at this git revision, in alternating rounds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sora-bench-cpu-") as tmp:
        hosts = []
        try:
            (Path(tmp) / "current").mkdir()
            hosts.append(Host("current", Path(tmp) / "current", sys.executable))
            if args.baseline:
                (Path(tmp) / "baseline").mkdir()
                python = export_revision(args.baseline, Path(tmp) / "baseline-code")
                hosts.append(Host(args.baseline, Path(tmp) / "baseline", python))
            for host in hosts:
                host.ready()
            for i in range(args.rounds):
                for host in hosts:
                    print(f"round {i + 1}: {host.round(args.connections, args.duration)}",
                          flush=True)
        finally:
            for host in hosts:
                stop(host.proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
