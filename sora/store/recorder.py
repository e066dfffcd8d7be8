"""The recorder: the one process that writes invocation records and log lines to the store.

Workers send a message per loop turn to `<stateDir>/run/records.sock` (`RecordSender`; the
clients too, for invocations lost with their worker, which cannot record them); the
recorder commits what gathered every FLUSH_INTERVAL in one transaction, and prunes the store
to its retention every PRUNE_INTERVAL. Keeping SQLite out of the workers keeps it off the
invocation path (no write, no lock, no GIL held by a writer thread beside the worker loop).

The store's size is capped (`records.maxStoreMB`, sora.db and its WAL together): the WAL gets
an eighth of it (at most 64 MB: `journal_size_limit`, automatic checkpoints at half that, and a
TRUNCATE checkpoint whenever readers let it grow past it), one commit takes at most a quarter of
the WAL's share (the rest waits in the socket for the next turn, so a flood of log lines is
stored at a bounded rate, ~2.5 × that share a second), and after each commit the oldest records
and log lines are pruned once the database's pages in use pass the cap less two WAL shares.
While the state dir is low on free space (`minFreeDiskMB`) the recorder reads nothing: the
senders keep their batches (each at most UNACKED_MAX_BYTES, its oldest dropped beyond that) and
send them again once space is back.

On PostgreSQL (`store: {url: ...}`, read from the host config given with `--config`, never from
the command line, which every process may read) the recorder commits the same batches through
sora.store.backend. The size cap and the WAL's share are SQLite's (a delete does not make a
PostgreSQL table smaller: pruning to a size would find it still too big and delete everything),
so there records are kept within `records.maxPerFunction` and `maxAgeHours` only, and the
state dir's free space is not asked (the records are not on its disk). While the database
cannot be reached the recorder reads nothing (the senders keep their batches, as for a low
disk) and tries again every STORE_RETRY seconds; the pool reconnects by itself.

Nothing is lost when the recorder dies (`kill -9` under load lost what it had read and not yet
committed, ~0.1 s of every worker's records): each message is a numbered batch that its
sender keeps until the recorder acknowledges it, and the recorder acknowledges only after the
commit. A sender resends what is unacknowledged RESEND_AFTER after its last progress (so once
a restarted recorder listens), oldest first. The recorder takes each sender's batches in order
and only once: `record_senders` in the store holds, per sender, the last batch committed,
updated in the same transaction as the batch, so a batch resent after its commit (its
acknowledgement died with the recorder) is acknowledged again and not stored twice, and a batch
after a gap (its predecessor died in the old recorder's memory) waits for the resend of the
gap. This is go-back-N over a DEALER (sender) -> ROUTER (recorder) pair.

Across hosts (issue 16): the main host's recorder also binds a tcp ROUTER, a CURVE server taking
the hosts of its keys folder's allow-list (`--cluster-listen` with `--keys`), on the port after
`cluster.listen`'s (`cluster.listen: tcp://0.0.0.0:7100` -> records on 7101); a joined host's
senders connect there as CURVE clients (`RecordSender(..., endpoint=, keys=, server_key=)`).
The same protocol runs over both sockets; a sender key names its sender on every host.

    sender -> recorder   [<sender key> <seq> <oldest seq held>, lines]
    recorder -> sender   [<last seq of that sender committed>]

The sender key (`<pid>.<random>`) names one sender across recorder restarts (a ZeroMQ routing
id names only one connection). "Oldest seq held" lets a sender that had to drop batches (it
keeps at most UNACKED_MAX_BYTES) say so: the recorder then skips the dropped ones instead of
waiting for them forever.

Lines: joined by "\\n", fields by "\\t" (a log line's text is the last field, so it may hold
tabs; it never holds a newline):
    R <request id> <function> <version> <trigger> <start> <duration ms> <status> <error type|-> <cold 0/1> <error message as a JSON string|-> <max memory used MB|-> <init duration ms|->
    L <function> <request id> <time> <stream> <text>
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections import deque

import zmq

from .. import protocol as p
from ..cluster.keys import (KeyRing, KeysError, client_socket, load_keys, server_socket,
                            start_authenticator)
from ..config import (ConfigError, RecordsConfig, StoreConfig, load_host_config,
                      records_endpoint_of)
from ..hotpath import ZERO_COPY_OVER, quiet_gc, recv_ready
from . import backend
from .free_space import FreeSpace
from .records import commit, forget_senders, last_batches, prune, prune_to_size, store_bytes

log = logging.getLogger("sora.recorder")
FLUSH_INTERVAL = 0.1
PRUNE_INTERVAL = 60.0
SEND_HWM = 100_000
# A batch unacknowledged this long after the last progress is resent with all that follows
# it. Acknowledgements come every FLUSH_INTERVAL while the recorder keeps up, so this is ten
# of them; waits double while resends make no progress (a recorder that is down, or far
# behind and better not flooded with copies), up to RESEND_MAX.
RESEND_AFTER = 1.0
RESEND_MAX = 8.0
# While no recorder listens (a send fails at once), how often to try again.
RETRY_UNREACHABLE = 0.2
# How long a worker lets a batch gather more invocations before sending it (`flush(now)`): each
# batch wakes the recorder, a process of its own on the same cores as the invocation path; one
# per loop turn was a wake-up per call at concurrency 1 and several per ms under load.
BATCH_WAIT = 0.02
# ... unless it holds this much already: a function printing as fast as it can would otherwise
# make 20 ms batches of megabytes, and the recorder takes a batch whole, so one commit (and the
# WAL) grew past its share of records.maxStoreMB (test_disk_limits saw the store 9 % over).
BATCH_MAX_BYTES = 64 << 10
# What one sender keeps unacknowledged: a worker whose recorder is gone drops its oldest
# batches beyond this (with a warning) rather than grow without bound. ~200,000 records.
UNACKED_MAX_BYTES = 32 << 20
# How long the store remembers a sender's last batch after its last one: only a sender that
# still holds a batch the recorder committed can resend it, and it does so within seconds.
SENDER_MEMORY_SECONDS = 86_400.0
# The part of an error message a record keeps (a function may throw megabytes).
MAX_ERROR_MESSAGE = 4096
# How long a stopping worker waits for the recorder to acknowledge its last batches.
CLOSE_WAIT = 2.0

# While the store cannot be opened or written (PostgreSQL down), how often to try again.
STORE_RETRY = 1.0

# The write-ahead log's share of `records.maxStoreMB` is an eighth, at most this.
WAL_SHARE_MAX = 64 << 20

_NOBLOCK = int(zmq.NOBLOCK)


def records_socket(state_dir: str) -> str:
    """The recorder's socket file: it exists once the recorder listens."""
    return os.path.join(p.run_dir(state_dir), "records.sock")


def records_endpoint(state_dir: str) -> str:
    return "ipc://" + records_socket(state_dir)


def _text(value: str) -> bytes:
    return value.replace("\t", " ").replace("\n", " ").encode("utf-8", "replace")


class RecordSender:
    """The worker's side: gathers records and log lines, sends them once per loop turn as one
    numbered batch, and keeps each batch until the recorder acknowledges it."""

    def __init__(self, state_dir: str, ctx: zmq.Context, endpoint: str | None = None,
                 keys: KeyRing | None = None, server_key: bytes | None = None):
        """To this host's recorder (records.sock in `state_dir`), or, with `endpoint`, to a tcp
        one (the main host's: `cluster.controlPlane`'s port + 1) as a CURVE client with
        `keys`, the recorder's host's public key being `server_key`."""
        if endpoint and endpoint.startswith("tcp://"):
            if keys is None or server_key is None:
                raise ValueError("a tcp records endpoint needs keys and the server's key (CURVE)")
            self.sock = client_socket(ctx, zmq.DEALER, keys, server_key)
        else:
            self.sock = ctx.socket(zmq.DEALER)
        # Nothing is queued in ZeroMQ for a recorder that is not there (a send then fails at
        # once): batches wait here, and are sent when it is back, each once.
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        self.sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint or records_endpoint(state_dir))
        self.key = b"%d.%s" % (os.getpid(), os.urandom(6).hex().encode())
        self.batch: list[bytes] = []
        self.batch_bytes = 0   # the log lines' part of the batch (records are ~150 bytes)
        self.batch_since: float | None = None   # when flush(now) first saw this batch
        self.seq = 0
        # (seq, message, line count) of each batch not yet acknowledged, oldest first; the
        # seqs are consecutive.
        self.unacked: deque[tuple[int, bytes, int]] = deque()
        self.unacked_bytes = 0
        self.resend_wait = RESEND_AFTER
        self.resend_at = 0.0
        self.dropped = 0

    def record(self, request_id: bytes, function: bytes, trigger: bytes, start: float,
               duration_ms: float, status: bytes, error_type: str | None, cold: bool,
               version: bytes = b"$LATEST", error_message: str | None = None,
               max_memory_mb: int | None = None, init_ms: float | None = None) -> None:
        """One finished invocation (bytes where the worker has bytes: this is per request).
        `error_message` is what the caller's errorMessage said (its first
        MAX_ERROR_MESSAGE characters), escaped as JSON so that its tabs and newlines stay.
        `max_memory_mb` and `init_ms` are its REPORT line's Max Memory Used and Init
        Duration (None: no instance ran it; a warm start)."""
        self.batch.append(b"R\t%s\t%s\t%s\t%s\t%.6f\t%.3f\t%s\t%s\t%d\t%s\t%s\t%s" % (
            request_id, function, version, trigger, start, duration_ms, status,
            _text(error_type) if error_type else b"-", cold,
            b"-" if error_message is None else
            json.dumps(error_message[:MAX_ERROR_MESSAGE]).encode(),
            b"-" if max_memory_mb is None else b"%d" % max_memory_mb,
            b"-" if init_ms is None else b"%.3f" % init_ms))

    def lines(self, function: str, request_id: str, stream: str, lines: list[bytes]) -> None:
        head = b"L\t%s\t%s\t%.6f\t%s\t" % (function.encode(), request_id.encode(), time.time(),
                                           stream.encode())
        self.batch.extend(head + line for line in lines)
        self.batch_bytes += sum(map(len, lines))

    def flush(self, now: float | None = None) -> float | None:
        """Once per loop turn: take acknowledgements, send the batch, resend what is overdue.
        With `now` (monotonic; the worker's loop), a batch is sent once it is BATCH_WAIT old,
        so that it gathers the invocations of several turns; returns the seconds until it is
        due while it waits, else None. Without, it is sent at once. With nothing gathered and
        nothing unacknowledged it costs one test."""
        if self.unacked:
            self._take_acks()
        if self.batch and now is not None and self.batch_bytes < BATCH_MAX_BYTES:
            if self.batch_since is None:
                self.batch_since = now
            wait = self.batch_since + BATCH_WAIT - now
            if wait > 0.001:   # (the worker's poll counts whole ms: less would spin)
                if self.unacked and now >= self.resend_at:
                    self._resend()
                return wait
        if self.batch:
            self.batch_since = None
            self.batch_bytes = 0
            self.seq += 1
            message = b"\n".join(self.batch)
            if not self.unacked:
                self.resend_at = time.monotonic() + self.resend_wait
            self.unacked.append((self.seq, message, len(self.batch)))
            self.unacked_bytes += len(message)
            self.batch = []
            if self.unacked_bytes > UNACKED_MAX_BYTES:
                self._drop_oldest()
            if not self._send(self.seq, message):
                self.resend_at = min(self.resend_at, time.monotonic() + RETRY_UNREACHABLE)
        if self.unacked and time.monotonic() >= self.resend_at:
            self._resend()
        return None

    def _send(self, seq: int, message: bytes) -> bool:
        try:
            self.sock.send(b"%s %d %d" % (self.key, seq, self.unacked[0][0]),
                           _NOBLOCK | zmq.SNDMORE)
            self.sock.send(message, _NOBLOCK, copy=len(message) <= ZERO_COPY_OVER)
            return True
        except zmq.Again:
            return False   # no recorder (or it is far behind): the batch waits here

    def _take_acks(self) -> None:
        progress = False
        for frames in recv_ready(self.sock):
            try:
                acked = int(frames[-1])
            except ValueError:
                continue
            while self.unacked and self.unacked[0][0] <= acked:
                _, message, _ = self.unacked.popleft()
                self.unacked_bytes -= len(message)
                progress = True
        if progress:
            self.resend_wait = RESEND_AFTER
            self.resend_at = time.monotonic() + RESEND_AFTER

    def _resend(self) -> None:
        """Go back to the oldest batch not acknowledged and send it and all that follow."""
        sent = 0
        for seq, message, _ in self.unacked:
            if not self._send(seq, message):
                break
            sent += 1
        if not sent:   # no recorder listens: look again soon, it may be restarting
            self.resend_at = time.monotonic() + RETRY_UNREACHABLE
            return
        self.resend_wait = min(self.resend_wait * 2, RESEND_MAX)
        self.resend_at = time.monotonic() + self.resend_wait

    def _drop_oldest(self) -> None:
        lines = 0
        while self.unacked_bytes > UNACKED_MAX_BYTES and len(self.unacked) > 1:
            _, message, count = self.unacked.popleft()
            self.unacked_bytes -= len(message)
            lines += count
        if self.dropped == 0 or (self.dropped + lines) // 10_000 > self.dropped // 10_000:
            log.warning("the recorder acknowledges nothing: %d record line(s) dropped, %d MB "
                        "kept to resend",
                        self.dropped + lines, self.unacked_bytes >> 20)
        self.dropped += lines

    def close(self, wait: float = CLOSE_WAIT) -> None:
        """Send what is left and wait up to `wait` seconds for the recorder to acknowledge
        it all (resending as need be), then close."""
        self.flush()
        deadline = time.monotonic() + wait
        while self.unacked and (left := deadline - time.monotonic()) > 0:
            self.sock.poll(max(1, int(min(left, self.resend_at - time.monotonic()) * 1000)))
            self.flush()
        if self.unacked:
            log.warning("%d record line(s) not acknowledged by the recorder at exit",
                        sum(count for _, _, count in self.unacked))
        self.sock.close(linger=0)


def _reported(fields: list[str]) -> tuple[int | None, float | None]:
    """Max memory used (MB) and init duration (ms) of a record line, None where "-" (or
    absent: a line of a sender from before they were recorded)."""
    memory, init = (fields + ["-", "-"])[:2]
    return (None if memory == "-" else int(memory)), (None if init == "-" else float(init))


def parse(message: bytes, records: list[tuple], lines: list[tuple]) -> None:
    for item in message.split(b"\n"):
        kind = item[:2]
        try:
            if kind == b"R\t":
                f = item.decode("utf-8", "replace").split("\t")
                records.append((f[1], f[2], f[3], f[4], float(f[5]), float(f[6]), f[7],
                                None if f[8] == "-" else f[8], int(f[9]),
                                None if len(f) < 11 or f[10] == "-" else json.loads(f[10]),
                                *_reported(f[11:13])))
            elif kind == b"L\t":
                _, fn, rid, at, stream, text = item.split(b"\t", 5)
                lines.append((fn.decode(), rid.decode(), float(at), stream.decode(),
                              text.decode("utf-8", "replace")))
        except (IndexError, ValueError):
            log.warning("ignored a malformed record line: %r", item[:200])


class Recorder:
    def __init__(self, state_dir: str, max_per_function: int, max_age_hours: float,
                 max_store_mb: int = RecordsConfig.maxStoreMB, min_free_mb: int = 0,
                 cluster_listen: str | None = None, keys: KeyRing | None = None,
                 metrics: bool = False, store: StoreConfig | None = None):
        self.state_dir = state_dir
        self.store = store or StoreConfig()
        self.sqlite = self.store.kind == "sqlite"
        # Invocation metrics are counted here, from the records committed (every status, on
        # every host of a cluster, off the invocation path): sora.metrics.definitions.
        self.metrics = None
        if metrics:
            from ..metrics import registry
            self.metrics = registry.start(state_dir, "recorder")
        # Also take joined hosts' records on tcp (cluster.listen's port + 1), CURVE.
        self.tcp_endpoint = records_endpoint_of(cluster_listen) if cluster_listen else None
        self.keys = keys
        self.max_per_function = max_per_function
        self.max_age_seconds = max_age_hours * 3600
        self.signals: list[int] = []
        self.last_batch: dict[bytes, int] = {}   # sender key -> last batch committed
        store = max_store_mb << 20
        self.wal_limit = min(WAL_SHARE_MAX, store // 8)
        # The WAL passes its share by up to one commit (a worker's message is never split),
        # and more while a reader holds a checkpoint back: the database keeps a second share
        # free for that.
        self.db_limit = store - 2 * self.wal_limit
        self.commit_bytes = self.wal_limit // 4
        self.wal_path = os.path.join(state_dir, "sora.db-wal")
        # The records are on the state dir's disk only with SQLite.
        self.free_space = FreeSpace(state_dir, min_free_mb << 20 if self.sqlite else 0,
                                    "invocation records and log lines wait with their senders")
        self.store_down_until = 0.0

    def _on_signal(self, signum, _frame) -> None:
        self.signals.append(signum)  # only queue: the loop acts on it

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        conn = self.open_store()
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.RCVHWM, SEND_HWM)
        sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        sock.bind(records_endpoint(self.state_dir))
        sockets = [sock]
        auth = None
        if self.tcp_endpoint:
            auth = start_authenticator(ctx, self.keys)
            tcp = server_socket(ctx, zmq.ROUTER, self.keys)
            tcp.setsockopt(zmq.RCVHWM, SEND_HWM)
            tcp.setsockopt(zmq.SNDHWM, SEND_HWM)
            sockets.append(tcp)
            tcp.bind(self.tcp_endpoint)
            log.info("recorder takes other hosts' records on %s", self.tcp_endpoint)
        quiet_gc()
        next_prune = time.monotonic()
        log.info("recorder %d ready", os.getpid())
        try:
            while not self.signals:
                now = time.monotonic()
                if conn is None and now >= self.store_down_until:
                    conn = self.open_store()
                if conn is not None and now >= next_prune:
                    self.prune(conn)
                    self.forget_senders(conn)
                    next_prune = now + PRUNE_INTERVAL
                # A batching window, not a poll: committing on every message would make a
                # transaction per worker loop turn. A stop signal is seen within it.
                time.sleep(FLUSH_INTERVAL)
                if conn is None or self.free_space.low() or \
                        time.monotonic() < self.store_down_until:
                    continue   # nothing read, nothing acknowledged: the senders keep it
                for each in sockets:
                    self.drain(each, conn)
                if self.sqlite:
                    self.keep_within_cap(conn)
            # Stopping: what the workers sent before they stopped is still committed.
            if conn is not None and not self.free_space.low():
                for each in sockets:
                    self.drain(each, conn)
        finally:
            for each in sockets:
                each.close(linger=0)
            if auth is not None:
                auth.stop()
            ctx.term()
            if conn is not None:
                conn.close()
            backend.close_pools()
        return 0

    def open_store(self):
        """The store's records part, set up for the recorder; None (logged, tried again
        after STORE_RETRY) while it cannot be reached. A schema newer than this Sora's
        ends the recorder (SchemaTooNew: the supervisor refuses to start on one)."""
        try:
            conn = backend.connect(self.store, self.state_dir, "records")
            if self.sqlite:
                conn.execute(f"PRAGMA journal_size_limit = {self.wal_limit}")
                # This build zeroes every freed page (SECURE_DELETE), which writes each page
                # pruning frees into the WAL; FAST zeroes only what costs no extra write.
                conn.execute("PRAGMA secure_delete = FAST")
                page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                conn.execute("PRAGMA wal_autocheckpoint = "
                             f"{max(16, self.wal_limit // 2 // page_size)}")
            self.last_batch = last_batches(conn)
        except backend.SchemaTooNew:
            raise
        except backend.ERRORS as exc:
            log.error("cannot open the records store (records wait with their senders; "
                      "trying again every %.0f s): %s", STORE_RETRY, exc)
            self.store_down_until = time.monotonic() + STORE_RETRY
            return None
        return conn

    def drain(self, sock: zmq.Socket, conn: backend.Connection) -> None:
        """Commit what arrived, at most `commit_bytes` of it (the rest waits in the socket for
        the next turn: the WAL's size), then acknowledge to each sender its last batch
        committed."""
        records: list[tuple] = []
        lines: list[tuple] = []
        taken: dict[bytes, int] = {}     # sender key -> last batch taken in this drain
        replies: dict[bytes, bytes] = {}   # routing id -> sender key, to acknowledge
        size = 0
        while size < self.commit_bytes:
            try:
                frames = sock.recv_multipart(_NOBLOCK)
            except zmq.Again:
                break
            if len(frames) != 3:
                log.warning("ignored a malformed records message of %d frame(s)", len(frames))
                continue
            routing_id, header, message = frames
            size += len(message)
            try:
                key, seq_text, oldest_text = header.split(b" ")
                seq, oldest = int(seq_text), int(oldest_text)
            except ValueError:
                log.warning("ignored a records message with a malformed header: %r",
                            header[:100])
                continue
            last = taken.get(key, self.last_batch.get(key, 0))
            # Batches the sender gave up (oldest held above the next expected) are skipped.
            if seq == max(last, oldest - 1) + 1:
                parse(message, records, lines)
                taken[key] = seq
            # seq at or below `last`: committed already, its acknowledgement was lost (it is
            # acknowledged again below). Above the next expected: one before it was lost with
            # a recorder; the sender resends from there.
            replies[routing_id] = key
        try:
            commit(conn, records, lines, taken)
        except backend.ERRORS as exc:
            # Not acknowledged: the senders keep the batches and send them again.
            log.error("could not store %d record(s) and %d log line(s): %s", len(records),
                      len(lines), exc)
            if isinstance(exc, backend.StoreUnavailable):
                self.store_down_until = time.monotonic() + STORE_RETRY
            return
        self.last_batch.update(taken)
        if self.metrics is not None and records:
            # After the commit: a batch is committed once (a resent one is not parsed again),
            # so it is counted once; a recorder killed between the two loses that count.
            self.metrics.count_records(records)
        for routing_id, key in replies.items():
            try:
                sock.send_multipart([routing_id, b"%d" % self.last_batch.get(key, 0)],
                                    _NOBLOCK)
            except zmq.ZMQError:
                pass   # the sender is gone or far behind: it resends, and is told then

    def keep_within_cap(self, conn: backend.Connection) -> None:
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
        except (OSError, *backend.ERRORS) as exc:
            log.error("could not keep the records store within its size: %s", exc)

    def truncate_wal(self, conn: backend.Connection) -> None:
        try:
            wal = os.stat(self.wal_path).st_size
        except FileNotFoundError:
            return
        if wal > self.wal_limit:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def prune(self, conn: backend.Connection) -> None:
        try:
            removed = prune(conn, self.max_per_function, self.max_age_seconds)
        except backend.ERRORS as exc:
            log.error("could not prune invocation records: %s", exc)
            return
        if removed:
            log.info("pruned %d invocation record(s)", removed)

    def forget_senders(self, conn: backend.Connection) -> None:
        try:
            for key in forget_senders(conn, time.time() - SENDER_MEMORY_SECONDS):
                self.last_batch.pop(key, None)
        except backend.ERRORS as exc:
            log.error("could not forget old record senders: %s", exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sora.store.recorder")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--max-per-function", type=int, default=10_000)
    parser.add_argument("--max-age-hours", type=float, default=168.0)
    parser.add_argument("--max-store-mb", type=int, default=RecordsConfig.maxStoreMB)
    parser.add_argument("--min-free-disk-mb", type=int, default=0)
    parser.add_argument("--cluster-listen", metavar="tcp://ADDR:PORT", help="the host's "
                        "cluster.listen: also take other hosts' records on ADDR:PORT+1 (CURVE)")
    parser.add_argument("--keys", metavar="DIR", help="the CURVE keys folder (cluster.keys); "
                        "needed with --cluster-listen")
    parser.add_argument("--metrics", action="store_true", help="count the records into the "
                        "host's metrics folder (<state dir>/metrics, server.metrics)")
    parser.add_argument("--config", metavar="PATH", help="the host config, for its `store:` "
                        "(the URL of a PostgreSQL store is never put on a command line); "
                        "default: SQLite in the state dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s [recorder %(process)d] %(levelname)s %(message)s")
    keys = None
    if args.cluster_listen:
        if not args.keys:
            parser.error("--cluster-listen needs --keys (every tcp socket uses CURVE)")
        try:
            keys = load_keys(args.keys)
        except KeysError as exc:
            parser.error(f"--keys: {exc}")
    store = None
    if args.config:
        try:
            store = load_host_config(args.config, read_functions=False).store
        except ConfigError as exc:
            parser.error(str(exc))
    return Recorder(os.path.abspath(args.state_dir), args.max_per_function,
                    args.max_age_hours, args.max_store_mb, args.min_free_disk_mb,
                    args.cluster_listen, keys, args.metrics, store).run()


if __name__ == "__main__":
    sys.exit(main())
