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


@pytest.mark.parametrize("url, secret", [
    ("postgresql://u:pw@h/db?sslpassword=k3ypass", "k3ypass"),
    ("postgresql://u@h/db?sslmode=require&SSLPassword=k3ypass", "k3ypass"),
    ("postgresql://u:p/ss@h/db", "p/ss"),          # an unencoded / in the password
    ("postgresql://u:p?ss@h/db", "p?ss"),
    ("postgresql://u:p#ss@h:5432/db", "p#ss"),
])
def test_display_url_hides_every_secret_of_the_url(url, secret):
    """Logs and errors show display_url: a key's passphrase (libpq's sslpassword) and a
    password holding a character a URL should have encoded were shown as they are."""
    from sora.config import display_url
    shown = display_url(url)
    assert secret not in shown and "***" in shown, shown


def test_the_store_url_files_are_hidden_from_every_sandbox():
    """libpq reads a client key (`sslkey`) and a password file (`passfile`) named by the URL:
    secrets of the operator's, like the host's TLS key, which every sandbox covers
    (sandbox.hide) since a folder such as /etc is bound into it."""
    from sora.config import StoreConfig
    store = StoreConfig(kind="postgresql", url="postgresql://u@db/sora?sslmode=verify-full&"
                        "sslkey=/etc/sora/pg.key&sslcert=/etc/sora/pg.crt&passfile=/etc/sora/pgpass")
    assert set(store.secret_files) == {"/etc/sora/pg.key", "/etc/sora/pgpass"}
    assert StoreConfig().secret_files == []


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _loop_stall_during(make_coro) -> float:
    """The longest the event loop went without running a 20 ms ticker while `make_coro()` ran
    (to its end or its error)."""
    import asyncio

    async def main():
        gaps = []

        async def ticker():
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.02)
                now = time.monotonic()
                gaps.append(now - last)
                last = now
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        try:
            await asyncio.wait_for(make_coro(), 30)
        except backend.StoreError:
            pass
        await asyncio.sleep(0.05)   # the ticker's turn after a stall: it records the gap
        task.cancel()
        return max(gaps)
    return asyncio.run(main())


@pytest.fixture
def store_down(tmp_path, monkeypatch):
    """A gateway's records Store over a PostgreSQL server that is not there (a database
    restarting): each query waits for a pooled connection, here 1 s, then fails."""
    from sora.config import StoreConfig
    from sora.gateway.records_api import Store
    monkeypatch.setattr(backend, "POOL_WAIT_S", 1.0)
    config = StoreConfig(kind="postgresql", poolSize=1,
                         url=f"postgresql://u:pw@127.0.0.1:{_free_port()}/db")
    yield Store(str(tmp_path), config)
    backend.close_pools(lambda url: url == config.url)


def test_a_log_follower_never_holds_the_gateway_event_loop(store_down):
    """A follower (the logs API's follow, the dashboard's live tail) polls the store 4 times
    a second on the gateway process's event loop, which serves every invocation of that
    process: on PostgreSQL a query is a network round trip, and while the database is down
    each waited up to the pool's wait there, stalling every call the process served."""
    from sora.gateway.log_follow import new_lines

    async def follow():
        async for _ in new_lines(store_down, "fn", 0, limit=10, seconds=3):
            pass
    assert _loop_stall_during(follow) < 0.5


def test_the_records_api_never_holds_the_gateway_event_loop(store_down):
    from sora.gateway import records_api

    class Req:
        def get_param(self, name):
            return None

    async def get():
        await records_api.InvocationResource(store_down).on_get(Req(), object(), "rid")
    assert _loop_stall_during(get) < 0.5


def test_a_caller_naming_versions_that_do_not_exist_costs_the_store_one_query_a_second(
        tmp_path, postgres_url, monkeypatch):
    """`/functions/NAME:N` (a function URL, `auth: none`: anyone) with a number the cache
    lacks asked the store at once, on the gateway's event loop: one PostgreSQL round trip per
    call for any number a caller makes up."""
    from sora.config import StoreConfig
    from sora.versions.routing import Resolver
    from sora.versions.store import VersionError, VersionStore
    asked = []
    exists = VersionStore.exists
    monkeypatch.setattr(VersionStore, "exists",
                        lambda self, *a: asked.append(a) or exists(self, *a))
    resolver = Resolver(str(tmp_path), store=StoreConfig(kind="postgresql", url=postgres_url))
    for number in range(1000, 1020):
        with pytest.raises(VersionError) as caught:
            resolver.resolve("fn", str(number))
        assert caught.value.status == 404
    assert len(asked) <= 2, asked


def test_calls_by_version_while_the_store_is_down_wait_for_it_once_not_per_call(
        tmp_path, monkeypatch):
    """A gateway that has not read a function's versions yet (just started) when the
    database goes down: each call by version waited the call path's 1 s for a connection, on
    the event loop, so a caller repeating one stalled the process for every function."""
    from sora.config import StoreConfig
    from sora.versions import routing
    from sora.versions.store import VersionError
    monkeypatch.setattr(routing, "CALL_PATH_WAIT_MS", 300)
    config = StoreConfig(kind="postgresql", poolSize=1,
                         url=f"postgresql://u:pw@127.0.0.1:{_free_port()}/db")
    resolver = routing.Resolver(str(tmp_path), store=config)
    began = time.monotonic()
    try:
        for _ in range(10):
            with pytest.raises(VersionError) as caught:
                resolver.resolve("fn", "3")
            assert caught.value.status == 503
    finally:
        backend.close_pools(lambda url: url == config.url)
    assert time.monotonic() - began < 1.5


@pytest.mark.parametrize("logger", ["psycopg", "psycopg.pool", "psycopg.pq",
                                    "psycopg_pool.sched"])
def test_every_psycopg_logger_is_scrubbed_of_the_password(postgres_url, logger, caplog,
                                                          tmp_path):
    """psycopg and psycopg_pool log under several names (the pool's scheduler logs a failed
    task's error under its module's name): a filter on `psycopg` alone does not see a child
    logger's records."""
    import logging
    from sora.config import StoreConfig
    store = StoreConfig(kind="postgresql", url=postgres_url)
    backend.connect(store, str(tmp_path), "records").execute("SELECT 1")
    secret = backend._password_of(postgres_url)
    assert secret
    with caplog.at_level(logging.DEBUG):
        logging.getLogger(logger).warning("failed: %s", postgres_url)
    assert caplog.records and secret not in caplog.text


def test_replay_and_discard_of_many_named_dead_letters_use_one_statement(tmp_path,
                                                                         store_backend):
    """A replay or discard naming request ids (the body of `POST .../dead-letters/replay`,
    up to 1 MB: ~100,000 ids) was `IN (?, ?, ...)` with one placeholder per id: past 32,766
    (SQLite) or 65,535 (PostgreSQL) the statement failed, and each distinct count was a new
    statement string kept for ever in pg_sql's cache (memory a caller could grow)."""
    from sora.store import queue
    conn = backend.connect(store_backend, str(tmp_path), "queue")
    now = time.time()
    queue.enqueue(conn, [(rid, "fn", "invoke", b"{}", now) for rid in ("a", "b", "c")])
    for event in queue.lease(conn, "fn", 3, now, 60):
        queue.bury(conn, event.id, "RetriesExhausted", None)
    cached = len(backend._converted)
    names = [f"x{i}" for i in range(70_000)]
    assert sorted(queue.replay(conn, "fn", names + ["a", "b"], now)) == ["a", "b"]
    for event in queue.lease(conn, "fn", 3, now, 60):
        queue.bury(conn, event.id, "RetriesExhausted", None)
    assert queue.discard(conn, "fn", ["c", *names[:40_000]]) == 1
    assert queue.replay(conn, "fn", [], now) == []
    assert len(backend._converted) - cached <= 6
    conn.close()


def test_pg_sql_cache_is_bounded():
    before = dict(backend._converted)
    try:
        for i in range(backend.PG_SQL_CACHE + 100):
            backend.pg_sql(f"SELECT {i} WHERE a = ?")
        assert len(backend._converted) <= backend.PG_SQL_CACHE
    finally:
        backend._converted.clear()
        backend._converted.update(before)


def test_a_function_url_with_a_qualifier_of_an_unknown_name_reads_no_versions(
        tmp_path, monkeypatch):
    """`/functions/NAME:N` for a name no host serves went on to resolve the qualifier: a
    store read per call (on the event loop) and a cache per made-up name, kept for ever by
    the gateway process (memory any caller of a keyless host could grow). It is a 404
    before any version is looked up."""
    import falcon.testing
    from sora.versions.routing import Resolver
    from tests.unit.test_gateway_app import make_app
    gateway = make_app(tmp_path, monkeypatch)
    asked = []
    monkeypatch.setattr(Resolver, "resolve",
                        lambda self, name, qualifier: asked.append(name) or (name, "1"))
    client = falcon.testing.TestClient(gateway.app)
    for i in range(20):
        answer = client.simulate_get(f"/functions/made-up-{i}:1")
        assert answer.status_code == 404, answer.text
    assert asked == []
    assert client.simulate_get("/functions/echo:1").status_code == 200   # a known one is
    assert asked == ["echo"]


def test_a_dispatcher_start_returns_its_own_host_leases_only_whatever_the_names(
        tmp_path, store_backend):
    """Lease owners are `<host id>#<pid>` and a starting dispatcher returned those matching
    `<host id>#%`: a host whose id is another's followed by `#...` (state dirs /srv/a and
    /srv/a#b on one machine) had its live leases returned by the other's start, and its
    events run twice."""
    from sora.store import queue
    conn = backend.connect(store_backend, str(tmp_path), "queue")
    now = time.time()
    queue.enqueue(conn, [("e1", "fn", "invoke", b"{}", now), ("e2", "fn", "invoke", b"{}", now)])
    queue.lease(conn, "fn", 1, now, 600, queue.lease_owner("h:/srv/a#b", 42))
    queue.lease(conn, "fn", 1, now, 600, queue.lease_owner("h:/srv/a", 7))
    assert queue.release_leases(conn, now, expired_only=False, host_id="h:/srv/a") == 1
    assert queue.find_event(conn, "e1")["state"] == "leased"
    conn.close()


def test_a_store_down_under_calls_by_version_logs_a_line_per_interval_not_per_call(caplog,
                                                                                   monkeypatch):
    """Every call by version or alias fails while the store is down: the log gets one line
    per interval saying how many calls it stands for, not a line per call (a caller could
    otherwise fill the host's log)."""
    from sora.versions import routing
    monkeypatch.setattr(routing, "_last_logged", -routing.STORE_ERROR_LOG_INTERVAL)
    monkeypatch.setattr(routing, "_unlogged", 0)
    down = backend.StoreUnavailable("postgresql://sora:***@db/sora: connection refused")
    with caplog.at_level("ERROR", logger=routing.log.name):
        answers = [routing.store_unavailable(down) for _ in range(500)]
    assert {a.status for a in answers} == {503}
    lines = [r for r in caplog.records if "the store failed" in r.getMessage()]
    assert len(lines) == 1
    monkeypatch.setattr(routing, "_last_logged", -routing.STORE_ERROR_LOG_INTERVAL)
    with caplog.at_level("ERROR", logger=routing.log.name):
        routing.store_unavailable(down)
    assert "499 more since the last line" in caplog.records[-1].getMessage()
