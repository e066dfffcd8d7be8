"""The disk caps' policies, without processes (issue 14 point 6): queue totals and caps, the
store's pruning to a size, log rotation and the per-invocation allowance, free space."""
import asyncio
import os
import time
from pathlib import Path

import pytest

from sora.config import LogsConfig
from sora.events.intake import EventIntake, LowDisk, QueueFull
from sora.store import queue
from sora.store.db import QUEUE_FILE, connect, connect_queue
from sora.store.free_space import FreeSpace
from sora.store.records import commit, prune_to_size, store_bytes
from sora.worker.logs import FunctionLog


def event(rid, fn="fn", payload=b"x" * 100):
    return (rid, fn, "invoke", payload, time.time())


def test_enqueue_stores_only_what_fits_the_functions_caps(tmp_path):
    conn = connect_queue(str(tmp_path))
    caps = {"fn": (3, 250)}
    assert queue.enqueue(conn, [event("a"), event("b"), event("c", payload=b"y" * 60)],
                         caps) == [True, True, False]       # c: 260 bytes > 250
    assert queue.enqueue(conn, [event("d", payload=b"z" * 50), event("e", payload=b"")],
                         caps) == [True, False]              # e: a 4th event
    assert queue.enqueue(conn, [event("o", fn="other")], caps) == [True]  # no cap
    assert queue.stored_totals(conn, "fn") == (3, 250)
    assert conn.execute("SELECT COUNT(*) FROM events WHERE function = 'fn'").fetchone()[0] == 3
    # Every state counts; an acknowledged (deleted) event frees its room.
    leased = queue.lease(conn, "fn", 1, time.time(), 30)
    queue.bury(conn, leased[0].id, "RetriesExhausted", None)
    assert queue.enqueue(conn, [event("f")], caps) == [False]
    queue.discard(conn, "fn", None)
    assert queue.stored_totals(conn, "fn") == (2, 150)
    assert queue.enqueue(conn, [event("f")], caps) == [True]


def test_a_queue_from_before_the_totals_is_counted_once(tmp_path):
    conn = connect_queue(str(tmp_path))
    queue.enqueue(conn, [event("a"), event("b", payload=b"12345")])
    conn.executescript("DROP TRIGGER event_totals_add; DROP TRIGGER event_totals_remove; "
                       "DROP TABLE event_totals; DROP TABLE sora_schema; "
                       "PRAGMA user_version = 0;")
    conn.close()
    again = connect_queue(str(tmp_path))
    assert queue.stored_totals(again, "fn") == (2, 105)
    assert again.execute("PRAGMA user_version").fetchone()[0] == 1


def test_intake_refuses_past_the_caps_and_while_the_disk_is_low(tmp_path):
    async def scenario():
        intake = EventIntake(str(tmp_path))
        await intake.accept("r1", "fn", "invoke", b"{}", (1, 1 << 20))
        with pytest.raises(QueueFull):
            await intake.accept("r2", "fn", "invoke", b"{}", (1, 1 << 20))
        intake.free_space.min_free = 1 << 62   # more than any disk has
        with pytest.raises(LowDisk):
            await intake.accept("r3", "other", "invoke", b"{}")
        stored = intake._conn.execute("SELECT request_id FROM events").fetchall()
        intake.close()
        return [r[0] for r in stored]
    (Path(tmp_path) / "run").mkdir()
    assert asyncio.run(scenario()) == ["r1"]
    assert os.path.exists(tmp_path / QUEUE_FILE)


def test_prune_to_size_removes_the_oldest_first(tmp_path):
    conn = connect(str(tmp_path))
    for i in range(40):
        rid = f"r{i:03d}"
        commit(conn, [(rid, "fn", "$LATEST", "http", time.time(), 1.0, "ok", None, 0, None,
                       40, None)],
               [("fn", rid, time.time(), "stdout", "l" * 500) for _ in range(100)])
    used = store_bytes(conn)
    removed = prune_to_size(conn, used // 2, used // 8)
    assert store_bytes(conn) <= used // 2
    left = [r[0] for r in conn.execute("SELECT request_id FROM invocations ORDER BY id")]
    assert removed == 40 - len(left) and left == [f"r{i:03d}" for i in range(40 - len(left), 40)]
    oldest_line = conn.execute("SELECT MIN(request_id) FROM log_lines").fetchone()[0]
    assert oldest_line >= f"r{40 - len(left) - 1:03d}"


class Lines:
    def __init__(self):
        self.sent = {}

    def lines(self, function, request_id, stream, lines):
        self.sent.setdefault(request_id, []).extend(lines)


def test_the_log_file_rotates_and_keeps_its_files(tmp_path):
    log = FunctionLog(str(tmp_path), "fn", logs=LogsConfig(maxFileMB=1, keepFiles=2))
    line = b"p" * 1000
    for _ in range(5000):   # ~5 MB
        log.write("r1", "stdout", [line] * 1)
    log.flush()
    files = sorted(os.listdir(tmp_path / "logs"))
    assert files == ["fn.log", "fn.log.1", "fn.log.2"]
    assert all(os.path.getsize(tmp_path / "logs" / f) <= 1 << 20 for f in files)
    # One batch bigger than a whole file is split over files, never one file past its size.
    log.write("r2", "stdout", [line] * 3000)
    log.flush()
    assert all(os.path.getsize(tmp_path / "logs" / f) <= 1 << 20
               for f in os.listdir(tmp_path / "logs"))
    log.close()


def test_a_second_writer_follows_a_rotation_made_by_the_first(tmp_path):
    logs = LogsConfig(maxFileMB=1, keepFiles=1)
    a = FunctionLog(str(tmp_path), "fn", logs=logs)
    b = FunctionLog(str(tmp_path), "fn", logs=logs)
    line = b"q" * 1000
    for _ in range(1500):
        a.write("ra", "stdout", [line])
        b.write("rb", "stdout", [line])
    a.flush()
    b.flush()
    files = sorted(os.listdir(tmp_path / "logs"))
    assert files == ["fn.log", "fn.log.1"]
    # Each file may pass its size by what the other writer wrote since its last check.
    assert all(os.path.getsize(tmp_path / "logs" / f) <= (1 << 20) * 17 // 16 + 2048
               for f in files)


def test_each_invocation_stores_at_most_its_allowance_then_a_marker(tmp_path):
    sink = Lines()
    log = FunctionLog(str(tmp_path), "fn", sink, stored_per_invocation=10_000)
    for _ in range(30):
        log.write("r1", "stdout", [b"a" * 999] * 2)
    log.write("r2", "stdout", [b"b" * 10])
    assert sum(len(x) + 1 for x in sink.sent["r1"][:-1]) <= 10_000
    assert b"rest of this invocation's lines are not stored" in sink.sent["r1"][-1]
    assert sink.sent["r2"] == [b"b" * 10]
    # Lines outside invocations get a fresh allowance once an invocation prints.
    for _ in range(20):
        log.write("-", "stderr", [b"c" * 999])
    assert b"not stored" in sink.sent["-"][-1]
    log.write("r3", "stdout", [b"d"])
    log.write("-", "stderr", [b"e"])
    assert sink.sent["-"][-1] == b"e"


def test_free_space_is_checked_at_most_once_per_interval(tmp_path, monkeypatch):
    calls = []
    real = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda p: calls.append(p) or real(p))
    space = FreeSpace(str(tmp_path), 1 << 62, "tests stop", interval=60)
    assert space.low() and space.low() and len(calls) == 1
    assert not FreeSpace(str(tmp_path), 0, "off").low() and len(calls) == 1
    space = FreeSpace(str(tmp_path), 1, "tests stop", interval=0)
    assert not space.low() and len(calls) == 2


def test_the_recorder_keeps_the_store_within_its_cap(tmp_path):
    from sora.store.recorder import Recorder
    recorder = Recorder(str(tmp_path), 1_000_000, 1000, max_store_mb=4)
    conn = connect(str(tmp_path))
    conn.execute(f"PRAGMA journal_size_limit = {recorder.wal_limit}")
    conn.execute("PRAGMA secure_delete = FAST")
    largest = 0
    for i in range(60):
        rid = f"r{i:04d}"
        commit(conn, [(rid, "fn", "$LATEST", "http", time.time(), 1.0, "ok", None, 0, None,
                       40, None)],
               [("fn", rid, time.time(), "stdout", "f" * 199) for _ in range(500)])
        recorder.keep_within_cap(conn)
        size = sum(os.path.getsize(tmp_path / n) for n in ("sora.db", "sora.db-wal")
                   if (tmp_path / n).exists())
        largest = max(largest, size)
    assert largest <= 4 << 20
    # The oldest went first; the newest are all there.
    kept = [r[0] for r in conn.execute("SELECT request_id FROM invocations ORDER BY id")]
    assert kept[0] > "r0000" and kept == [f"r{i:04d}" for i in range(60 - len(kept), 60)]


def test_the_caps_are_settings_with_clear_errors(tmp_path):
    from sora.config import ConfigError, load_function_config, load_host_config
    config = tmp_path / "host-config.yaml"
    config.write_text("functionPaths: [fn]\nserver: {httpPort: 1, maxEventBytes: 0}\n"
                      "logs: {maxFileMB: 0, keepFiles: 2}\nrecords: {maxStoreMB: 1}\n"
                      "minFreeDiskMB: -1\n")
    with pytest.raises(ConfigError) as caught:
        load_host_config(str(config))
    text = str(caught.value)
    for field in ("server.maxEventBytes", "logs.maxFileMB", "records.maxStoreMB",
                  "minFreeDiskMB"):
        assert f"{config}: {field}: expected an integer from" in text, text
    config.write_text("functionPaths: [fn]\nserver: {httpPort: 1}\n")
    host = load_host_config(str(config))
    assert (host.server.maxEventBytes, host.logs.maxFileMB, host.logs.keepFiles,
            host.records.maxStoreMB, host.records.maxLogBytesPerInvocation,
            host.minFreeDiskMB) == (262144, 32, 3, 1024, 1 << 20, 100)
    fn = tmp_path / "fn"
    fn.mkdir()
    (fn / "index.js").write_text("exports.handler = async () => 1;")
    (fn / "sora.yaml").write_text("name: fn\nlanguage: nodejs\nentrypoint: index.js\n"
                                  "eventInvoke: {maxQueuedEvents: 0}\n")
    with pytest.raises(ConfigError, match="eventInvoke.maxQueuedEvents: expected an integer"):
        load_function_config(str(fn))
    (fn / "sora.yaml").write_text("name: fn\nlanguage: nodejs\nentrypoint: index.js\n")
    assert (load_function_config(str(fn)).eventInvoke.maxQueuedEvents,
            load_function_config(str(fn)).eventInvoke.maxQueuedMB) == (100_000, 256)
