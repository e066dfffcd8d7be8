"""Benchmark: what metrics cost on the invocation path (issue 19).

Two Sora hosts in one run, on free loopback ports, serving the same hello function: one with
`server.metrics: true` (the default: every response counted by the gateway's ASGI wrapper,
every record by the recorder), one with `server.metrics: false`. wrk measures them in
alternating rounds (this machine's noise is several percent from run to run, so each figure
is the median over the rounds): p50/p99 at concurrency 1, requests per second at 64. While the
rounds run, /metrics of the host that has it is scraped every `--scrape-interval` seconds, as
Prometheus would (a scrape merges every slot's files and asks the supervisor for its status),
and the scrape's own time is reported. First, in this process, what counting costs by itself
(machine load hardly moves it, unlike the wrk figures): the gateway's ASGI wrapper per request
and the recorder's counting per record, against the multiprocess files of a slot. Run with
`make bench-metrics`, or:

    .venv/bin/python bench/metrics.py [--rounds 6] [--duration 5] [--gateway-workers N]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from sora.config import default_gateway_workers

from common import (HELLO, copy_function, free_port, measure, median, start_host, stop,
                    wait_http, wrk)

ON, OFF = "metrics on", "metrics off"


class Scraper(threading.Thread):
    """GET /metrics every `interval` seconds until stopped; keeps each scrape's time."""

    def __init__(self, url: str, interval: float):
        super().__init__(daemon=True)
        self.url, self.interval = url, interval
        self.times_ms: list[float] = []
        self.failures = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            began = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=10) as r:
                    r.read()
                self.times_ms.append((time.monotonic() - began) * 1000)
            except OSError:
                self.failures += 1


def per_call_us(fn, n: int) -> float:
    began = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - began) / n * 1e6


def counting_cost(folder: str, n: int = 200_000) -> dict:
    """Microseconds per request the gateway's wrapper adds (a bare ASGI app with and without
    CountedApp), and per record the recorder's counting takes, in multiprocess mode."""
    import asyncio

    from sora.gateway.metrics_route import CountedApp
    from sora.metrics import registry

    metrics = registry.start(folder, "bench")

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hi"})

    async def sent(message):
        pass

    scope = {"type": "http", "path": "/functions/hello"}
    counted = CountedApp(app, metrics)

    async def loop(target) -> float:
        began = time.perf_counter()
        for _ in range(n):
            await target(scope, None, sent)
        return (time.perf_counter() - began) / n * 1e6

    bare_us = min(asyncio.run(loop(app)) for _ in range(3))
    counted_us = min(asyncio.run(loop(counted)) for _ in range(3))
    counted.flush()
    record = ("r", "hello", "$LATEST", "http", 0.0, 1.2, "ok", None, 0, None, None, None)
    record_us = min(per_call_us(lambda: metrics.count_records([record]), n // 4)
                    for _ in range(3))
    return {"wrapper_us": counted_us - bare_us, "record_us": record_us}


def alternating_rounds(urls: dict[str, str], rounds: int, duration: int) -> dict:
    """Warm both up, then measure them in rounds whose order alternates (on, off; off, on;
    ...): whichever goes first in a round is not always the same host."""
    results: dict[str, list[dict]] = {name: [] for name in urls}
    for url in urls.values():
        wait_http(url)
        wrk(url, 64, 3, 2)   # warm-up: JIT; the worker learns the function is fast
    names = list(urls)
    for i in range(rounds):
        print(f"round {i + 1}/{rounds}", flush=True)
        for name in (names if i % 2 == 0 else names[::-1]):
            results[name].append(measure(name, urls[name], duration))
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds (median)")
    parser.add_argument("--gateway-workers", type=int, default=default_gateway_workers())
    parser.add_argument("--scrape-interval", type=float, default=5.0,
                        help="seconds between scrapes of /metrics during the rounds (0: none)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk (or `make bench-metrics`)")
    print(f"hello-world, {args.duration}s per point, {args.rounds} rounds, {os.cpu_count()} "
          f"cores; each host with {args.gateway_workers} gateway worker(s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="sora-bench-slots-") as folder:
        cost = counting_cost(folder)
    print(f"counting by itself: {cost['wrapper_us']:.2f} us per request (the gateway's "
          f"wrapper), {cost['record_us']:.2f} us per record (the recorder)", flush=True)
    ports = {ON: free_port(), OFF: free_port()}
    urls = {name: f"http://127.0.0.1:{port}/functions/hello" for name, port in ports.items()}
    with tempfile.TemporaryDirectory(prefix="sora-bench-metrics-") as tmp:
        procs = []
        for name, port in ports.items():
            folder = Path(tmp) / name.replace(" ", "-")
            folder.mkdir()
            procs.append(start_host(folder, port, args.gateway_workers,
                                    [copy_function(HELLO, folder)],
                                    extra={"server": {"httpPort": port, "bind": "127.0.0.1",
                                                      "gatewayWorkers": args.gateway_workers,
                                                      "metrics": name == ON}}))
        scraper = None
        if args.scrape_interval > 0:
            scraper = Scraper(f"http://127.0.0.1:{ports[ON]}/metrics", args.scrape_interval)
            scraper.start()
        try:
            results = alternating_rounds(urls, args.rounds, args.duration)
        finally:
            if scraper is not None:   # before the hosts stop: no scrape of a stopping host
                scraper.done.set()
                scraper.join()
            for proc in procs:
                stop(proc)
    rows = {name: median(name, results[name]) for name in urls}
    print(f"\n{'':<12} {'req/s c=64':>11} {'p50 c=1 ms':>11} {'p99 c=1 ms':>11} {'errors':>7}")
    for name, row in rows.items():
        print(f"{name:<12} {row['rps_c64']:>11.0f} {row['p50_ms']:>11.3f} "
              f"{row['p99_ms']:>11.3f} {row['errors']:>7}")
    on, off = rows[ON], rows[OFF]
    print(f"on/off: throughput {on['rps_c64'] / off['rps_c64']:.3f}, "
          f"p50 {on['p50_ms'] / off['p50_ms']:.3f}, p99 {on['p99_ms'] / off['p99_ms']:.3f}")
    if scraper is not None and scraper.times_ms:
        print(f"/metrics scrapes during the rounds: {len(scraper.times_ms)}, median "
              f"{statistics.median(scraper.times_ms):.1f} ms, max "
              f"{max(scraper.times_ms):.1f} ms, failed {scraper.failures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
