"""Benchmark: the same hello function with `isolation: sandbox` (bubblewrap) and `isolation:
container` (Docker, image sora-test/node20 built on this machine), beside plain Node, in one run
on one host (issue 20, point 3: warm invocation cost must equal bubblewrap's within noise).

Warm, in alternating rounds (each figure the median over the rounds), with wrk:
  - concurrency 1: p50 / p99 latency;
  - concurrency 16: requests per second.
Cold start, each a median of several client-side calls:
  - Sora, container, a pre-started container taken (host-config.yaml `prestartedRuntimes`,
    default 2) (a copy of hello with `minInstances: 0`,
    `idleTimeout: 0.5`, called once scaled to zero after its spares are up);
  - Sora, container, `prestartedRuntimes: 0` (a second host): the call waits for
    container create + start + the first answer;
  - Sora, bubblewrap: the sandboxed copy, scaled to zero (a pre-started runtime taken);
  - a bare `docker run --rm --network none sora-test/node20 node -e ...` (the Docker CLI: it is
    the peer here, not Sora's path), from the command to its exit;
and the ratios are printed. The engine is the one at /var/run/docker.sock when it answers, else
a dockerd of the bench's own (tests/docker_engine.py). Run with `make bench-containers`, or:

    .venv/bin/python bench/containers.py [--rounds 3] [--duration 5] [--cold-samples 8]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import HELLO, ROOT, copy_function, free_port, start_host, start_node, stop, \
    wait_http, wrk
from startup import wait_scaled_to_zero

sys.path.insert(0, str(ROOT))   # the tests' engine fixture and image builder

from tests import docker_engine as engines  # noqa: E402
from tests.images.build import NODE20, ensure_image  # noqa: E402

SANDBOX, CONTAINER, NODE = "sora, sandbox", "sora, container", "plain node"
# How long a scaled-to-zero function is left before its cold call: the instance's end and the
# replacement spare (a container: create + start, a few hundred ms) are done by then.
SPARE_SETTLE = 3.0


def measure(url: str, duration: int) -> dict:
    c1 = wrk(url, 1, duration, 1)
    c16 = wrk(url, 16, duration, 2)
    return {"p50_ms": c1["p50_ms"], "p99_ms": c1["p99_ms"], "rps_c16": c16["rps"],
            "errors": c1["non_2xx"] + c16["non_2xx"]}


def warm_rounds(urls: dict[str, str], rounds: int, duration: int) -> dict:
    """Medians over the rounds, and the median of each round's container / sandbox ratios
    (paired in time, so a burst of load from elsewhere weighs on both sides of a ratio). The
    order of the targets turns each round."""
    results: dict[str, list[dict]] = {name: [] for name in urls}
    for url in urls.values():
        wait_http(url, timeout=120)
        wrk(url, 16, 3, 2)   # warm-up: JIT, and the worker learns the function is fast
    names = list(urls)
    for i in range(rounds):
        print(f"round {i + 1}/{rounds} (load {os.getloadavg()[0]:.1f})", flush=True)
        for name in names[i % len(names):] + names[:i % len(names)]:
            row = measure(urls[name], duration)
            results[name].append(row)
            print(f"  {name:<16} p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f} ms  "
                  f"{row['rps_c16']:>8.0f} req/s at c=16  errors {row['errors']}", flush=True)
    medians = {name: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
               for name, rows in results.items()}
    paired = {key: statistics.median(c[key] / b[key] for c, b in
                                     zip(results[CONTAINER], results[SANDBOX]))
              for key in ("p50_ms", "p99_ms", "rps_c16")}
    return {"medians": medians, "paired_ratios": paired}


def cold_calls(port: int, name: str, samples: int) -> list[float]:
    """Client-side ms of calls to `name` each made once it has scaled to zero (and its spares,
    if any, have had SPARE_SETTLE seconds to come up)."""
    times = []
    for _ in range(samples):
        wait_scaled_to_zero(port, name)
        time.sleep(SPARE_SETTLE)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        start = time.perf_counter()
        conn.request("GET", f"/functions/{name}")
        resp = conn.getresponse()
        body = resp.read()
        times.append((time.perf_counter() - start) * 1000)
        conn.close()
        if resp.status != 200:
            raise SystemExit(f"cold call to {name} answered {resp.status}: {body[:300]!r}")
    return times


def docker_run_ms(socket: str, image: str, samples: int) -> list[float]:
    docker_cli = shutil.which("docker")
    if docker_cli is None:
        raise SystemExit("the docker CLI is missing (Debian's docker.io has it)")
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        done = subprocess.run([docker_cli, "-H", f"unix://{socket}", "run", "--rm",
                               "--network", "none", "--label", "sora-test=bench", image, "node",
                               "-e", "console.log(JSON.stringify({message: 'Hello'}))"],
                              capture_output=True, text=True)
        times.append((time.perf_counter() - start) * 1000)
        if done.returncode != 0 or "Hello" not in done.stdout:
            raise SystemExit(f"docker run failed: {done.stderr[-500:]}")
    return times


def show(label: str, times: list[float]) -> float:
    print(f"  {label}: median {statistics.median(times):.1f} ms "
          f"({', '.join(f'{t:.0f}' for t in times)})", flush=True)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--cold-samples", type=int, default=8)
    parser.add_argument("--gateway-workers", type=int, default=1)
    parser.add_argument("--memory", type=int, default=128,
                        help="every copy's `memory` (MB): a container's CPU share follows it")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk (or `make bench-containers`)")
    engine = engines.open_engine()
    try:
        image = ensure_image(engine.client, NODE20)
        print(f"hello-world, {args.duration}s per point, {os.cpu_count()} cores (load "
              f"{os.getloadavg()[0]:.1f}), engine "
              f"{engine.socket}{' (own dockerd)' if engine.own else ''}, image {image}",
              flush=True)
        results = run(args, engine.socket, image)
    finally:
        engines.close_engine(engine)
    results["load_average"] = os.getloadavg()
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def run(args, socket: str, image: str) -> dict:
    container = {"isolation": "container", "image": image, "memory": args.memory}
    cold = {"minInstances": 0, "idleTimeout": 0.5}
    sandbox = {"isolation": "sandbox", "memory": args.memory}
    with tempfile.TemporaryDirectory(prefix="sora-bench-containers-") as tmp:
        tmp = Path(tmp)
        functions = [
            copy_function(HELLO, tmp, name="hello-sandbox", **sandbox),
            copy_function(HELLO, tmp, name="hello-container", **container),
            copy_function(HELLO, tmp, name="hello-sandbox-cold", **sandbox, **cold),
            copy_function(HELLO, tmp, name="hello-container-cold", **container, **cold)]
        port, node_port = free_port(), free_port()
        (tmp / "a").mkdir()
        host = start_host(tmp / "a", port, args.gateway_workers, functions,
                          extra=server_settings(port, args, socket))
        node = start_node(node_port)
        cold_ms: dict[str, float] = {}
        try:
            urls = {NODE: f"http://127.0.0.1:{node_port}/",
                    SANDBOX: f"http://127.0.0.1:{port}/functions/hello-sandbox",
                    CONTAINER: f"http://127.0.0.1:{port}/functions/hello-container"}
            warm = warm_rounds(urls, args.rounds, args.duration)
            print("cold starts", flush=True)
            cold_ms["container, spare taken"] = show(
                "container, a pre-started container taken",
                cold_calls(port, "hello-container-cold", args.cold_samples))
            cold_ms["bubblewrap"] = show(
                "bubblewrap, a pre-started runtime taken",
                cold_calls(port, "hello-sandbox-cold", args.cold_samples))
        finally:
            stop(host)
            stop(node)
        # A second host with no pre-started runtime or container: the cold call creates and
        # starts the container.
        (tmp / "b").mkdir()
        bare_port = free_port()
        host = start_host(tmp / "b", bare_port, args.gateway_workers, [functions[3]],
                          extra={**server_settings(bare_port, args, socket),
                                 "prestartedRuntimes": 0})
        try:
            wait_http(f"http://127.0.0.1:{bare_port}/healthz", timeout=120)
            cold_ms["container, create + start"] = show(
                "container, prestartedRuntimes 0 (create + start + first answer)",
                cold_calls(bare_port, "hello-container-cold", args.cold_samples))
        finally:
            stop(host)
        cold_ms["docker run"] = show("docker run --rm (CLI, to its exit)",
                                     docker_run_ms(socket, image, args.cold_samples))
    return {"warm": warm, "cold_ms": cold_ms}


def server_settings(port: int, args, socket: str) -> dict:
    """host-config.yaml's `server` (start_host's `extra` replaces the one it writes): the
    engine's socket beside the port and gateway workers."""
    server = {"httpPort": port, "bind": "127.0.0.1", "gatewayWorkers": args.gateway_workers}
    if socket != engines.SYSTEM_SOCKET:   # the default
        server["docker"] = {"socket": socket}
    return {"server": server}


def report(results: dict) -> None:
    warm, cold = results["warm"]["medians"], results["cold_ms"]
    paired = results["warm"]["paired_ratios"]
    print("\n| target | p50 (c=1) | p99 (c=1) | req/s (c=16) |")
    print("|---|---|---|---|")
    for name, row in warm.items():
        print(f"| {name} | {row['p50_ms']:.3f} ms | {row['p99_ms']:.3f} ms | "
              f"{row['rps_c16']:,.0f} |")
    print("\n| cold start | median |")
    print("|---|---|")
    for name, ms in cold.items():
        print(f"| {name} | {ms:.1f} ms |")
    sandbox, container = warm[SANDBOX], warm[CONTAINER]
    print(f"\ncontainer / sandbox, warm: p50 {container['p50_ms'] / sandbox['p50_ms']:.3f}x "
          f"({container['p50_ms'] - sandbox['p50_ms']:+.3f} ms), p99 "
          f"{container['p99_ms'] / sandbox['p99_ms']:.3f}x, req/s at c=16 "
          f"{container['rps_c16'] / sandbox['rps_c16']:.3f}x")
    print(f"container / sandbox, warm, median of each round's ratio: p50 "
          f"{paired['p50_ms']:.3f}x, p99 {paired['p99_ms']:.3f}x, req/s at c=16 "
          f"{paired['rps_c16']:.3f}x")
    print(f"container / plain node, req/s at c=16: "
          f"{container['rps_c16'] / warm[NODE]['rps_c16']:.1%}")
    print(f"cold, container (spare taken) / bubblewrap: "
          f"{cold['container, spare taken'] / cold['bubblewrap']:.2f}x")
    print(f"cold, container (create + start) / docker run: "
          f"{cold['container, create + start'] / cold['docker run']:.2f}x")
    print(f"load average at the end: {results['load_average'][0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
