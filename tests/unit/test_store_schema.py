"""The store's schema (sora.store.schema): created and migrated at connect, its version kept in
`sora_schema`, and refused by an older Sora when a newer one made it."""
import sqlite3
import threading

import pytest

from sora.config import StoreConfig
from sora.store import backend, db, schema


def version_of(conn) -> int:
    return conn.execute("SELECT version FROM sora_schema").fetchone()[0]


def test_a_new_store_is_made_at_the_codes_version(store_backend, tmp_path):
    for part in backend.PARTS:
        conn = backend.connect(store_backend, str(tmp_path), part)
        assert version_of(conn) == schema.SCHEMA_VERSION
        assert conn.execute("SELECT COUNT(*) FROM sora_schema").fetchone()[0] == 1
        # every table of the part answers (PostgreSQL: all of them in one database)
        tables = ("invocations", "log_lines", "record_senders", "function_versions",
                  "function_aliases") if part == "records" else (
            "events", "attempts", "event_totals", "trigger_state", "trigger_firings",
            "file_seen", "file_sequencers")
        for table in tables:
            assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0
        assert schema.ensure(conn, "again", part) == schema.SCHEMA_VERSION   # nothing to do


def test_a_newer_schema_is_refused_with_both_versions_and_the_store(store_backend, tmp_path):
    conn = backend.connect(store_backend, str(tmp_path), "queue")
    schema.set_version(conn, schema.SCHEMA_VERSION + 1)
    backend.close_pools()              # a new process would open it afresh
    with pytest.raises(backend.SchemaTooNew) as exc:
        backend.connect(store_backend, str(tmp_path), "queue")
    message = str(exc.value)
    assert f"the store's schema is version {schema.SCHEMA_VERSION + 1}; this Sora knows up " \
        f"to {schema.SCHEMA_VERSION}" in message
    assert "A newer Sora has used this store" in message
    if store_backend.kind == "sqlite":
        assert message.startswith(str(tmp_path / "queue.db") + ": ")
    else:
        assert message.startswith(store_backend.display_url + ": ")
        assert backend._password_of(store_backend.url) not in message
    assert isinstance(exc.value, backend.ERRORS)


# What a Sora from before issue 21 made (sora/store/db.py, triggers.py and file_seen.py then):
# no sora_schema, older columns, queue.db's user_version 1, file_seen keyed without a host.
OLD_RECORDS = """
CREATE TABLE invocations (id INTEGER PRIMARY KEY, request_id TEXT NOT NULL UNIQUE,
    function TEXT NOT NULL, version TEXT NOT NULL, trigger TEXT NOT NULL, start REAL NOT NULL,
    duration_ms REAL NOT NULL, status TEXT NOT NULL, error_type TEXT, cold INTEGER NOT NULL);
CREATE TABLE log_lines (id INTEGER PRIMARY KEY, function TEXT NOT NULL,
    request_id TEXT NOT NULL, time REAL NOT NULL, stream TEXT NOT NULL, line TEXT NOT NULL);
INSERT INTO invocations (request_id, function, version, trigger, start, duration_ms, status,
    cold) VALUES ('r1', 'fn', '$LATEST', 'http', 1.0, 2.0, 'ok', 1);
INSERT INTO log_lines (function, request_id, time, stream, line)
    VALUES ('fn', 'r1', 1.0, 'stdout', 'hello');
"""
OLD_QUEUE = """
CREATE TABLE events (id INTEGER PRIMARY KEY, request_id TEXT NOT NULL UNIQUE,
    function TEXT NOT NULL, trigger TEXT NOT NULL, payload BLOB NOT NULL, accepted REAL NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, due REAL NOT NULL,
    lease_until REAL, dead_reason TEXT);
INSERT INTO events (request_id, function, trigger, payload, accepted, state, due)
    VALUES ('e1', 'fn', 'invoke', X'7B7D', 1.0, 'queued', 1.0);
CREATE TABLE file_seen (function TEXT NOT NULL, trigger_key TEXT NOT NULL,
    relpath TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, etag TEXT,
    PRIMARY KEY (function, trigger_key, relpath)) WITHOUT ROWID;
INSERT INTO file_seen VALUES ('fn', 'k', 'a.csv', 3, 1700000000000000000, NULL);
CREATE TABLE file_sequencers (function TEXT NOT NULL, trigger_key TEXT NOT NULL,
    last INTEGER NOT NULL, PRIMARY KEY (function, trigger_key)) WITHOUT ROWID;
INSERT INTO file_sequencers VALUES ('fn', 'k', 7);
"""


def test_files_of_an_older_sora_migrate_with_their_rows(tmp_path):
    for name, script in ((db.DB_FILE, OLD_RECORDS), (db.QUEUE_FILE, OLD_QUEUE)):
        old = sqlite3.connect(tmp_path / name)
        old.executescript(script)
        old.close()
    records = db.connect(str(tmp_path))
    assert version_of(records) == schema.SCHEMA_VERSION
    row = records.execute("SELECT * FROM invocations").fetchone()
    assert row["request_id"] == "r1" and row["error_message"] is None
    assert row["init_duration_ms"] is None and row["max_memory_mb"] is None
    assert records.execute("SELECT line FROM log_lines").fetchone()[0] == "hello"
    queue = db.connect_queue(str(tmp_path))
    assert version_of(queue) == schema.SCHEMA_VERSION
    assert tuple(queue.execute("SELECT events, bytes FROM event_totals").fetchone()) == (1, 2)
    assert queue.execute("SELECT lease_owner FROM events").fetchone()[0] is None
    assert tuple(queue.execute("SELECT host, relpath, mtime_ns FROM file_seen").fetchone()) == \
        ("", "a.csv", 1700000000000000000)
    assert tuple(queue.execute("SELECT host, last FROM file_sequencers").fetchone()) == ("", 7)
    # the host is in the key now: two hosts' rows for one file
    queue.execute("INSERT INTO file_seen VALUES ('h2', 'fn', 'k', 'a.csv', 1, 1, NULL)")
    assert queue.execute("SELECT COUNT(*) FROM file_seen").fetchone()[0] == 2


def test_hosts_starting_together_migrate_once(postgres_url, tmp_path):
    """Threads of separate pools stand for processes: the advisory lock lets one create."""
    errors, done = [], []

    def start(i):
        store = StoreConfig(kind="postgresql", url=postgres_url + f"&application_name=h{i}")
        try:
            conn = backend.PgConnection(store)
            done.append(schema.ensure(conn, store.display_url))
        except Exception as exc:          # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=start, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    backend.close_pools(lambda url: url.startswith(postgres_url))
    assert not errors
    assert sorted(done).count(0) == 1 and len(done) == 4   # one made it, the others found it


def test_a_store_of_large_numbers_and_bytes_keeps_them(store_backend, tmp_path):
    """BIGINT where SQLite's INTEGER holds 64 bits (mtime_ns), DOUBLE PRECISION for times,
    BYTEA for payloads."""
    conn = backend.connect(store_backend, str(tmp_path), "queue")
    conn.execute("INSERT INTO file_seen (host, function, trigger_key, relpath, size, mtime_ns) "
                 "VALUES ('h', 'fn', 'k', 'x', ?, ?)", (1 << 40, 1_765_000_000_123_456_789))
    assert tuple(conn.execute("SELECT size, mtime_ns FROM file_seen").fetchone()) == \
        (1 << 40, 1_765_000_000_123_456_789)
    conn.execute("INSERT INTO events (request_id, function, trigger, payload, accepted, state, "
                 "due) VALUES ('r', 'fn', 'invoke', ?, ?, 'queued', ?)",
                 (bytes(range(256)), 1765000000.123456, 1765000000.123456))
    row = conn.execute("SELECT payload, accepted FROM events").fetchone()
    assert bytes(row[0]) == bytes(range(256)) and row[1] == 1765000000.123456


def test_an_older_sora_refuses_to_start_on_a_newer_store(store_backend, tmp_path):
    """The supervisor migrates or checks the store before it starts anything: a newer schema
    ends the start with exit 2 and the message, and no child was started."""
    import subprocess
    import sys

    import yaml

    from tests.support import store_setting, write_function
    state = tmp_path / "state"
    conn = backend.connect(store_backend, str(state), "records")
    schema.set_version(conn, schema.SCHEMA_VERSION + 1)
    conn.close()
    backend.close_pools()
    fn = write_function(tmp_path / "fns", "hello", {"index.js": "exports.handler = 1;"},
                        name="hello")
    config = tmp_path / "host-config.yaml"
    config.write_text(yaml.safe_dump({"functionPaths": [str(fn)], "server": {"httpPort": 1},
                                      "stateDir": str(state),
                                      "store": store_setting(store_backend)}))
    done = subprocess.run([sys.executable, "-m", "sora.supervisor.cli", "start", "--config",
                           str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"the store's schema is version {schema.SCHEMA_VERSION + 1}; this Sora knows up " \
        f"to {schema.SCHEMA_VERSION}" in done.stderr
    if store_backend.kind == "postgresql":
        assert backend._password_of(store_backend.url) not in done.stderr + done.stdout
