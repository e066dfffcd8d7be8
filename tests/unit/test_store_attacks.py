"""An attacker's pass over issue 21's store (tests/integration/test_store_secrets.py is the
one for the URL's secrecy): what a function's own text can do to the shared store, and the
corners of the SQL translation and the version tar."""
import io
import tarfile
import time

import pytest
import zmq

from sora.store import backend, records
from sora.store.recorder import RecordSender, parse


def rec(rid, fn="fn", error_type=None, message=None):
    return (rid, fn, "$LATEST", "http", time.time(), 1.5, "error" if error_type else "ok",
            error_type, 0, message, 40, None)


def test_a_function_text_with_nul_or_lone_surrogates_is_stored_not_a_poison_batch(
        tmp_path, store_backend):
    """A function chooses its error's type and message and its log lines. PostgreSQL's text
    holds no NUL, and neither store encodes a lone surrogate (a JSON `\\ud800` in an
    errorMessage): one such record made the recorder's whole batch fail (every function's
    records in it), resent and failing for ever."""
    (tmp_path / "run").mkdir()
    ctx = zmq.Context()
    sender = RecordSender(str(tmp_path), ctx)
    evil = "a\x00b\ud800c\\N\t\n\\."
    sender.record(b"r-evil", b"fn", b"http", time.time(), 1.0, b"error", "E\x00rr", False,
                  error_message=evil)
    sender.record(b"r-ok", b"fn", b"http", time.time(), 1.0, b"ok", None, False)
    sender.lines("fn", "r-evil", "stdout", [b"x\x00y \\N \\. \xed\xa0\x80"])
    rows, lines = [], []
    parse(b"\n".join(sender.batch), rows, lines)
    sender.close(wait=0)
    ctx.term()
    conn = backend.connect(store_backend, str(tmp_path), "records")
    records.commit(conn, rows, lines)
    stored = records.get_invocation(conn, "r-evil")
    assert stored is not None and records.get_invocation(conn, "r-ok") is not None
    text = str(stored)
    assert "\x00" not in text and "\ud800" not in text
    assert stored["errorMessage"] == "a\\x00b\ufffdc\\N\t\n\\."
    assert [line["line"] for line in records.log_lines(conn, "fn")] == [
        "x\\x00y \\N \\. \ufffd\ufffd\ufffd"]
    conn.close()


@pytest.mark.parametrize("sql, expected", [
    ("SELECT ? WHERE x LIKE 'a%?'", "SELECT %s WHERE x LIKE 'a%%?'"),
    ("SELECT 'it''s ?', ?", "SELECT 'it''s ?', %s"),
    ('SELECT "odd?name" FROM t WHERE a = ?', 'SELECT "odd?name" FROM t WHERE a = %s'),
    ("SELECT 1 -- it's a comment\nWHERE a = ?", "SELECT 1 -- it's a comment\nWHERE a = %s"),
])
def test_pg_sql_translates_only_placeholders(sql, expected):
    assert backend.pg_sql(sql) == expected


def _tar(members):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_a_version_tar_larger_than_its_row_says_is_refused_before_writing(tmp_path):
    """A decompression bomb: a few KB of gzip that expands to far more than the version's
    code_size. Refused from the members' sizes, before anything is written."""
    from sora.versions import code_tar
    bomb = _tar([("index.js", b"0" * (8 << 20))])
    assert len(bomb) < 64 << 10
    dest = tmp_path / "code"
    dest.mkdir()
    with pytest.raises(code_tar.UnsafeTar, match="bytes"):
        code_tar.unpack(bomb, str(dest), max_bytes=1024)
    assert list(dest.iterdir()) == []
    code_tar.unpack(_tar([("index.js", b"x" * 10)]), str(dest), max_bytes=10)
    assert (dest / "index.js").read_bytes() == b"x" * 10
