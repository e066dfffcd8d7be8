"""Benchmark: asynchronous (`Event`) invocations through the Lambda Invoke API.

Side by side in one run, on free loopback ports, with wrk POSTing `{}` to
`/2015-03-31/functions/<name>/invocations`:
  - Sora, `X-Amz-Invocation-Type: Event`: the 202 after a durable (synchronous=FULL) commit;
  - Sora, `RequestResponse`: the same function called synchronously, for reference;
  - serverless-offline, `Event`: its 202 (it keeps events in memory only);
at concurrency 1 (p50/p99) and 64 (requests/s), medians over alternating rounds, with ratios.
Then the rate at which Sora's dispatcher runs the backlog the rounds left to completion
(acknowledged and purged), with the function's `instances` and `maxConcurrency` at 2.

    .venv/bin/python bench/events.py [--rounds 3] [--duration 5]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from sora.config import default_gateway_workers

from common import (HELLO, copy_function, free_port, median, start_host, start_peer, stop,
                    wait_http, wrk)

LUA = """wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Amz-Invocation-Type"] = "%s"
"""


def lua(tmp: Path, kind: str) -> str:
    path = tmp / f"{kind}.lua"
    path.write_text(LUA % kind)
    return str(path)


def events_left(url: str) -> int:
    with urllib.request.urlopen(url + "/api/functions", timeout=10) as r:
        fn = next(f for f in json.load(r)["functions"] if f["name"] == "hello")
    return fn["events"]["queued"] + fn["events"]["leased"]


def drain(url: str, timeout: float = 900) -> tuple[float, int]:
    """Time the dispatcher running the backlog the rounds queued: (events/s, events)."""
    start, backlog = time.monotonic(), events_left(url)
    deadline = start + timeout
    while (left := events_left(url)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if left:
        raise SystemExit(f"{url}: {left} events still queued after {timeout:.0f} s")
    return backlog / max(time.monotonic() - start, 1e-9), backlog


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--gateway-workers", type=int, default=default_gateway_workers())
    parser.add_argument("--no-peer", dest="peer", action="store_false")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk (or `make bench`)")
    print(f"async invocations, {args.duration}s per point, {os.cpu_count()} cores", flush=True)
    port, peer_port, peer_lambda = free_port(), free_port(), free_port()
    sora = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="sora-bench-events-") as tmp_name:
        tmp = Path(tmp_name)
        fn = copy_function(HELLO, tmp, instances=2)
        host = start_host(tmp, port, args.gateway_workers, [fn])
        peer = start_peer(peer_port, peer_lambda) if args.peer else None
        invoke = "/2015-03-31/functions/{}/invocations"
        targets = {"sora event": (sora + invoke.format("hello"), "Event"),
                   "sora sync": (sora + invoke.format("hello"), "RequestResponse")}
        if peer is not None:
            targets["sls event"] = (f"http://127.0.0.1:{peer_lambda}" +
                                    invoke.format("sora-bench-peer-dev-hello"), "Event")
        wait_http(sora + "/functions/hello")
        if peer is not None:
            wait_http(f"http://127.0.0.1:{peer_port}/hello")
        results: dict[str, list[dict]] = {name: [] for name in targets}
        try:
            for i in range(args.rounds):
                print(f"round {i + 1}/{args.rounds}", flush=True)
                for name, (url, kind) in targets.items():
                    script = lua(tmp, kind)
                    c1 = wrk(url, 1, args.duration, 1, script)
                    c64 = wrk(url, 64, args.duration, 2, script)
                    row = {"target": name, "p50_ms": c1["p50_ms"], "p99_ms": c1["p99_ms"],
                           "rps_c64": c64["rps"], "errors": c1["non_2xx"] + c64["non_2xx"]}
                    print(f"  {name:<11} p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f}"
                          f" ms  {row['rps_c64']:>8.0f} req/s at c=64  errors "
                          f"{row['errors']}", flush=True)
                    results[name].append(row)
            rate, backlog = drain(sora)
        finally:
            for proc in (host, peer):
                if proc is not None:
                    stop(proc)
    rows = {name: median(name, r) for name, r in results.items()}
    print(f"\nmedians over {args.rounds} round(s):")
    for row in rows.values():
        print(f"  {row['target']:<11} p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f} ms  "
              f"{row['rps_c64']:>8.0f} req/s at c=64")
    ev, sync = rows["sora event"], rows["sora sync"]
    print(f"sora event / sora sync: accepted {ev['rps_c64'] / sync['rps_c64']:.2f}x the "
          f"requests/s; p50 {ev['p50_ms']:.3f} vs {sync['p50_ms']:.3f} ms")
    if "sls event" in rows:
        peer_row = rows["sls event"]
        print(f"sora event / serverless-offline event: {ev['rps_c64'] / peer_row['rps_c64']:.2f}x"
              f" requests/s; p50 {ev['p50_ms']:.3f} vs {peer_row['p50_ms']:.3f} ms")
    print(f"the {backlog} events still queued after the rounds ran to completion at "
          f"{rate:.0f} events/s (2 instances, maxConcurrency 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
