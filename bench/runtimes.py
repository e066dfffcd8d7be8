"""Benchmark: warm invocations of each runtime through Sora, against Sora's Node.js runtime, a
plain Node `http` server running the same handler, and serverless-offline (bench/peer/) running
the Node.js and Python handlers.

One Sora host serves a hello-world function per runtime (one instance each):
  nodejs           examples/hello
  python           bench/peer/hello.py, the same file serverless-offline runs
  go (provided)    examples/go-hello, built by its setup
  python-ric       examples/python-ric: AWS's awslambdaric on Sora's Runtime API
  node-ric         examples/node-ric: AWS's aws-lambda-ric (its setup compiles for a minute)
  sh (provided)    examples/shell-bootstrap: two curl processes per invocation
Each is measured with wrk in alternating rounds, as bench/run.py does: p50/p99 at concurrency
1 (the cost of one warm invocation) and requests per second at concurrency 64. Run with

    .venv/bin/python bench/runtimes.py [--rounds 3] [--duration 5] [--skip node-ric,sh]
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

from common import (HELLO, ROOT, copy_function, free_port, median, run_rounds, start_host,
                    start_node, start_peer)

EXAMPLES = ROOT / "examples"
PEER_HELLO_PY = ROOT / "bench" / "peer" / "hello.py"


def python_hello(tmp: Path) -> Path:
    fn = tmp / "python"
    fn.mkdir()
    shutil.copy(PEER_HELLO_PY, fn / "app.py")
    (fn / "sora.yaml").write_text("name: python\nlanguage: python\nentrypoint: app.py\n"
                                  "timeout: 10\nenv:\n  GREETING: Hello\n")
    return fn


def sora_functions(tmp: Path, skip: set[str]) -> dict[str, Path]:
    made = {
        "nodejs": lambda: copy_function(HELLO, tmp, "nodejs"),
        "python": lambda: python_hello(tmp),
        "go": lambda: copy_function(EXAMPLES / "go-hello", tmp, "go"),
        "python-ric": lambda: copy_function(EXAMPLES / "python-ric", tmp),
        "node-ric": lambda: copy_function(EXAMPLES / "node-ric", tmp),
        "sh": lambda: copy_function(EXAMPLES / "shell-bootstrap", tmp, "sh"),
    }
    return {name: make() for name, make in made.items() if name not in skip}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--gateway-workers", type=int, default=default_gateway_workers())
    parser.add_argument("--skip", default="", help="comma-separated runtimes to leave out")
    parser.add_argument("--no-peer", dest="peer", action="store_false",
                        help="skip serverless-offline")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk (or `make bench`)")
    skip = {s for s in args.skip.split(",") if s}
    port, node_port, peer_port = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="sora-bench-runtimes-") as tmp_name:
        tmp = Path(tmp_name)
        functions = sora_functions(tmp, skip)
        urls = {f"sora {name}": f"http://127.0.0.1:{port}/functions/{name}"
                for name in functions}
        urls["plain node"] = f"http://127.0.0.1:{node_port}/"
        procs = {"sora": start_host(tmp, port, args.gateway_workers, list(functions.values())),
                 "plain node": start_node(node_port)}
        if args.peer:
            procs["peer"] = start_peer(peer_port)
            if procs["peer"] is not None:
                urls["sls-offline node"] = f"http://127.0.0.1:{peer_port}/hello"
                urls["sls-offline py"] = f"http://127.0.0.1:{peer_port}/hellopy"
        print(f"warm hello-world per runtime, {args.duration}s per point, {os.cpu_count()} "
              f"cores, one instance per function; setup (Go build, pip, npm) runs first",
              flush=True)
        rounds = run_rounds(urls, list(procs.values()), args.rounds, args.duration,
                            ready_timeout=600)
    rows = {name: median(name, results) for name, results in rounds.items()}
    base = rows["sora nodejs"]
    print(f"\nmedians over {args.rounds} round(s); ratios against Sora's nodejs runtime:")
    print(f"  {'target':<18} {'p50 ms':>8} {'p99 ms':>8} {'req/s c=64':>11} "
          f"{'p50 ×':>7} {'req/s ×':>8}")
    for name, row in rows.items():
        print(f"  {name:<18} {row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f} "
              f"{row['rps_c64']:>11.0f} {row['p50_ms'] / base['p50_ms']:>7.2f} "
              f"{row['rps_c64'] / base['rps_c64']:>8.2f}")
    if "sls-offline py" in rows and "sora python" in rows:
        peer, ours = rows["sls-offline py"], rows["sora python"]
        print(f"sora python / serverless-offline python: {ours['rps_c64'] / peer['rps_c64']:.2f}x "
              f"throughput; p50 {ours['p50_ms']:.3f} vs {peer['p50_ms']:.3f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
