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

    .venv/bin/python bench/metrics.py [--rounds 8] [--duration 5] [--gateway-workers N]
                                      [--instances 2] [--baseline REV]

Besides the medians it prints each round's on/off throughput ratio (min, median, max: the
spread the medians come with), and the attribution that load moves least: CPU per request of
every role of each host (gateway master and workers, recorder, dispatcher, triggers,
supervisor, the function's worker, its runtimes), from psutil's cpu_times around each
measurement (bench/roles.py). `--baseline REV` adds a third host, metrics on, running the
code of another git revision (bench/common.py export_revision): before and after a change,
measured in the same rounds.
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

from common import (HELLO, copy_function, export_revision, free_port, measure, median,
                    start_host, stop, wait_http, wrk)
from roles import ROLES, cpu_by_pid, cpu_spent

ON, OFF = "on", "off"
BATCH = 50   # records per commit, for the in-process figure


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
    # A commit under load holds many records: counted per series and batch, not per record.
    batch = [record] * BATCH
    batch_us = min(per_call_us(lambda: metrics.count_records(batch), n // 4 // BATCH)
                   for _ in range(3)) / BATCH
    return {"wrapper_us": counted_us - bare_us, "record_us": record_us, "batch_us": batch_us}


def alternating_rounds(urls: dict[str, str], roots: dict[str, int], rounds: int,
                       duration: int) -> tuple[dict, dict]:
    """Warm every host up, then measure them in rounds whose order rotates (on, off; off,
    on; ...): whichever goes first in a round is not always the same host. Around each
    c=64 run, the CPU seconds each role of that host spent (bench/roles.py): at c=1 a
    request costs more CPU than at 64 (fewer are batched per wake-up), so a figure over both
    would move with the share of c=1 requests, i.e. with the c=64 throughput."""
    results: dict[str, list[dict]] = {name: [] for name in urls}
    cpu: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
    for url in urls.values():
        wait_http(url)
        wrk(url, 64, 3, 2)   # warm-up: JIT; the worker learns the function is fast
    names = list(urls)
    for i in range(rounds):
        print(f"round {i + 1}/{rounds}", flush=True)
        shift = i % len(names)
        order = names[shift:] + names[:shift]
        for name in (order if i % 2 == 0 else order[::-1]):
            row = measure(name, urls[name], duration,
                          reading=lambda root=roots[name]: cpu_by_pid(root))
            results[name].append(row)
            cpu[name].append(cpu_spent(*row["readings"]))
    return results, cpu


def cpu_per_request(results: list[dict], cpu: list[dict]) -> dict[str, float]:
    """Microseconds of CPU per request of each role (= ms per 1,000 requests) at c=64: all
    rounds' CPU over all their requests."""
    requests = sum(r["requests_c64"] for r in results)
    out = {role: sum(c.get(role, 0.0) for c in cpu) * 1e6 / requests for role in ROLES}
    out["total"] = sum(out.values())
    return out


def print_cpu_table(results: dict[str, list[dict]], cpu: dict[str, list[dict]]) -> None:
    """Each role's CPU per request, the hosts side by side, and each host against `off`
    (ratio and difference) per role and in total."""
    per = {name: cpu_per_request(results[name], cpu[name]) for name in results}
    others = [name for name in per if name != OFF]
    print("\nCPU ms per 1,000 requests (= us per request) by role at c=64, all rounds")
    print(f"{'role':<16}" + "".join(f" {name:>14}" for name in per) +
          "".join(f" {'/'.join((name, 'off')):>20} {'diff':>7}" for name in others))
    for role in (*ROLES, "total"):
        line = f"{role:<16}" + "".join(f" {per[name][role]:>14.1f}" for name in per)
        for name in others:
            off, value = per[OFF][role], per[name][role]
            ratio = f"{value / off:.3f}" if off > 0.5 else "-"
            line += f" {ratio:>20} {value - off:>+7.1f}"
        print(line)
    for name in others:   # total CPU per request, round by round: its spread
        totals = [cpu_per_request([a], [ca])["total"] / cpu_per_request([b], [cb])["total"]
                  for a, ca, b, cb in zip(results[name], cpu[name], results[OFF], cpu[OFF])]
        print(f"{name}/off total CPU per request by round: "
              + " ".join(f"{r:.3f}" for r in totals)
              + f"  (min {min(totals):.3f}, median {statistics.median(totals):.3f}, "
                f"max {max(totals):.3f})")


def print_round_ratios(results: dict[str, list[dict]]) -> None:
    for name in results:
        if name == OFF:
            continue
        ratios = [a["rps_c64"] / b["rps_c64"] for a, b in zip(results[name], results[OFF])]
        print(f"{name}/off throughput at c=64 per round: "
              + " ".join(f"{r:.3f}" for r in ratios))
        print(f"  min {min(ratios):.3f}, median {statistics.median(ratios):.3f}, "
              f"max {max(ratios):.3f}; lower than off in "
              f"{sum(r < 1 for r in ratios)} of {len(ratios)} rounds")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds (median)")
    parser.add_argument("--gateway-workers", type=int, default=default_gateway_workers())
    parser.add_argument("--instances", type=int, default=2,
                        help="the function's fixed pool of instances on every host (an "
                             "autoscaled pool differs between hosts, and so does its CPU)")
    parser.add_argument("--scrape-interval", type=float, default=5.0,
                        help="seconds between scrapes of /metrics during the rounds (0: none)")
    parser.add_argument("--baseline", metavar="REV",
                        help="a third host, metrics on, running Sora's code at git revision "
                             "REV: before and after a change under the same machine load")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk (or `make bench-metrics`)")
    print(f"hello-world, {args.duration}s per point, {args.rounds} rounds, {os.cpu_count()} "
          f"cores; each host with {args.gateway_workers} gateway worker(s) and "
          f"{args.instances} instance(s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="sora-bench-slots-") as folder:
        cost = counting_cost(folder)
    print(f"counting by itself: {cost['wrapper_us']:.2f} us per request (the gateway's "
          f"wrapper), {cost['record_us']:.2f} us per record committed alone, "
          f"{cost['batch_us']:.2f} us per record in a commit of {BATCH} (the recorder)",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="sora-bench-metrics-") as tmp:
        hosts = {ON: (sys.executable, True), OFF: (sys.executable, False)}
        if args.baseline:
            base = Path(tmp) / "baseline"
            base.mkdir()
            hosts[f"on@{args.baseline}"] = (export_revision(args.baseline, base), True)
        ports = {name: free_port() for name in hosts}
        urls = {name: f"http://127.0.0.1:{port}/functions/hello" for name, port in ports.items()}
        procs = {}
        for name, (python, metrics) in hosts.items():
            folder = Path(tmp) / name.replace(" ", "-").replace("@", "-")
            folder.mkdir()
            procs[name] = start_host(
                folder, ports[name], args.gateway_workers,
                [copy_function(HELLO, folder, instances=args.instances)], python=python,
                extra={"server": {"httpPort": ports[name], "bind": "127.0.0.1",
                                  "gatewayWorkers": args.gateway_workers, "metrics": metrics}})
        scrapers = [Scraper(f"http://127.0.0.1:{ports[name]}/metrics", args.scrape_interval)
                    for name, (_, metrics) in hosts.items()
                    if metrics and args.scrape_interval > 0]
        for scraper in scrapers:
            scraper.start()
        try:
            roots = {name: proc.pid for name, proc in procs.items()}
            results, cpu = alternating_rounds(urls, roots, args.rounds, args.duration)
        finally:
            for scraper in scrapers:   # before the hosts stop: no scrape of a stopping host
                scraper.done.set()
                scraper.join()
            for proc in procs.values():
                stop(proc)
    rows = {name: median(name, results[name]) for name in urls}
    print(f"\n{'':<16} {'req/s c=64':>11} {'p50 c=1 ms':>11} {'p99 c=1 ms':>11} {'errors':>7}")
    for name, row in rows.items():
        print(f"{name:<16} {row['rps_c64']:>11.0f} {row['p50_ms']:>11.3f} "
              f"{row['p99_ms']:>11.3f} {row['errors']:>7}")
    off = rows[OFF]
    for name, row in rows.items():
        if name != OFF:
            print(f"{name}/off (medians): throughput {row['rps_c64'] / off['rps_c64']:.3f}, "
                  f"p50 {row['p50_ms'] / off['p50_ms']:.3f}, "
                  f"p99 {row['p99_ms'] / off['p99_ms']:.3f}")
    print_round_ratios(results)
    print_cpu_table(results, cpu)
    times = [t for scraper in scrapers for t in scraper.times_ms]
    if times:
        print(f"/metrics scrapes during the rounds: {len(times)}, median "
              f"{statistics.median(times):.1f} ms, max {max(times):.1f} ms, failed "
              f"{sum(s.failures for s in scrapers)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
