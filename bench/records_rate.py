"""Benchmark: invocation records written per second by the recorder, on SQLite and on
PostgreSQL, through the path workers use.

A real recorder process (`python -m sora.store.recorder --config ...`, the host config naming
the store) takes numbered batches from `--senders` RecordSenders in this process (each
record with one log line, as a worker sends them); the time runs from the first send until
every batch is acknowledged, which the recorder does only after its commit. PostgreSQL is a
server of this run's own (tests/postgres_server.py: initdb in a temp dir, fsync on, 127.0.0.1).

    .venv/bin/python bench/records_rate.py [--records 100000] [--senders 4] [--batch 200]
                                           [--backends sqlite,postgresql]

bench/store.py calls `records_per_second(store, state_dir, ...)` for its own run.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sora.config import StoreConfig  # noqa: E402
from sora.store import backend  # noqa: E402
from sora.store.recorder import RecordSender, records_socket  # noqa: E402


def _store_setting(store: StoreConfig):
    return "sqlite" if store.kind == "sqlite" else {"url": store.url,
                                                    "poolSize": store.poolSize}


def records_per_second(store: StoreConfig, state_dir: str, records: int = 100_000,
                       senders: int = 4, batch: int = 200, timeout: float = 300.0) -> dict:
    """Send `records` records (one log line each) through `senders` RecordSenders to a
    recorder process of this call's own, storing in `store`; returns {"records", "seconds",
    "perSecond", "backend"} once the recorder has acknowledged (committed) them all."""
    os.makedirs(os.path.join(state_dir, "run"), exist_ok=True)
    config = os.path.join(state_dir, "bench-host-config.yaml")
    with open(config, "w") as f:     # the recorder reads the store from it (never argv)
        yaml.safe_dump({"functionPaths": ["fn"], "server": {"httpPort": 8080},
                        "stateDir": state_dir, "store": _store_setting(store)}, f)
    log = open(os.path.join(state_dir, "recorder.log"), "wb")
    recorder = subprocess.Popen([sys.executable, "-m", "sora.store.recorder", "--state-dir",
                                 state_dir, "--config", config, "--max-per-function",
                                 str(records * 2)], stderr=log, cwd=ROOT)
    ctx = zmq.Context()
    out: list[RecordSender] = []
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(records_socket(state_dir)):
            if recorder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the recorder did not start: see {log.name}")
            time.sleep(0.05)
        out = [RecordSender(state_dir, ctx) for _ in range(senders)]
        for sender in out:           # connected (ZMQ_IMMEDIATE drops sends until then)
            while not sender.sock.poll(10, zmq.POLLOUT) & zmq.POLLOUT:
                pass
        started = time.monotonic()
        sent = 0
        while sent < records:
            for i, sender in enumerate(out):
                for _ in range(min(batch, records - sent)):
                    rid = f"bench-{sent}".encode()
                    sender.record(rid, b"fn", b"invoke", time.time(), 1.0, b"ok", None,
                                  False, max_memory_mb=40)
                    sender.lines("fn", rid.decode(), "stdout", [b"a log line of the bench"])
                    sent += 1
                sender.flush()
            # Like workers, each sender keeps what is unacknowledged and resends it: do not
            # run further ahead of the recorder than they could.
            while sum(s.unacked_bytes for s in out) > 16 << 20:
                for sender in out:
                    sender.flush()
                time.sleep(0.005)
        end = time.monotonic() + timeout
        while any(s.unacked for s in out):
            if time.monotonic() > end:
                raise RuntimeError("the recorder did not acknowledge every batch in time")
            for sender in out:
                sender.flush()
            time.sleep(0.002)
        seconds = time.monotonic() - started
    finally:
        for sender in out:
            sender.close(wait=0)
        ctx.term()
        recorder.send_signal(signal.SIGTERM)
        recorder.wait(timeout=30)
        log.close()
    conn = backend.connect(store, state_dir, "records")
    stored = conn.execute("SELECT COUNT(*) FROM invocations").fetchone()[0]
    conn.close()
    backend.close_pools()
    if stored != records:
        raise RuntimeError(f"{stored} records stored, {records} sent")
    return {"backend": store.kind, "records": records, "seconds": round(seconds, 3),
            "perSecond": round(records / seconds)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    server = None
    try:
        for kind in args.backends.split(","):
            with tempfile.TemporaryDirectory(prefix="sora-rr-") as state_dir:
                if kind == "postgresql":
                    from tests.postgres_server import PostgresServer
                    server = server or PostgresServer().start()
                    store = StoreConfig(kind="postgresql",
                                        url=server.url(server.create_database()))
                else:
                    store = StoreConfig()
                result = records_per_second(store, state_dir, args.records, args.senders,
                                            args.batch)
                print(f"{kind:<11} {result['records']} records (+1 log line each) in "
                      f"{result['seconds']} s: {result['perSecond']} records/s")
    finally:
        if server is not None:
            server.remove()
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
