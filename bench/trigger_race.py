"""How long a schedule's firing takes to decide and commit, on each store backend, and when
several hosts race for the same due time on one PostgreSQL database (issue 21).

    .venv/bin/python bench/trigger_race.py [--firings 300] [--hosts 3]

Starts a PostgreSQL server of its own (tests/postgres_server.py: initdb in a temporary folder,
its own port, loopback only), removed at the end. Each round fires one due time with
`once=True` through each host's Sink (its own connection and thread) at once and waits for
all: one stores the event, the others find the time handled. Prints the round's p50 and p99.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sora.config import EventInvokeConfig, StoreConfig  # noqa: E402
from sora.store import backend, triggers as store  # noqa: E402
from sora.triggers.sink import Sink  # noqa: E402
from tests.postgres_server import PostgresServer  # noqa: E402

FN = SimpleNamespace(name="fn", eventInvoke=EventInvokeConfig())
TRIGGER = SimpleNamespace(key="schedule:bench")


async def rounds(sinks: list[Sink], n: int) -> list[float]:
    """Milliseconds per round: every sink fires the same due time at once."""
    async def one(sink, due):
        try:
            return await sink.fire(FN, TRIGGER, "schedule:0", b"{}", due, once=True)
        except store.AlreadyFired:
            return None
    out = []
    for k in range(n):
        started = time.perf_counter()
        stored = await asyncio.gather(*(one(s, 1000.0 + k) for s in sinks))
        out.append((time.perf_counter() - started) * 1000)
        assert sum(r is not None for r in stored) == 1, stored
    return out


def report(label: str, sinks: list[Sink], n: int) -> None:
    try:
        ms = sorted(asyncio.run(rounds(sinks, n)))
    finally:
        for sink in sinks:
            sink.close()
    print(f"{label}: p50 {statistics.median(ms):.2f} ms, p99 {ms[int(len(ms) * 0.99) - 1]:.2f} ms "
          f"({n} due times)")


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/trigger_race.py")
    parser.add_argument("--firings", type=int, default=300)
    parser.add_argument("--hosts", type=int, default=3)
    args = parser.parse_args()
    server = PostgresServer().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            report("sqlite, 1 host", [Sink(os.path.join(tmp, "sqlite"))], args.firings)
            for hosts in (1, args.hosts):
                shared = StoreConfig(kind="postgresql",
                                     url=server.url(server.create_database()))
                report(f"postgresql, {hosts} host(s) racing",
                       [Sink(os.path.join(tmp, f"pg{hosts}-{i}"), store_config=shared)
                        for i in range(hosts)], args.firings)
            backend.close_pools()
    finally:
        server.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
