"""Scaling benchmarks (`make bench-scaling`):

1. Burst: 200 concurrent calls to a function that sleeps 100 ms, `maxInstances: 16`, starting
   from one warm instance (each round waits until the function has scaled back in). Ideal time:
   200 / 16 x 100 ms = 1.25 s; printed with the ratio to it (the target is under 2x).
2. Workers: a CPU-heavy function (about 20 ms of hashing per call) with one worker process and
   with two (`workers: 2`, one instance each), and hello with one and two workers, measured with
   wrk; the ratio says what the second worker process adds.

    .venv/bin/python bench/scaling.py [--rounds 3] [--duration 5]
"""
from __future__ import annotations

import argparse
import http.client
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from common import HELLO, copy_function, free_port, start_host, stop, wait_http, wrk
from startup import function_state

SLEEPER = """exports.handler = async () => {
  await new Promise((r) => setTimeout(r, 100));
  return { pid: process.pid };
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


def burst_once(port: int, name: str) -> tuple[float, int, int]:
    """Seconds for BURST concurrent calls, the instances that served them, failures."""
    barrier = threading.Barrier(BURST + 1)
    pids, failures, lock = set(), [0], threading.Lock()

    def call():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.connect()
        barrier.wait()
        conn.request("GET", f"/functions/{name}")
        resp = conn.getresponse()
        body = resp.read()
        with lock:
            if resp.status == 200:
                pids.add(body)
            else:
                failures[0] += 1

    threads = [threading.Thread(target=call) for _ in range(BURST)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - start, len(pids), failures[0]


def wait_instances(port: int, name: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while function_state(port, name).get("instances") != count:
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} did not get to {count} instance(s)")
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk (or `make bench-scaling`)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="sora-bench-scaling-") as tmp:
        tmp = Path(tmp)
        functions = [
            function_dir(tmp, "burst", SLEEPER, minInstances=1, maxInstances=MAX_INSTANCES,
                         idleTimeout=1, maxQueued=1000),
            function_dir(tmp, "cpu-1w", HASHER, instances=1, timeout=30),
            function_dir(tmp, "cpu-2w", HASHER, instances=1, workers=2, timeout=30),
            copy_function(HELLO, tmp, name="hello-1w", instances=1),
            copy_function(HELLO, tmp, name="hello-2w", instances=1, workers=2),
        ]
        host = start_host(tmp, port, 2, functions)
        try:
            wait_http(f"http://127.0.0.1:{port}/functions/hello-2w", timeout=120)
            ideal = BURST / MAX_INSTANCES * SLEEP_MS / 1000
            print(f"burst: {BURST} concurrent calls, {SLEEP_MS} ms each, maxInstances "
                  f"{MAX_INSTANCES}; ideal {ideal:.2f} s", flush=True)
            times = []
            for i in range(args.rounds):
                wait_instances(port, "burst", 1)
                took, instances, failures = burst_once(port, "burst")
                times.append(took)
                print(f"  round {i + 1}: {took:.2f} s ({took / ideal:.2f}x ideal), "
                      f"{instances} instances, {failures} failed", flush=True)
            burst_median = statistics.median(times)
            rates: dict[str, list[float]] = {}
            targets = {"cpu-1w": 8, "cpu-2w": 8, "hello-1w": 64, "hello-2w": 64}
            for url_name, conns in targets.items():
                wrk(f"http://127.0.0.1:{port}/functions/{url_name}", conns, 2, 2)  # warm-up
            for i in range(args.rounds):
                for url_name, conns in targets.items():
                    result = wrk(f"http://127.0.0.1:{port}/functions/{url_name}", conns,
                                 args.duration, 2)
                    rates.setdefault(url_name, []).append(result["rps"])
                    print(f"  {url_name:<9} c={conns:<3} {result['rps']:>8.0f} req/s  "
                          f"p50 {result['p50_ms']:.2f} ms  errors {result['non_2xx']}",
                          flush=True)
        finally:
            stop(host)
    med = {name: statistics.median(values) for name, values in rates.items()}
    print(f"\nmedians over {args.rounds} round(s):\n")
    print("| measurement | 1 worker | 2 workers | ratio |\n|---|---|---|---|")
    for kind in ("cpu", "hello"):
        one, two = med[f"{kind}-1w"], med[f"{kind}-2w"]
        print(f"| {kind} req/s | {one:,.0f} | {two:,.0f} | {two / one:.2f}x |")
    print(f"\nburst of {BURST} x {SLEEP_MS} ms, maxInstances {MAX_INSTANCES}: "
          f"{burst_median:.2f} s = {burst_median / ideal:.2f}x the ideal {ideal:.2f} s "
          f"(target < 2x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
