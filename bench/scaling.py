"""Scaling benchmarks (`make bench-scaling`):

1. Burst: 200 concurrent calls to a function that sleeps 100 ms, `maxInstances: 16`, starting
   from one warm instance (each round waits until the function has scaled back in). Ideal time:
   200 / 16 x 100 ms = 1.25 s; printed with the ratio to it (the target is at most 1.4x), and
   how long the calls waited. The first round runs on a host just started, whose pool of
   pre-started runtimes has its configured number; later rounds find it grown to what the
   first scale-out took (sora.runtimes.pool), so the first round is reported apart.
   `--against REV` bursts a host running another git revision too, rounds alternating.
2. Workers: a CPU-heavy function (about 20 ms of hashing per call) with one worker process and
   with two (`workers: 2`, one instance each), and hello with one and two workers, measured with
   wrk; the ratio says what the second worker process adds.

    .venv/bin/python bench/scaling.py [--rounds 3] [--duration 5] [--burst-only]
                                      [--against main] [--keep-log FILE]
"""
from __future__ import annotations

import argparse
import http.client
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import (HELLO, copy_function, export_revision, free_port, start_host, stop,
                    wait_http, wrk)
from startup import function_state

# Each instance answers with its log stream's name, which is its own (a pid is not: every
# sandbox has its own pid namespace).
SLEEPER = """exports.handler = async () => {
  await new Promise((r) => setTimeout(r, 100));
  return { instance: process.env.AWS_LAMBDA_LOG_STREAM_NAME };
};
"""
HASHER = """const crypto = require('crypto');
exports.handler = async () => {
  let h = Buffer.alloc(32);
  for (let i = 0; i < 40000; i++) h = crypto.createHash('sha256').update(h).digest();
  return { pid: process.pid, h: h.toString('hex').slice(0, 8) };
};
"""
BURST, MAX_INSTANCES, SLEEP_MS = 200, 16, 100


def function_dir(tmp: Path, name: str, code: str, **settings) -> Path:
    fn = copy_function(HELLO, tmp, name=name, **settings)
    (fn / "index.js").write_text(code)
    return fn


def burst_once(port: int, name: str) -> tuple[float, int, int, list[float]]:
    """Seconds for BURST concurrent calls, the instances that served them, failures, and each
    call's own seconds (what it waited is that less SLEEP_MS)."""
    barrier = threading.Barrier(BURST + 1)
    instances, failures, took, lock = set(), [0], [], threading.Lock()

    def call():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.connect()
        barrier.wait()
        sent = time.perf_counter()
        conn.request("GET", f"/functions/{name}")
        resp = conn.getresponse()
        body = resp.read()
        with lock:
            took.append(time.perf_counter() - sent)
            if resp.status == 200:
                instances.add(body)
            else:
                failures[0] += 1

    threads = [threading.Thread(target=call) for _ in range(BURST)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - start, len(instances), failures[0], took


def wait_instances(port: int, name: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while function_state(port, name).get("instances") != count:
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} did not get to {count} instance(s)")
        time.sleep(0.1)


def compare_workers(port: int, rounds: int, duration: int) -> dict[str, list[float]]:
    """req/s of each function of the worker comparison, one figure per round."""
    rates: dict[str, list[float]] = {}
    targets = {"cpu-1w": 8, "cpu-2w": 8, "hello-1w": 64, "hello-2w": 64}
    for url_name, conns in targets.items():
        wrk(f"http://127.0.0.1:{port}/functions/{url_name}", conns, 2, 2)  # warm-up
    for _ in range(rounds):
        for url_name, conns in targets.items():
            result = wrk(f"http://127.0.0.1:{port}/functions/{url_name}", conns, duration, 2)
            rates.setdefault(url_name, []).append(result["rps"])
            print(f"  {url_name:<9} c={conns:<3} {result['rps']:>8.0f} req/s  "
                  f"p50 {result['p50_ms']:.2f} ms  errors {result['non_2xx']}", flush=True)
    return rates


def start_burst_host(tmp: Path, python: str = sys.executable) -> tuple[subprocess.Popen, int]:
    """A host with the burst function and the worker comparison's functions; its port."""
    tmp.mkdir()
    port = free_port()
    functions = [
        function_dir(tmp, "burst", SLEEPER, minInstances=1, maxInstances=MAX_INSTANCES,
                     idleTimeout=1, maxQueued=1000),
        function_dir(tmp, "cpu-1w", HASHER, instances=1, timeout=30),
        function_dir(tmp, "cpu-2w", HASHER, instances=1, workers=2, timeout=30),
        copy_function(HELLO, tmp, name="hello-1w", instances=1),
        copy_function(HELLO, tmp, name="hello-2w", instances=1, workers=2),
    ]
    return start_host(tmp, port, 2, functions, python=python), port


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--burst-only", action="store_true",
                        help="only the burst: no worker comparison (wrk is not needed)")
    parser.add_argument("--against", metavar="REVISION",
                        help="also burst a host running this git revision of Sora, its rounds "
                             "alternating with this checkout's (same machine load)")
    parser.add_argument("--keep-log", metavar="FILE",
                        help="copy the host's log (the scale-out timeline) to FILE (and the "
                             "other revision's to FILE.against)")
    args = parser.parse_args()
    if not args.burst_only and not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk (or `make bench-scaling`)")
    rates: dict[str, list[float]] = {}
    ideal = BURST / MAX_INSTANCES * SLEEP_MS / 1000
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="sora-bench-scaling-") as tmp:
        tmp = Path(tmp)
        hosts = {"this checkout": start_burst_host(tmp / "this")}
        try:
            if args.against:
                python = export_revision(args.against, tmp / "against-code")
                hosts[args.against] = start_burst_host(tmp / "against", python)
            for _, port in hosts.values():
                wait_http(f"http://127.0.0.1:{port}/functions/hello-2w", timeout=120)
            print(f"burst: {BURST} concurrent calls, {SLEEP_MS} ms each, maxInstances "
                  f"{MAX_INSTANCES}; ideal {ideal:.2f} s", flush=True)
            for i in range(args.rounds):
                for label, (_, port) in hosts.items():
                    wait_instances(port, "burst", 1)
                    took, instances, failures, calls = burst_once(port, "burst")
                    times.setdefault(label, []).append(took)
                    waited = sorted(max(0.0, c - SLEEP_MS / 1000) for c in calls)
                    print(f"  round {i + 1} ({label}): {took:.2f} s ({took / ideal:.2f}x "
                          f"ideal), {instances} instances, {failures} failed; calls waited "
                          f"{statistics.mean(waited) * 1000:.0f} ms on average, the longest "
                          f"{waited[-1] * 1000:.0f} ms", flush=True)
            if not args.burst_only:
                rates = compare_workers(hosts["this checkout"][1], args.rounds, args.duration)
        finally:
            for proc, _ in hosts.values():
                stop(proc)
            if args.keep_log:
                shutil.copy(tmp / "this" / "supervisor.log", args.keep_log)
                if args.against and (tmp / "against" / "supervisor.log").exists():
                    shutil.copy(tmp / "against" / "supervisor.log", args.keep_log + ".against")
    if rates:
        med = {name: statistics.median(values) for name, values in rates.items()}
        print(f"\nmedians over {args.rounds} round(s):\n")
        print("| measurement | 1 worker | 2 workers | ratio |\n|---|---|---|---|")
        for kind in ("cpu", "hello"):
            one, two = med[f"{kind}-1w"], med[f"{kind}-2w"]
            print(f"| {kind} req/s | {one:,.0f} | {two:,.0f} | {two / one:.2f}x |")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"\nburst of {BURST} x {SLEEP_MS} ms, maxInstances {MAX_INSTANCES} ({label}): "
              f"median {median:.2f} s = {median / ideal:.2f}x the ideal {ideal:.2f} s "
              f"(target <= 1.4x); the first round (the host just started, its pre-started "
              f"runtimes at their configured number): {values[0] / ideal:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
