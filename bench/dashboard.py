"""Benchmark: the dashboard's page loads and /api/stats on a host with 50 functions and
100,000 invocation records spread over the last day.

The records (and two log lines each) are written into the host's store before it starts,
through sora.store.records.commit, the recorder's own write, in its batches. Then, over one
keep-alive connection, each page is loaded `--loads` times (20) and its p50 and max reported:

    GET /ui/                              every function with its last hour's figures
    GET /ui/functions/NAME?range=hour     charts over the hour, the last 50 invocations
    GET /ui/functions/NAME?range=day      charts over the day
    GET /ui/invocations/ID                one record with its log lines (a different ID each)
    GET /api/stats (window hour and day)  what `sora top` reads

and, for reference, sora.store.stats' queries timed in this process on the same store (wall
and CPU time: the machine's load moves the first, much less the second). The load average is
printed before and after.

    .venv/bin/python bench/dashboard.py [--functions 50] [--records 100000] [--loads 20]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from sora.store import db, records, stats

from common import HELLO, copy_function, free_port, start_host, stop

DAY = 86400
BATCH = 5000


def seed(state_dir: str, names: list[str], count: int, now: float) -> list[str]:
    """`count` records over the last day, round-robin over `names`, with two log lines each;
    returns a sample of their request ids."""
    rng = random.Random(19)
    conn = db.connect(state_dir)
    ids = []
    started = time.perf_counter()
    for first in range(0, count, BATCH):
        rows, lines = [], []
        for i in range(first, min(first + BATCH, count)):
            name = names[i % len(names)]
            request_id = f"bench-{i:07d}-{rng.getrandbits(48):012x}"
            start = now - rng.random() * DAY
            status = rng.choices(("ok", "error", "timeout", "crashed"), (94, 4, 1.5, 0.5))[0]
            cold = rng.random() < 0.02
            duration = rng.lognormvariate(2.5, 0.8) + (150 if cold else 0)
            rows.append((request_id, name, "$LATEST", rng.choice(("http", "http", "event")),
                         start, duration, status, None if status == "ok" else "Error", int(cold),
                         None if status == "ok" else "something failed", 64,
                         120.0 if cold else None))
            lines.append((name, request_id, start, "stdout", f"handling {request_id}"))
            lines.append((name, request_id, start + duration / 1000, "stderr",
                           f"done in {duration:.1f} ms <b>not markup</b>"))
            if i % 5000 == 0:
                ids.append(request_id)
        records.commit(conn, rows, lines)
    conn.close()
    print(f"seeded {count} records ({2 * count} log lines) in "
          f"{time.perf_counter() - started:.1f}s", flush=True)
    return ids


def wait_running(port: int, count: int, proc, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    running = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the host exited while starting")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            health = json.loads(conn.getresponse().read())
            conn.close()
            running = sum(f.get("state") == "RUNNING" for f in health["functions"].values())
            if running >= count:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"only {running} of {count} functions RUNNING after {timeout}s")


class Client:
    """One keep-alive connection, with the dashboard's session cookie once it has one."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cookie = None

    def get(self, path: str) -> tuple[int, bytes, float]:
        headers = {"Cookie": self.cookie} if self.cookie else {}
        started = time.perf_counter()
        self.conn.request("GET", path, headers=headers)
        resp = self.conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - started
        cookie = resp.getheader("Set-Cookie")
        if cookie:
            self.cookie = cookie.split(";", 1)[0]
        return resp.status, body, elapsed


def timed(client: Client, name: str, paths: list[str], check=None) -> dict:
    client.get(paths[0])   # warm-up: templates compiled, connections opened
    times, size = [], 0
    for path in paths:
        status, body, elapsed = client.get(path)
        if status != 200:
            raise SystemExit(f"{name}: GET {path} answered {status}: {body[:300]!r}")
        if check is not None:
            check(body)
        times.append(elapsed * 1000)
        size = len(body)
    times.sort()
    row = {"what": name, "p50_ms": round(times[len(times) // 2], 1),
           "max_ms": round(times[-1], 1), "bytes": size, "loads": len(times)}
    print(f"  {name:<34} p50 {row['p50_ms']:>7.1f} ms   max {row['max_ms']:>7.1f} ms   "
          f"{size:>8} bytes", flush=True)
    return row


def query_times(state_dir: str, name: str, loads: int) -> list[dict]:
    conn = db.connect(state_dir)
    now = time.time()
    cases = {"stats.summary(hour)": lambda: stats.summary(conn, now - 3600, now),
             "stats.summary(day)": lambda: stats.summary(conn, now - DAY, now),
             "stats.series(hour, 60)": lambda: stats.series(conn, name, now - 3600, now, 60),
             "stats.series(day, 96)": lambda: stats.series(conn, name, now - DAY, now, 96)}
    rows = []
    for label, run in cases.items():
        run()
        times, cpu = [], []
        for _ in range(loads):
            started, used = time.perf_counter(), time.process_time()
            run()
            times.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - used) * 1000)
        times.sort()
        cpu.sort()
        rows.append({"what": label, "p50_ms": round(times[len(times) // 2], 1),
                     "max_ms": round(times[-1], 1), "cpu_p50_ms": round(cpu[len(cpu) // 2], 1),
                     "loads": loads})
        # CPU time beside the wall time: what the query costs whatever else the machine runs.
        print(f"  {label:<34} p50 {rows[-1]['p50_ms']:>7.1f} ms   max "
              f"{rows[-1]['max_ms']:>7.1f} ms   cpu p50 {rows[-1]['cpu_p50_ms']:>6.1f} ms",
              flush=True)
    conn.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--functions", type=int, default=50)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--loads", type=int, default=20, help="loads of each page")
    parser.add_argument("--gateway-workers", type=int, default=1)
    args = parser.parse_args()
    print(f"dashboard page loads: {args.functions} functions, {args.records} records over the "
          f"last day, {args.loads} loads each, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="sora-bench-dashboard-") as tmp_name:
        tmp = Path(tmp_name)
        names = [f"fn-{i:02d}" for i in range(args.functions)]
        # No idle instances: 50 functions' workers, not 50 Node processes, on a small machine;
        # the pages read the store and the supervisor's status, not the instances.
        dirs = [copy_function(HELLO, tmp / "fns", name=name, minInstances=0) for name in names]
        state = str(tmp / "state")
        ids = seed(state, names, args.records, time.time())
        port = free_port()
        # Records kept as seeded: the defaults keep 10,000 per function for 7 days.
        host = start_host(tmp, port, args.gateway_workers, dirs)
        results = []
        try:
            started = time.monotonic()
            wait_running(port, args.functions, host)
            print(f"host up with {args.functions} functions in "
                  f"{time.monotonic() - started:.1f}s", flush=True)
            client = Client(port)
            status, body, _ = client.get("/ui/")
            dashboard = status == 200
            if dashboard:
                def all_rows(page: bytes) -> None:
                    shown = page.count(b"data-function=")
                    if shown < args.functions:
                        raise SystemExit(f"/ui/ shows {shown} functions")
                one = names[len(names) // 3]
                loads = args.loads
                results.append(timed(client, "GET /ui/", ["/ui/"] * loads, all_rows))
                results.append(timed(client, "GET /ui/functions/NAME?range=hour",
                                     [f"/ui/functions/{one}?range=hour"] * loads))
                results.append(timed(client, "GET /ui/functions/NAME?range=day",
                                     [f"/ui/functions/{one}?range=day"] * loads))
                picks = [ids[i % len(ids)] for i in range(loads)]
                results.append(timed(client, "GET /ui/invocations/ID",
                                     [f"/ui/invocations/{i}" for i in picks]))
            else:
                print(f"  (no dashboard on this branch: GET /ui/ answered {status})")
            results.append(timed(client, "GET /api/stats?window=3600",
                                 ["/api/stats?window=3600"] * args.loads))
            results.append(timed(client, "GET /api/stats?window=86400",
                                 ["/api/stats?window=86400"] * args.loads))
        finally:
            stop(host)
        print("queries in this process, same store:", flush=True)
        results += query_times(state, names[len(names) // 3], args.loads)
    print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
    print(json.dumps({"functions": args.functions, "records": args.records,
                      "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
