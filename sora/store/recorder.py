"""The recorder: the one process that writes invocation records and log lines to the store.

Workers PUSH a message per loop turn to `<stateDir>/run/records.sock` (`RecordSender`; the
broker too, for invocations lost with their worker, which cannot record them); the
recorder PULLs them, commits what gathered every FLUSH_INTERVAL in one transaction, and prunes
the store to its retention every PRUNE_INTERVAL.

The store's size is capped (`records.maxStoreMB`, sora.db and its WAL together): the WAL gets
an eighth of it (at most 64 MB: `journal_size_limit`, automatic checkpoints at half that, and a
TRUNCATE checkpoint whenever readers let it grow past it), one commit takes at most a quarter of
the WAL's share (the rest waits in the socket for the next turn, so a flood of log lines is
stored at a bounded rate, ~2.5 × that share a second), and after each commit the oldest records
and log lines are pruned once the database's pages in use pass the cap less two WAL shares. While the
state dir is low on free space (`minFreeDiskMB`) nothing is written: what arrives is dropped,
counted, and the recorder says why. Keeping SQLite out of the workers keeps it off
the invocation path (no write, no lock, no GIL held by a writer thread beside the worker loop).

Wire format: lines joined by "\\n", fields by "\\t" (a log line's text is the last field, so it
may hold tabs; it never holds a newline):
    R <request id> <function> <version> <trigger> <start> <duration ms> <status> <error type|-> <cold 0/1>
    L <function> <request id> <time> <stream> <text>
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sqlite3
import sys
import time

import zmq

from .. import protocol as p
from ..config import RecordsConfig
from ..hotpath import quiet_gc
from .db import connect
from .free_space import FreeSpace
from .records import commit, prune, prune_to_size, store_bytes

log = logging.getLogger("sora.recorder")
FLUSH_INTERVAL = 0.1
PRUNE_INTERVAL = 60.0
SEND_HWM = 100_000
WAL_SHARE_MAX = 64 << 20


def records_socket(state_dir: str) -> str:
    """The recorder's socket file: it exists once the recorder listens."""
    return os.path.join(p.run_dir(state_dir), "records.sock")


def records_endpoint(state_dir: str) -> str:
    return "ipc://" + records_socket(state_dir)


def _text(value: str) -> bytes:
    return value.replace("\t", " ").replace("\n", " ").encode("utf-8", "replace")


class RecordSender:
    """The worker's side: gathers records and log lines, sends them once per loop turn."""

    def __init__(self, state_dir: str, ctx: zmq.Context):
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.connect(records_endpoint(state_dir))
        self.batch: list[bytes] = []
        self.dropped = 0

    def record(self, request_id: bytes, function: bytes, trigger: bytes, start: float,
               duration_ms: float, status: bytes, error_type: str | None, cold: bool,
               version: bytes = b"$LATEST") -> None:
        """One finished invocation (bytes where the worker has bytes: this is per request)."""
        self.batch.append(b"R\t%s\t%s\t%s\t%s\t%.6f\t%.3f\t%s\t%s\t%d" % (
            request_id, function, version, trigger, start, duration_ms, status,
            _text(error_type) if error_type else b"-", cold))

    def lines(self, function: str, request_id: str, stream: str, lines: list[bytes]) -> None:
        head = b"L\t%s\t%s\t%.6f\t%s\t" % (function.encode(), request_id.encode(), time.time(),
                                           stream.encode())
        self.batch.extend(head + line for line in lines)

    def flush(self) -> None:
        if not self.batch:
            return
        try:
            self.sock.send(b"\n".join(self.batch), zmq.NOBLOCK)
        except zmq.Again:
            # The recorder is far behind or gone: records are an account of what ran, not the
            # work itself, so they are dropped rather than allowed to block invocations.
            self.dropped += len(self.batch)
            if self.dropped == len(self.batch) or self.dropped % 10_000 < len(self.batch):
                log.warning("recorder not keeping up: %d record line(s) dropped", self.dropped)
        self.batch = []

    def close(self, linger: int | None = None) -> None:
        """Send what is left, then close (waiting up to the socket's linger, or `linger` ms)."""
        self.flush()
        self.sock.close(linger=linger)


def parse(message: bytes, records: list[tuple], lines: list[tuple]) -> None:
    for item in message.split(b"\n"):
        kind = item[:2]
        try:
            if kind == b"R\t":
                f = item.decode("utf-8", "replace").split("\t")
                records.append((f[1], f[2], f[3], f[4], float(f[5]), float(f[6]), f[7],
                                None if f[8] == "-" else f[8], int(f[9])))
            elif kind == b"L\t":
                _, fn, rid, at, stream, text = item.split(b"\t", 5)
                lines.append((fn.decode(), rid.decode(), float(at), stream.decode(),
                              text.decode("utf-8", "replace")))
        except (IndexError, ValueError):
            log.warning("ignored a malformed record line: %r", item[:200])


class Recorder:
    def __init__(self, state_dir: str, max_per_function: int, max_age_hours: float,
                 max_store_mb: int = RecordsConfig.maxStoreMB, min_free_mb: int = 0):
        self.state_dir = state_dir
        self.max_per_function = max_per_function
        self.max_age_seconds = max_age_hours * 3600
        self.signals: list[int] = []
        store = max_store_mb << 20
        self.wal_limit = min(WAL_SHARE_MAX, store // 8)
        # The WAL passes its share by up to one commit (a worker's message is never split),
        # and more while a reader holds a checkpoint back: the database keeps a second share
        # free for that.
        self.db_limit = store - 2 * self.wal_limit
        self.commit_bytes = self.wal_limit // 4
        self.wal_path = os.path.join(state_dir, "sora.db-wal")
        self.free_space = FreeSpace(state_dir, min_free_mb << 20,
                                    "invocation records and log lines are dropped")
        self.dropped = 0

    def _on_signal(self, signum, _frame) -> None:
        self.signals.append(signum)  # only queue: the loop acts on it

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        conn = connect(self.state_dir)
        conn.execute(f"PRAGMA journal_size_limit = {self.wal_limit}")
        # This build zeroes every freed page (SECURE_DELETE), which writes each page pruning
        # frees into the WAL; FAST zeroes only what costs no extra write.
        conn.execute("PRAGMA secure_delete = FAST")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute(f"PRAGMA wal_autocheckpoint = {max(16, self.wal_limit // 2 // page_size)}")
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, SEND_HWM)
        sock.bind(records_endpoint(self.state_dir))
        quiet_gc()
        next_prune = time.monotonic()
        log.info("recorder %d ready", os.getpid())
        try:
            while not self.signals:
                now = time.monotonic()
                if now >= next_prune:
                    self.prune(conn)
                    next_prune = now + PRUNE_INTERVAL
                # A batching window, not a poll: committing on every message would make a
                # transaction per worker loop turn. A stop signal is seen within it.
                time.sleep(FLUSH_INTERVAL)
                if self.free_space.low():
                    self.discard(sock)
                    continue
                self.drain(sock, conn)
                self.keep_within_cap(conn)
            # Stopping: what the workers sent before they stopped is still committed.
            self.drain(sock, conn)
        finally:
            sock.close(linger=0)
            ctx.term()
            conn.close()
        return 0

    def drain(self, sock: zmq.Socket, conn: sqlite3.Connection) -> None:
        records: list[tuple] = []
        lines: list[tuple] = []
        taken = 0
        while taken < self.commit_bytes:   # the rest waits for the next turn (WAL's size)
            try:
                message = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            taken += len(message)
            parse(message, records, lines)
        try:
            commit(conn, records, lines)
        except sqlite3.Error as exc:
            log.error("could not store %d record(s) and %d log line(s): %s", len(records),
                      len(lines), exc)

    def discard(self, sock: zmq.Socket) -> None:
        """Low disk: take what arrived off the socket without storing it."""
        while True:
            try:
                sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.error("low disk: %d message(s) of records and log lines dropped",
                          self.dropped)

    def keep_within_cap(self, conn: sqlite3.Connection) -> None:
        """The store within `records.maxStoreMB`: the oldest records pruned past the
        database's share, a little at a time, and the WAL truncated past its own (a reader
        may have held an automatic checkpoint back)."""
        try:
            if store_bytes(conn) > self.db_limit:
                # Steps of half the WAL's share, each checkpointed away before the next.
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                removed = prune_to_size(conn, self.db_limit * 7 // 8, self.wal_limit // 2,
                                        lambda c: c.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
                log.info("records store at its size cap: pruned the oldest log lines and %d "
                         "invocation record(s)", removed)
            self.truncate_wal(conn)
        except (OSError, sqlite3.Error) as exc:
            log.error("could not keep the records store within its size: %s", exc)

    def truncate_wal(self, conn: sqlite3.Connection) -> None:
        try:
            wal = os.stat(self.wal_path).st_size
        except FileNotFoundError:
            return
        if wal > self.wal_limit:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def prune(self, conn: sqlite3.Connection) -> None:
        try:
            removed = prune(conn, self.max_per_function, self.max_age_seconds)
        except sqlite3.Error as exc:
            log.error("could not prune invocation records: %s", exc)
            return
        if removed:
            log.info("pruned %d invocation record(s)", removed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sora.store.recorder")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--max-per-function", type=int, default=10_000)
    parser.add_argument("--max-age-hours", type=float, default=168.0)
    parser.add_argument("--max-store-mb", type=int, default=RecordsConfig.maxStoreMB)
    parser.add_argument("--min-free-disk-mb", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s [recorder %(process)d] %(levelname)s %(message)s")
    return Recorder(os.path.abspath(args.state_dir), args.max_per_function,
                    args.max_age_hours, args.max_store_mb, args.min_free_disk_mb).run()


if __name__ == "__main__":
    sys.exit(main())
