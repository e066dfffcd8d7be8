"""Benchmark: hello-world through Sora vs the same handler behind a plain Node `http` server,
and on serverless-offline (the usual local Lambda emulator; bench/peer/, installed with npm on
first use, runs offline).

Both run in one invocation of this script, side by side on free loopback ports, measured with
wrk in alternating rounds (this machine's timing noise is several percent from one run to the
next, so each figure is the median over the rounds):
  - concurrency 1: p50 / p99 latency (the overhead Sora adds per invocation)
  - concurrency 64: requests per second (what the whole chain sustains)
and the ratios are printed. Run with `make bench` (installs wrk where missing), or:

    .venv/bin/python bench/run.py [--rounds 3] [--duration 5] [--gateway-workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout}s")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, connections: int, duration: int, threads: int) -> dict:
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s",
                          "--latency", url], capture_output=True, text=True, check=True).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        result[f"p{pct}_ms"] = _ms(m.group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    result["non_2xx"] = int(bad.group(1)) if bad else 0
    result["socket_errors"] = errors.group(1) if errors else ""
    return result


def measure(name: str, url: str, duration: int) -> dict:
    c1 = wrk(url, 1, duration, 1)
    c64 = wrk(url, 64, duration, 2)
    row = {"target": name, "p50_ms": c1["p50_ms"], "p99_ms": c1["p99_ms"], "rps_c64": c64["rps"],
           "errors": c64["non_2xx"] + c1["non_2xx"], "socket_errors": c64["socket_errors"]}
    print(f"  {name:<12} p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f} ms  "
          f"{row['rps_c64']:>9.0f} req/s at c=64  errors {row['errors']}", flush=True)
    return row


PEER = ROOT / "bench" / "peer"
PEER_ENV = {"SLS_TELEMETRY_DISABLED": "1", "SLS_NOTIFICATIONS_MODE": "off",
            "SLS_DEPRECATION_DISABLE": "*", "SERVERLESS_PLATFORM_VENDOR": "aws"}


def start_peer(port: int) -> subprocess.Popen | None:
    """serverless-offline on the same handler, or None (with a reason) if it cannot run."""
    binary = PEER / "node_modules" / ".bin" / "serverless"
    if not binary.exists():
        print("installing serverless-offline for the peer measurement (npm)...", flush=True)
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=PEER,
                              capture_output=True, text=True)
        if done.returncode != 0 or not binary.exists():
            print(f"peer skipped: npm install failed:\n{done.stderr[-2000:]}", flush=True)
            return None
    return subprocess.Popen([str(binary), "offline", "start", "--httpPort", str(port),
                             "--lambdaPort", str(free_port())], cwd=PEER,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=dict(os.environ, **PEER_ENV))


def _median(name: str, results: list[dict]) -> dict:
    def mid(key):
        values = sorted(r[key] for r in results)
        return values[len(values) // 2]
    return {"target": name, "p50_ms": mid("p50_ms"), "p99_ms": mid("p99_ms"),
            "rps_c64": mid("rps_c64"), "errors": sum(r["errors"] for r in results)}


def start_node(port: int) -> subprocess.Popen:
    return subprocess.Popen(["node", str(ROOT / "bench" / "plain_node_server.js"), str(port),
                             str(HELLO / "index.js")], start_new_session=True,
                            env=dict(os.environ, GREETING="Hello"))


def start_sora(tmp: Path, port: int, gateway_workers: int, instances: int) -> subprocess.Popen:
    fn = tmp / "hello"
    shutil.copytree(HELLO, fn)
    text = (fn / "sora.yaml").read_text()
    (fn / "sora.yaml").write_text(text + f"instances: {instances}\n")
    config = tmp / "host-config.yaml"
    config.write_text(json.dumps({
        "functionPaths": [str(fn)],
        "server": {"httpPort": port, "bind": "127.0.0.1", "gatewayWorkers": gateway_workers},
        "stateDir": str(tmp / "state")}))
    log = open(tmp / "supervisor.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "sora.supervisor.cli", "start", "--config",
                             str(config)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--gateway-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--json", help="also write the results to this file")
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
            "sls-offline": f"http://127.0.0.1:{peer_port}/hello"}
    rounds: dict[str, list[dict]] = {name: [] for name in urls}
    with tempfile.TemporaryDirectory(prefix="sora-bench-") as tmp:
        procs = {"plain node": start_node(node_port),
                 "sora": start_sora(Path(tmp), port, args.gateway_workers, args.instances),
                 "sls-offline": start_peer(peer_port) if args.peer else None}
        try:
            for name, proc in list(procs.items()):
                if proc is None:
                    del urls[name], rounds[name]
                    continue
                wait_http(urls[name])
                wrk(urls[name], 64, 3, 2)  # warm-up: JIT; Sora's worker learns it is fast
            for i in range(args.rounds):
                print(f"round {i + 1}/{args.rounds}", flush=True)
                for name, url in urls.items():
                    rounds[name].append(measure(name, url, args.duration))
        finally:
            for proc in procs.values():
                if proc is not None:
                    stop(proc)
    rows = [_median(name, results) for name, results in rounds.items()]
    by_name = {row["target"]: row for row in rows}
    node_row, sora_row = by_name["plain node"], by_name["sora"]
    ratio = sora_row["rps_c64"] / node_row["rps_c64"]
    overhead = sora_row["p50_ms"] - node_row["p50_ms"]
    print(f"\nmedians over {args.rounds} round(s):")
    for row in rows:
        print(f"  {row['target']:<12} p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f} ms  "
              f"{row['rps_c64']:>9.0f} req/s at c=64")
    print(f"sora / plain node throughput at c=64: {ratio:.1%}")
    print(f"sora p50 overhead at c=1: {overhead:.3f} ms "
          f"(p99 {sora_row['p99_ms'] - node_row['p99_ms']:+.3f} ms)")
    if "sls-offline" in by_name:
        peer = by_name["sls-offline"]
        print(f"sora / serverless-offline throughput at c=64: "
              f"{sora_row['rps_c64'] / peer['rps_c64']:.2f}x; p50 at c=1: "
              f"{sora_row['p50_ms']:.3f} vs {peer['p50_ms']:.3f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "throughput_ratio": ratio,
                                               "p50_overhead_ms": overhead}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
