"""Throughput with 1, 2 and 3 hosts (`make bench-hosts`, issue 16 point 8).

A function that sleeps 100 ms with `maxInstances: 2` serves at most 20 calls/s on one host;
on n hosts it should serve about n times that through one main gateway. The hosts are those
of the cluster tests (tests/netns.py: a main host in the root namespace, joined hosts in
network namespaces of their own, tcp + CURVE between them), so this needs root (as the tests
do) and a kernel that allows network namespaces.

One cluster serves three copies of the function: `sleep1` on the main host only, `sleep2` on
the main host and h0, `sleep3` on all three. Each is saturated in turn by the same closed-loop
clients (tests/load.py, as the test that asserts the ratio), rounds interleaved so a slow
moment of the machine touches every size alike:

    .venv/bin/python bench/hosts.py [--rounds 3] [--duration 5] [--clients 60] [--sleep-ms 100]

With a shorter sleep (--sleep-ms 10: 200 calls/s a host) the hosts stop being the limit and
the main host's one gateway process and the load generator show instead.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import netns  # noqa: E402 - after the path insert above
from tests.load import throughput  # noqa: E402
from tests.support import write_function  # noqa: E402

MAX_INSTANCES = 2
# Sleeps ?ms= (100 by default): how long a call holds its instance.
SLEEPER = """exports.handler = async (event) => {
  const ms = Number((event.queryStringParameters || {}).ms || 100);
  await new Promise((r) => setTimeout(r, ms));
  return { ms };
};
"""
SERVED = {"main": ["sleep1", "sleep2", "sleep3"], "h0": ["sleep2", "sleep3"], "h1": ["sleep3"]}


def build(base: Path, network) -> netns.Cluster:
    cluster = netns.Cluster(network, base)
    dirs = {host: [write_function(base / f"fns-{host}", name, {"index.js": SLEEPER},
                                  name=name, auth="none", minInstances=MAX_INSTANCES,
                                  maxInstances=MAX_INSTANCES, timeout=30)
                   for name in names] for host, names in SERVED.items()}
    for i, name in enumerate(("h0", "h1")):
        cluster.add(network[i], name, dirs[name])
    cluster.make_main(dirs["main"]).start(SERVED["main"], timeout=180)
    for name in ("h0", "h1"):
        cluster.start_joined(name, SERVED[name], timeout=180)
    return cluster


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--clients", type=int, default=60)
    parser.add_argument("--sleep-ms", type=int, default=100)
    args = parser.parse_args()
    try:
        netns.check_available()
    except netns.NetnsUnavailable as exc:
        raise SystemExit(f"network namespaces are not available here ({exc}); run as root")
    netns.sweep_dead_runs()
    ideal = 1000 / args.sleep_ms * MAX_INSTANCES
    rates: dict[int, list[float]] = {1: [], 2: [], 3: []}
    with tempfile.TemporaryDirectory(prefix="sora-bench-hosts-") as tmp:
        network = netns.Network(2)
        try:
            cluster = build(Path(tmp), network)
            print(f"{args.sleep_ms} ms per call, maxInstances {MAX_INSTANCES} per host (ideal "
                  f"{ideal:.0f} calls/s a host), {args.clients} clients, {args.duration:g} s "
                  "a measurement", flush=True)
            for n in rates:   # warm-up: every instance started, every connection made
                throughput(f"{cluster.main.url}/functions/sleep{n}?ms={args.sleep_ms}",
                           args.clients, 1, 1)
            for r in range(args.rounds):
                for n in rates:
                    got = throughput(f"{cluster.main.url}/functions/sleep{n}?ms={args.sleep_ms}",
                                     args.clients, args.duration, warmup=1.5)
                    rates[n].append(got["rps"])
                    print(f"  round {r + 1}: {n} host(s) {got['rps']:6.1f} calls/s "
                          f"({got['failed']} failed{': ' if got['failed'] else ''}"
                          f"{got['failures'] if got['failed'] else ''})", flush=True)
        finally:
            left = network.teardown()
            if left:
                print(f"left behind: {left}", file=sys.stderr)
    med = {n: statistics.median(v) for n, v in rates.items()}
    print(f"\nmedians over {args.rounds} round(s):\n")
    print("| hosts | calls/s | vs 1 host | vs ideal |\n|---|---|---|---|")
    for n, value in med.items():
        print(f"| {n} | {value:.1f} | {value / med[1]:.2f}x | {value / (n * ideal):.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
