"""The store's wire format, commits, retention and queries, on a real SQLite file."""
import time

import zmq

from sora.store import records
from sora.store.db import connect
from sora.store.recorder import RecordSender, parse, records_endpoint
from sora.store.records import commit


def rec(rid, fn="fn", start=None, status="ok"):
    """A record row as the recorder commits it."""
    return (rid, fn, "$LATEST", "http", start or time.time(), 1.5, status,
            None if status == "ok" else "Error", 0)


def test_sender_batches_per_turn_and_parse_reads_it_back(tmp_path):
    (tmp_path / "run").mkdir()
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(records_endpoint(str(tmp_path)))
    sender = RecordSender(str(tmp_path), ctx)
    sender.record(b"r1", b"fn", b"invoke", 1700000000.25, 12.5, b"error", "Type\tError",
                  True)
    sender.lines("fn", "r1", "stderr", [b"a\ttabbed line", b""])
    sender.flush()
    assert pull.poll(2000)
    message = pull.recv()
    assert pull.poll(100) == 0  # one message for the whole turn
    rows, lines = [], []
    parse(message, rows, lines)
    assert rows == [("r1", "fn", "$LATEST", "invoke", 1700000000.25, 12.5, "error",
                     "Type Error", 1)]
    assert [(fn, rid, stream, text) for fn, rid, _, stream, text in lines] == [
        ("fn", "r1", "stderr", "a\ttabbed line"), ("fn", "r1", "stderr", "")]
    sender.close()
    pull.close()
    ctx.term()


def test_commit_and_read_back_in_wal(tmp_path):
    conn = connect(str(tmp_path))
    commit(conn, [rec(f"r{i}") for i in range(100)],
           [("fn", f"r{i}", time.time(), "stdout", f"line {i}") for i in range(100)])
    assert conn.execute("SELECT COUNT(*) FROM invocations").fetchone()[0] == 100
    got = records.get_invocation(conn, "r42")
    assert got["durationMs"] == 1.5 and [line["line"] for line in got["logs"]] == ["line 42"]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_prune_by_age_and_by_count_takes_the_lines_along(tmp_path):
    conn = connect(str(tmp_path))
    old = time.time() - 10 * 3600
    commit(conn, [rec(f"old{i}", start=old) for i in range(3)],
           [("fn", f"old{i}", time.time(), "stdout", "old line") for i in range(3)])
    commit(conn, [rec(f"new{i}", fn="a" if i % 2 else "b") for i in range(6)], [])
    removed = records.prune(conn, max_per_function=2, max_age_seconds=3600)
    assert removed == 3 + 1 + 1
    left = {r[0] for r in conn.execute("SELECT request_id FROM invocations")}
    assert left == {"new2", "new4", "new3", "new5"}
    assert conn.execute("SELECT COUNT(*) FROM log_lines").fetchone()[0] == 0


def test_listing_pages_newest_first(tmp_path):
    conn = connect(str(tmp_path))
    commit(conn, [rec(f"r{i}", status="error" if i == 2 else "ok") for i in range(5)], [])
    page, cursor = records.list_invocations(conn, "fn", limit=2)
    assert [p["requestId"] for p in page] == ["r4", "r3"] and cursor is not None
    page, cursor = records.list_invocations(conn, "fn", limit=2, cursor=cursor)
    assert [p["requestId"] for p in page] == ["r2", "r1"]
    page, cursor = records.list_invocations(conn, "fn", limit=2, cursor=cursor)
    assert [p["requestId"] for p in page] == ["r0"] and cursor is None
    errors, _ = records.list_invocations(conn, "fn", status="error")
    assert [p["requestId"] for p in errors] == ["r2"]
