"""Benchmark: hello-world through Sora vs the same handler behind a plain Node `http` server,
and on serverless-offline (the usual local Lambda emulator; bench/peer/, installed with npm on
first use, runs offline).

Both run in one invocation of this script, side by side on free loopback ports, measured with
wrk in alternating rounds (this machine's timing noise is several percent from one run to the
next, so each figure is the median over the rounds):
  - concurrency 1: p50 / p99 latency (the overhead Sora adds per invocation)
  - concurrency 64: requests per second (what the whole chain sustains)
and the ratios are printed. Before the warm rounds, the same run measures cold starts (Sora: a
copy of hello with `minInstances: 0`, called once scaled to zero; beside a bare `node -e ''`,
the plain Node server's start to its first answer, and serverless-offline's first call) and the
memory of one idle instance (bench/startup.py says how each is taken). One table holds it all.
Run with `make bench` (installs wrk where missing), or:

    .venv/bin/python bench/run.py [--rounds 3] [--duration 5] [--gateway-workers N]
                                  [--baseline REV]

`--baseline REV` adds a row for Sora's code at git revision REV (hello, sandboxed), run on
this virtualenv beside the current code in the same alternating rounds: a change's cost on the
warm path, before and after, under the same machine load.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from sora.config import default_gateway_workers

from common import (HELLO, copy_function, export_revision, free_port, median, run_rounds,
                    start_host, start_node, start_peer, stop, wait_http)
from startup import (node_bare_ms, peer_cold_ms, plain_node_cold_ms, sora_cold_ms,
                     sora_idle_instance_mb, tree_rss_mb)

BARE = "node -e ''"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--gateway-workers", type=int, default=default_gateway_workers())
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--baseline", metavar="REV",
                        help="also measure Sora at this git revision (warm rows only)")
    parser.add_argument("--no-peer", dest="peer", action="store_false",
                        help="skip serverless-offline")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk (or `make bench`)")
    print(f"hello-world, {args.duration}s per point, {os.cpu_count()} cores; Sora with "
          f"{args.gateway_workers} gateway worker(s), {args.instances} instance(s)", flush=True)
    node_port, port, peer_port = free_port(), free_port(), free_port()
    urls = {"plain node": f"http://127.0.0.1:{node_port}/",
            "sora": f"http://127.0.0.1:{port}/functions/hello",
            "sora, isolation: none": f"http://127.0.0.1:{port}/functions/hello-open",
            "sls-offline": f"http://127.0.0.1:{peer_port}/hello"}
    baseline_name = f"sora @ {args.baseline}"
    if args.baseline:
        baseline_port = free_port()
        urls[baseline_name] = f"http://127.0.0.1:{baseline_port}/functions/hello"
    cold: dict[str, float] = {}
    idle_mb: dict[str, float] = {}
    print("cold starts: node -e '' and the plain Node server...", flush=True)
    cold[BARE] = node_bare_ms()
    cold["plain node"] = plain_node_cold_ms()
    with tempfile.TemporaryDirectory(prefix="sora-bench-") as tmp:
        functions = [copy_function(HELLO, Path(tmp), instances=args.instances),
                     copy_function(HELLO, Path(tmp), name="hello-cold", minInstances=0,
                                   idleTimeout=0.5),
                     # The same two without the sandbox (the default): what it costs.
                     copy_function(HELLO, Path(tmp), name="hello-open",
                                   instances=args.instances, isolation="none"),
                     copy_function(HELLO, Path(tmp), name="hello-open-cold", minInstances=0,
                                   idleTimeout=0.5, isolation="none")]
        procs = {"plain node": start_node(node_port),
                 "sora": start_host(Path(tmp), port, args.gateway_workers, functions),
                 "sls-offline": start_peer(peer_port) if args.peer else None}
        if args.baseline:
            before = Path(tmp) / "baseline"
            procs[baseline_name] = start_host(
                before, baseline_port, args.gateway_workers,
                [copy_function(HELLO, before, instances=args.instances)],
                python=export_revision(args.baseline, before))
        for name, proc in procs.items():
            if proc is None:
                del urls[name]
        try:
            if "sls-offline" in urls:
                cold["sls-offline"] = peer_cold_ms(peer_port, "/hello")
            wait_http(urls["sora"], timeout=120)
            cold["sora"], samples = sora_cold_ms(port, "hello-cold")
            print(f"  sora cold calls (ms): {', '.join(f'{t:.1f}' for t in samples)}")
            cold["sora, isolation: none"], samples = sora_cold_ms(port, "hello-open-cold")
            print(f"  isolation: none cold calls (ms): {', '.join(f'{t:.1f}' for t in samples)}")
            wait_http(urls["plain node"])
            idle_mb["plain node"] = tree_rss_mb(procs["plain node"].pid)
            idle_mb["sora"] = sora_idle_instance_mb(procs["sora"].pid, "hello",
                                                    str(functions[0]))
            if "sls-offline" in urls:
                idle_mb["sls-offline"] = tree_rss_mb(procs["sls-offline"].pid)
        except BaseException:
            for proc in procs.values():
                if proc is not None:
                    stop(proc)
            raise
        rounds = run_rounds(urls, list(procs.values()), args.rounds, args.duration)
    rows = [median(name, results) for name, results in rounds.items()]
    for row in rows:
        row["cold_ms"] = cold.get(row["target"])
        row["idle_mb"] = idle_mb.get(row["target"])
    by_name = {row["target"]: row for row in rows}
    node_row, sora_row = by_name["plain node"], by_name["sora"]
    ratio = sora_row["rps_c64"] / node_row["rps_c64"]
    overhead = sora_row["p50_ms"] - node_row["p50_ms"]
    print(f"\nmedians over {args.rounds} round(s):\n")
    print("| target | req/s (c=64) | p50 (c=1) | p99 (c=1) | cold start | idle instance RSS |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        cold_cell = f"{row['cold_ms']:.1f} ms" if row["cold_ms"] is not None else "—"
        mem_cell = f"{row['idle_mb']:.1f} MB" if row["idle_mb"] is not None else "—"
        print(f"| {row['target']} | {row['rps_c64']:,.0f} | {row['p50_ms']:.3f} ms | "
              f"{row['p99_ms']:.3f} ms | {cold_cell} | {mem_cell} |")
    bare = cold[BARE]
    print(f"| `{BARE}` | | | | {bare:.1f} ms | |\n")
    print(f"sora cold start / `{BARE}`: {cold['sora'] / bare:.2f} ({cold['sora']:.1f} vs "
          f"{bare:.1f} ms)")
    print(f"sora / plain node throughput at c=64: {ratio:.1%}")
    print(f"sora p50 overhead at c=1: {overhead:.3f} ms "
          f"(p99 {sora_row['p99_ms'] - node_row['p99_ms']:+.3f} ms)")
    if baseline_name in by_name:
        before = by_name[baseline_name]
        print(f"sora now / sora @ {args.baseline}: throughput at c=64 "
              f"{sora_row['rps_c64'] / before['rps_c64']:.3f}x; p50 at c=1 "
              f"{sora_row['p50_ms'] - before['p50_ms']:+.3f} ms")
    if "sls-offline" in by_name:
        peer = by_name["sls-offline"]
        print(f"sora / serverless-offline throughput at c=64: "
              f"{sora_row['rps_c64'] / peer['rps_c64']:.2f}x; p50 at c=1: "
              f"{sora_row['p50_ms']:.3f} vs {peer['p50_ms']:.3f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "throughput_ratio": ratio,
                                               "p50_overhead_ms": overhead, "cold_ms": cold},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
