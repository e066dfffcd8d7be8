"""The store's wire format, commits, retention and queries, on a real SQLite file and a real
PostgreSQL database (`store_backend`)."""
import os
import time

import zmq

from sora.store import recorder as recorder_module
from sora.store import records
from sora.store import backend
from sora.store.recorder import Recorder, RecordSender, parse, records_endpoint
from sora.store.records import commit
from tests.support import wait_for


def connect(state, store):
    return backend.connect(store, state, "records")


def rec(rid, fn="fn", start=None, status="ok"):
    """A record row as the recorder commits it."""
    return (rid, fn, "$LATEST", "http", start or time.time(), 1.5, status,
            None if status == "ok" else "Error", 0, None if status == "ok" else "boom", 40, None)


def test_sender_batches_per_turn_and_parse_reads_it_back(tmp_path):
    (tmp_path / "run").mkdir()
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(records_endpoint(str(tmp_path)))
    sender = RecordSender(str(tmp_path), ctx)
    wait_connected(sender)
    sender.record(b"r1", b"fn", b"invoke", 1700000000.25, 12.5, b"error", "Type\tError",
                  True, error_message="first line\n\tsecond \"line\"", max_memory_mb=45,
                  init_ms=123.4567)
    sender.record(b"r2", b"fn", b"http", 1700000000.5, 1.0, b"ok", None, False)
    sender.lines("fn", "r1", "stderr", [b"a\ttabbed line", b""])
    sender.flush()
    assert router.poll(2000)
    _, header, message = router.recv_multipart()
    assert router.poll(100) == 0  # one message for the whole turn
    assert header == sender.key + b" 1 1"
    rows, lines = [], []
    parse(message, rows, lines)
    assert rows == [("r1", "fn", "$LATEST", "invoke", 1700000000.25, 12.5, "error",
                     "Type Error", 1, "first line\n\tsecond \"line\"", 45, 123.457),
                    ("r2", "fn", "$LATEST", "http", 1700000000.5, 1.0, "ok", None, 0, None,
                     None, None)]
    assert [(fn, rid, stream, text) for fn, rid, _, stream, text in lines] == [
        ("fn", "r1", "stderr", "a\ttabbed line"), ("fn", "r1", "stderr", "")]
    sender.close(wait=0)
    router.close()
    ctx.term()


def test_a_worker_batch_gathers_for_batch_wait_then_goes_as_one(tmp_path):
    """flush(now) (the worker's loop) holds a batch until it is BATCH_WAIT old, so several
    loop turns share one message (one wake-up of the recorder); flush() sends at once."""
    (tmp_path / "run").mkdir()
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(records_endpoint(str(tmp_path)))
    sender = RecordSender(str(tmp_path), ctx)
    wait_connected(sender)
    wait = recorder_module.BATCH_WAIT
    sender.record(b"r1", b"fn", b"http", 1700000000.0, 1.0, b"ok", None, False)
    assert abs(sender.flush(100.0) - wait) < 1e-9   # first seen now: due in BATCH_WAIT
    sender.record(b"r2", b"fn", b"http", 1700000000.0, 1.0, b"ok", None, False)
    assert abs(sender.flush(100.0 + wait / 2) - wait / 2) < 1e-9
    assert router.poll(100) == 0   # nothing sent yet
    assert sender.flush(100.0 + wait) is None
    assert router.poll(2000)
    rows, lines = [], []
    parse(router.recv_multipart()[-1], rows, lines)
    assert [r[0] for r in rows] == ["r1", "r2"]   # both turns in one message
    sender.record(b"r3", b"fn", b"http", 1700000000.0, 1.0, b"ok", None, False)
    assert sender.flush() is None   # without `now` (gateways, close): at once
    assert router.poll(2000)
    router.recv_multipart()
    # A batch of log lines past BATCH_MAX_BYTES goes at once, however young: the recorder
    # takes a batch whole, and megabytes in one commit grew the WAL past its share.
    sender.lines("fn", "r4", "stdout", [b"x" * 1024] * (recorder_module.BATCH_MAX_BYTES // 1024))
    assert sender.flush(200.0) is None
    assert router.poll(2000)
    sender.close(wait=0)
    router.close()
    ctx.term()


def wait_connected(sender, timeout=5.0):
    """A sender's first send fails until its connection is up (ZMQ_IMMEDIATE)."""
    deadline = time.monotonic() + timeout
    while not (sender.sock.poll(0, zmq.POLLOUT) & zmq.POLLOUT):
        assert time.monotonic() < deadline, "the sender never connected"
        time.sleep(0.01)


def stored(conn):
    rows = [r[0] for r in conn.execute("SELECT request_id FROM invocations ORDER BY id")]
    lines = [r[0] for r in conn.execute("SELECT line FROM log_lines ORDER BY id")]
    return rows, lines


def settle(sender, recorder, sock, conn):
    """Send, receive and acknowledge until the sender holds nothing unacknowledged."""
    def settled():
        sender.flush()
        recorder.drain(sock, conn)
        return not sender.unacked
    wait_for(settled, timeout=15, interval=0.05)


def one_turn(sender, rid):
    sender.record(rid.encode(), b"fn", b"http", time.time(), 1.0, b"ok", None, False)
    sender.lines("fn", rid, "stdout", [f"line of {rid}".encode()])
    sender.flush()


def test_batches_are_acknowledged_after_commit_and_resent_until_then(store_backend, tmp_path):
    """A recorder killed between receiving and committing loses nothing: the sender resends
    what it did not acknowledge to the next one, and a batch resent after its commit (its
    acknowledgement lost) is acknowledged again, not stored twice."""
    state = str(tmp_path)
    (tmp_path / "run").mkdir()
    ctx = zmq.Context()
    conn = connect(state, store_backend)
    first = ctx.socket(zmq.ROUTER)
    first.bind(records_endpoint(state))
    sender = RecordSender(state, ctx)
    wait_connected(sender)
    one_turn(sender, "a")
    one_turn(sender, "b")
    recorder = Recorder(state, 100, 1, store=store_backend)
    wait_for(lambda: first.poll(0) and recorder.drain(first, conn) is None and
             stored(conn)[0] == ["a", "b"], timeout=5)
    one_turn(sender, "c")   # received by the first recorder, never committed: it dies
    assert first.poll(2000)
    # (once the acknowledgement of a and b has arrived)
    wait_for(lambda: sender.flush() or [s for s, _, _ in sender.unacked] == [3], timeout=5)
    first.close(linger=0)
    one_turn(sender, "d")   # sent to no one, or into the dead connection
    # The next recorder: a fresh process that knows only the store.
    second_ctx = zmq.Context()
    second = second_ctx.socket(zmq.ROUTER)
    os.unlink(tmp_path / "run" / "records.sock")
    second.bind(records_endpoint(state))
    recorder = Recorder(state, 100, 1, store=store_backend)
    recorder.last_batch = records.last_batches(conn)
    one_turn(sender, "e")

    settle(sender, recorder, second, conn)
    assert stored(conn) == (["a", "b", "c", "d", "e"],
                            [f"line of {x}" for x in "abcde"])
    # A batch the recorder committed is sent again (its acknowledgement was lost): it is
    # acknowledged, and not stored a second time.
    sender.sock.send_multipart([sender.key + b" 5 5", b"R\te\tfn\t$LATEST\thttp\t1.0\t1.0"
                                b"\tok\t-\t0\nL\tfn\te\t1.0\tstdout\tdup"])
    wait_for(lambda: second.poll(0), timeout=5)
    recorder.drain(second, conn)
    assert stored(conn)[1][-1] == "line of e"
    assert sender.sock.poll(2000) and sender.sock.recv_multipart() == [b"5"]
    sender.close(wait=0)
    second.close(linger=0)
    second_ctx.term()
    ctx.term()


def test_a_sender_that_dropped_batches_is_not_waited_for(store_backend, tmp_path, monkeypatch):
    """Past its bound a sender drops its oldest batches and says so: the recorder takes what
    follows instead of waiting forever for what will never come."""
    state = str(tmp_path)
    (tmp_path / "run").mkdir()
    monkeypatch.setattr(recorder_module, "UNACKED_MAX_BYTES", 200)
    ctx = zmq.Context()
    conn = connect(state, store_backend)
    sender = RecordSender(state, ctx)
    for i in range(10):   # no recorder yet
        one_turn(sender, f"r{i}")
    assert sender.dropped and sender.unacked[0][0] > 1
    router = ctx.socket(zmq.ROUTER)
    router.bind(records_endpoint(state))
    recorder = Recorder(state, 100, 1, store=store_backend)

    settle(sender, recorder, router, conn)
    rows, _ = stored(conn)
    assert rows and rows == [f"r{i}" for i in range(10 - len(rows), 10)]
    sender.close(wait=0)
    router.close(linger=0)
    ctx.term()


def test_commit_and_read_back_in_wal(store_backend, tmp_path):
    conn = connect(str(tmp_path), store_backend)
    commit(conn, [rec(f"r{i}") for i in range(100)],
           [("fn", f"r{i}", time.time(), "stdout", f"line {i}") for i in range(100)])
    assert conn.execute("SELECT COUNT(*) FROM invocations").fetchone()[0] == 100
    got = records.get_invocation(conn, "r42")
    assert got["durationMs"] == 1.5 and [line["line"] for line in got["logs"]] == ["line 42"]
    if store_backend.kind == "sqlite":
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_prune_by_age_and_by_count_takes_the_lines_along(store_backend, tmp_path):
    conn = connect(str(tmp_path), store_backend)
    old = time.time() - 10 * 3600
    commit(conn, [rec(f"old{i}", start=old) for i in range(3)],
           [("fn", f"old{i}", time.time(), "stdout", "old line") for i in range(3)])
    commit(conn, [rec(f"new{i}", fn="a" if i % 2 else "b") for i in range(6)], [])
    removed = records.prune(conn, max_per_function=2, max_age_seconds=3600)
    assert removed == 3 + 1 + 1
    left = {r[0] for r in conn.execute("SELECT request_id FROM invocations")}
    assert left == {"new2", "new4", "new3", "new5"}
    assert conn.execute("SELECT COUNT(*) FROM log_lines").fetchone()[0] == 0


def test_listing_pages_newest_first(store_backend, tmp_path):
    conn = connect(str(tmp_path), store_backend)
    commit(conn, [rec(f"r{i}", status="error" if i == 2 else "ok") for i in range(5)], [])
    page, cursor = records.list_invocations(conn, "fn", limit=2)
    assert [p["requestId"] for p in page] == ["r4", "r3"] and cursor is not None
    page, cursor = records.list_invocations(conn, "fn", limit=2, cursor=cursor)
    assert [p["requestId"] for p in page] == ["r2", "r1"]
    page, cursor = records.list_invocations(conn, "fn", limit=2, cursor=cursor)
    assert [p["requestId"] for p in page] == ["r0"] and cursor is None
    errors, _ = records.list_invocations(conn, "fn", status="error")
    assert [p["requestId"] for p in errors] == ["r2"]


def test_a_batch_that_could_not_be_committed_is_not_acknowledged(store_backend, tmp_path,
                                                                monkeypatch):
    import sqlite3
    state = str(tmp_path)
    (tmp_path / "run").mkdir()
    ctx = zmq.Context()
    conn = connect(state, store_backend)
    router = ctx.socket(zmq.ROUTER)
    router.bind(records_endpoint(state))
    sender = RecordSender(state, ctx)
    wait_connected(sender)
    recorder = Recorder(state, 100, 1, store=store_backend)
    real_commit = recorder_module.commit

    def disk_full(*args):
        raise sqlite3.OperationalError("database or disk is full")
    monkeypatch.setattr(recorder_module, "commit", disk_full)
    one_turn(sender, "a")
    wait_for(lambda: router.poll(0), timeout=5)
    recorder.drain(router, conn)
    assert sender.sock.poll(300) == 0 and [s for s, _, _ in sender.unacked] == [1]
    monkeypatch.setattr(recorder_module, "commit", real_commit)

    settle(sender, recorder, router, conn)
    assert stored(conn) == (["a"], ["line of a"])
    sender.close(wait=0)
    router.close(linger=0)
    ctx.term()


def test_senders_unheard_for_long_are_forgotten(store_backend, tmp_path):
    conn = connect(str(tmp_path), store_backend)
    commit(conn, [], [], {b"1.old": 7, b"2.new": 3})
    conn.execute("UPDATE record_senders SET seen = 0 WHERE sender = '1.old'")
    assert records.forget_senders(conn, time.time() - 60) == [b"1.old"]
    assert records.last_batches(conn) == {b"2.new": 3}


def test_a_record_stored_again_replaces_the_old_one_as_the_newest(store_backend, tmp_path):
    """An event's retry records under its request id again: the last record is kept, listed
    as the newest; two of one id in a batch keep the later one."""
    conn = connect(str(tmp_path), store_backend)
    commit(conn, [rec("a"), rec("b", status="error")], [])
    commit(conn, [rec("b", status="error"), rec("c"), rec("b")], [])
    page, _ = records.list_invocations(conn, "fn")
    assert [(p["requestId"], p["status"]) for p in page] == [("b", "ok"), ("c", "ok"),
                                                             ("a", "ok")]


def test_text_of_every_kind_comes_back_as_it_was(store_backend, tmp_path):
    conn = connect(str(tmp_path), store_backend)
    odd = "tab\there, back\\slash, quote ' \" , newline\nand \\N, unicode é 日本, %s ? %%"
    row = rec("r1", status="error")[:9] + (odd, None, 12.5)
    commit(conn, [row], [("fn", "r1", 1.5, "stderr", odd), ("fn", "r1", 2.5, "stdout", "")])
    got = records.get_invocation(conn, "r1")
    assert got["errorMessage"] == odd and got["initDurationMs"] == 12.5
    assert "maxMemoryUsedMB" not in got
    assert [line["line"] for line in got["logs"]] == [odd, ""]
