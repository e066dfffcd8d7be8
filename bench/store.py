"""Benchmark: the PostgreSQL store beside SQLite, in one run.

Two hosts side by side on free loopback ports, each serving the same hello function (2
instances): one with `store: sqlite` (the default: the state dir's files), one with `store:
{url: postgresql://…}` on a PostgreSQL server the bench starts for itself (the tests' own
tests/postgres_server.py: initdb in a temp dir, 127.0.0.1 and a free port, fsync on; stopped
and removed at the end). In alternating rounds, with wrk POSTing `{}` to
`/2015-03-31/functions/hello/invocations`:

  (a) async events (`X-Amz-Invocation-Type: Event`): each 202 comes after the event is
      committed (SQLite: synchronous=FULL; PostgreSQL: a committed transaction, fsync on):
      p50/p99 at 1 connection, 202/s at `--connections` (64); then the backlog those rounds
      left is run to completion by the host's dispatcher (events/s, acknowledged and
      deleted);
  (b) the Invoke API (`RequestResponse`): p50/p99 at 1 connection, requests/s at 64 (every
      call also makes a record, written by the recorder to the store);

then, with the hosts stopped:

  (c) records written per second: `--records` invocation records with two log lines each,
      in batches of `--batch`, through sora.store.records.commit (the recorder's own write,
      as bench/dashboard.py seeds its store) on a connection of each backend;

and the PostgreSQL / SQLite ratios. Medians over the rounds.

    .venv/bin/python bench/store.py [--rounds 3] [--duration 5] [--connections 64]
                                    [--records 20000] [--batch 200]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import (HELLO, ROOT, copy_function, free_port, start_host, stop, wait_http, wrk)
from events import drain, lua   # bench/events.py: the wrk scripts and the backlog's timing

sys.path.insert(0, str(ROOT))   # the tests' PostgreSQL server, as an importable helper

from sora.config import StoreConfig, default_gateway_workers  # noqa: E402
from sora.store import backend, records  # noqa: E402
from tests.postgres_server import PostgresServer  # noqa: E402

INVOKE = "/2015-03-31/functions/hello/invocations"
BACKENDS = ("sqlite", "postgresql")


def point(url: str, script: str, connections: int, duration: int) -> dict:
    c1 = wrk(url, 1, duration, 1, script)
    many = wrk(url, connections, duration, 2, script)
    return {"p50_ms": c1["p50_ms"], "p99_ms": c1["p99_ms"], "rps": many["rps"],
            "errors": c1["non_2xx"] + many["non_2xx"]}


def record_rows(count: int, rng: random.Random) -> tuple[list, list]:
    """`count` records (as recorder.parse makes them) and two log lines each."""
    now = time.time()
    rows, lines = [], []
    for i in range(count):
        request_id = f"bench-{i:08d}-{rng.getrandbits(48):012x}"
        start = now - rng.random() * 3600
        duration = rng.lognormvariate(2.5, 0.8)
        rows.append((request_id, "hello", "$LATEST", "http", start, duration, "ok", None, 0,
                     None, 64, None))
        lines.append(("hello", request_id, start, "stdout", f"handling {request_id}"))
        lines.append(("hello", request_id, start + duration / 1000, "stdout", "done"))
    return rows, lines


def records_rate(store: StoreConfig, state_dir: str, count: int, batch: int) -> dict:
    """Records (and their log lines) committed per second, in batches of `batch`."""
    rows, lines = record_rows(count, random.Random(21))
    conn = backend.connect(store, state_dir, "records")
    try:
        started = time.perf_counter()
        for first in range(0, count, batch):
            records.commit(conn, rows[first:first + batch], lines[2 * first:2 * (first + batch)])
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return {"records_per_s": count / elapsed, "lines_per_s": 2 * count / elapsed,
            "batch_ms": 1000 * elapsed / -(-count // batch)}


def median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=200, help="records per commit")
    parser.add_argument("--pool-size", type=int, default=4, help="store.poolSize")
    parser.add_argument("--gateway-workers", type=int, default=default_gateway_workers())
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk (or `make bench-store`)")
    print(f"store backends: {args.duration}s per point, {args.rounds} rounds, "
          f"c={args.connections}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    server = PostgresServer().start()
    hosts: dict[str, object] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="sora-bench-store-") as tmp_name:
            tmp = Path(tmp_name)
            stores = {"sqlite": StoreConfig(),
                      "postgresql": StoreConfig(kind="postgresql", poolSize=args.pool_size,
                                                url=server.url(server.create_database()))}
            urls = {}
            for name in BACKENDS:
                folder = tmp / name
                folder.mkdir()
                fn = copy_function(HELLO, folder, instances=2)
                port = free_port()
                extra = {} if name == "sqlite" else \
                    {"store": {"url": stores[name].url, "poolSize": args.pool_size}}
                hosts[name] = start_host(folder, port, args.gateway_workers, [fn], extra=extra)
                urls[name] = f"http://127.0.0.1:{port}"
            scripts = {kind: lua(tmp, kind) for kind in ("Event", "RequestResponse")}
            for name, url in urls.items():
                wait_http(url + "/functions/hello", timeout=120)
                wrk(url + INVOKE, args.connections, 3, 2, scripts["RequestResponse"])  # warm-up
                drain(url)
            results = {name: [] for name in BACKENDS}
            for i in range(args.rounds):
                print(f"round {i + 1}/{args.rounds}", flush=True)
                for name in (BACKENDS if i % 2 == 0 else BACKENDS[::-1]):
                    url = urls[name]
                    event = point(url + INVOKE, scripts["Event"], args.connections,
                                  args.duration)
                    rate, backlog = drain(url)
                    sync = point(url + INVOKE, scripts["RequestResponse"], args.connections,
                                 args.duration)
                    row = {"event": event, "drain_per_s": rate, "backlog": backlog,
                           "sync": sync}
                    results[name].append(row)
                    print(f"  {name:<10} event p50 {event['p50_ms']:.3f} ms p99 "
                          f"{event['p99_ms']:.3f} ms {event['rps']:>7.0f} 202/s | ran "
                          f"{backlog} at {rate:>6.0f}/s | sync p50 {sync['p50_ms']:.3f} ms p99 "
                          f"{sync['p99_ms']:.3f} ms {sync['rps']:>7.0f} req/s | errors "
                          f"{event['errors'] + sync['errors']}", flush=True)
            for name in BACKENDS:
                stop(hosts.pop(name))
            print(f"records: {args.records} with 2 log lines each, {args.batch} per commit",
                  flush=True)
            written = {}
            for name in BACKENDS:
                state = tmp / f"records-{name}"
                state.mkdir()
                store = stores[name]
                if name == "postgresql":
                    store = StoreConfig(kind="postgresql", poolSize=args.pool_size,
                                        url=server.url(server.create_database()))
                try:
                    written[name] = records_rate(store, str(state), args.records, args.batch)
                except Exception as exc:   # noqa: BLE001 - the figures above still stand
                    print(f"  {name:<10} records could not be written: {type(exc).__name__}: "
                          f"{backend.scrub(str(exc))}", flush=True)
                    written[name] = {"records_per_s": float("nan")}
                    continue
                print(f"  {name:<10} {written[name]['records_per_s']:>8.0f} records/s "
                      f"({written[name]['lines_per_s']:.0f} log lines/s), "
                      f"{written[name]['batch_ms']:.1f} ms per commit", flush=True)
    finally:
        for proc in hosts.values():
            stop(proc)
        backend.close_pools()
        server.remove()
    summary = {}
    for name in BACKENDS:
        rows = results[name]
        summary[name] = {
            "event_p50_ms": median([r["event"]["p50_ms"] for r in rows]),
            "event_p99_ms": median([r["event"]["p99_ms"] for r in rows]),
            "event_rps": median([r["event"]["rps"] for r in rows]),
            "drain_per_s": median([r["drain_per_s"] for r in rows]),
            "sync_p50_ms": median([r["sync"]["p50_ms"] for r in rows]),
            "sync_p99_ms": median([r["sync"]["p99_ms"] for r in rows]),
            "sync_rps": median([r["sync"]["rps"] for r in rows]),
            "errors": sum(r["event"]["errors"] + r["sync"]["errors"] for r in rows),
            **written[name]}
    print(f"\nmedians over {args.rounds} round(s); PostgreSQL / SQLite:")
    labels = (("event_rps", "async events accepted (202/s, c=%d)" % args.connections),
              ("event_p50_ms", "async event p50 at c=1 (ms)"),
              ("event_p99_ms", "async event p99 at c=1 (ms)"),
              ("drain_per_s", "events run to completion (/s)"),
              ("sync_rps", "Invoke API RequestResponse (req/s, c=%d)" % args.connections),
              ("sync_p50_ms", "Invoke API p50 at c=1 (ms)"),
              ("sync_p99_ms", "Invoke API p99 at c=1 (ms)"),
              ("records_per_s", "records written (/s, batches of %d)" % args.batch))
    for key, label in labels:
        sq, pg = summary["sqlite"][key], summary["postgresql"][key]
        print(f"  {label:<44} sqlite {sq:>9.2f}  postgresql {pg:>9.2f}  ratio "
              f"{pg / sq if sq else float('nan'):.2f}x")
    print(f"load average {os.getloadavg()[0]:.1f}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
