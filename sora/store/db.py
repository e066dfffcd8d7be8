"""Opening the store: SQLite files in the state dir, in WAL mode, shared by processes.

`sora.db` holds invocation records and log lines: the recorder writes them, gateways read them.
`queue.db` holds accepted asynchronous events: gateways add them, the dispatcher leases and
acknowledges them. They are two files so that a commit of one never waits for the other's
lock, and so each has the durability it needs (below). WAL lets readers run while one writer
commits, and `busy_timeout` makes writers wait their turn rather than fail.
"""
from __future__ import annotations

import os
import sqlite3

DB_FILE = "sora.db"
QUEUE_FILE = "queue.db"
BUSY_TIMEOUT_MS = 5000

SCHEMA = """
CREATE TABLE IF NOT EXISTS invocations (
    id          INTEGER PRIMARY KEY,          -- order of completion; the listing cursor
    request_id  TEXT NOT NULL UNIQUE,
    function    TEXT NOT NULL,
    version     TEXT NOT NULL,
    trigger     TEXT NOT NULL,                -- http | invoke | event
    start       REAL NOT NULL,                -- epoch seconds
    duration_ms REAL NOT NULL,
    status      TEXT NOT NULL,                -- ok | error | timeout | crashed
    error_type  TEXT,
    cold        INTEGER NOT NULL,             -- 1: the instance's first invocation
    error_message TEXT,                       -- what the caller's errorMessage said
    max_memory_mb    INTEGER,                 -- REPORT's Max Memory Used; NULL: not run
    init_duration_ms REAL                     -- REPORT's Init Duration; NULL: warm
);
CREATE INDEX IF NOT EXISTS invocations_by_function ON invocations (function, id);
CREATE INDEX IF NOT EXISTS invocations_by_start ON invocations (start);
-- A function's records in a time window, with what sora.store.stats reads of them (the
-- dashboard's figures and charts): covering, so a day of records is read from the index alone.
CREATE INDEX IF NOT EXISTS invocations_by_function_start
    ON invocations (function, start, duration_ms, status, cold);
CREATE TABLE IF NOT EXISTS log_lines (
    id          INTEGER PRIMARY KEY,          -- order of arrival; the follow cursor
    function    TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    time        REAL NOT NULL,
    stream      TEXT NOT NULL,                -- stdout | stderr
    line        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS log_lines_by_request ON log_lines (request_id, id);
CREATE INDEX IF NOT EXISTS log_lines_by_function ON log_lines (function, id);
-- Per sender of records (a worker, a client): the last batch committed, in the same
-- transaction as the batch, so a batch resent after a recorder crash is stored once.
CREATE TABLE IF NOT EXISTS record_senders (
    sender      TEXT PRIMARY KEY,             -- <pid>.<random>, chosen by the sender
    last_batch  INTEGER NOT NULL,
    seen        REAL NOT NULL                 -- epoch seconds; forgotten a day after
);
"""


QUEUE_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY,          -- order of acceptance
    request_id  TEXT NOT NULL UNIQUE,
    function    TEXT NOT NULL,
    trigger     TEXT NOT NULL,                -- invoke | http: the route that accepted it
    payload     BLOB NOT NULL,                -- the event, as the function receives it
    accepted    REAL NOT NULL,                -- epoch seconds; the event's age counts from it
    state       TEXT NOT NULL,                -- queued | leased | dead
    attempts    INTEGER NOT NULL DEFAULT 0,   -- attempts made since accepted or replayed
    due         REAL NOT NULL,                -- epoch seconds: not to run before
    lease_until REAL,                         -- epoch seconds, while leased
    dead_reason TEXT                          -- why it is in the dead-letter list
);
CREATE INDEX IF NOT EXISTS events_due ON events (state, due);
-- Leasing walks a function's queued events in due order and stops at the limit: O(limit),
-- however long the backlog.
CREATE INDEX IF NOT EXISTS events_by_function ON events (function, state, due);
CREATE TABLE IF NOT EXISTS attempts (
    id            INTEGER PRIMARY KEY,
    event_id      INTEGER NOT NULL,
    start         REAL NOT NULL,
    duration_ms   REAL NOT NULL,
    error_type    TEXT NOT NULL,
    error_message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_by_event ON attempts (event_id, id);
-- Per function, how many events are stored (in any state) and their payloads' bytes, kept by
-- triggers so intake checks a function's caps with one row read instead of a scan.
CREATE TABLE IF NOT EXISTS event_totals (
    function    TEXT PRIMARY KEY,
    events      INTEGER NOT NULL,
    bytes       INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS event_totals_add AFTER INSERT ON events BEGIN
    INSERT INTO event_totals (function, events, bytes)
    VALUES (NEW.function, 1, length(NEW.payload))
    ON CONFLICT (function) DO UPDATE SET events = events + 1,
                                         bytes = bytes + length(NEW.payload);
END;
CREATE TRIGGER IF NOT EXISTS event_totals_remove AFTER DELETE ON events BEGIN
    UPDATE event_totals SET events = events - 1, bytes = bytes - length(OLD.payload)
    WHERE function = OLD.function;
END;
"""
# PRAGMA user_version of a queue.db whose event_totals match its events (older files had no
# totals: they are counted once, in the first connection's transaction).
QUEUE_VERSION = 1


def db_path(state_dir: str, name: str = DB_FILE) -> str:
    return os.path.join(state_dir, name)


def _open(path: str, schema: str, synchronous: str, busy_ms: int) -> sqlite3.Connection:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    conn = sqlite3.connect(path, timeout=busy_ms / 1000, isolation_level=None,
                           check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.executescript(schema)
    return conn


def connect(state_dir: str) -> sqlite3.Connection:
    """A connection to the records store; creates the file and tables if needed."""
    # Records may lose the last moments before a power cut (never on a process crash): NORMAL
    # is WAL's durable-against-crashes setting and keeps commits off fsync's path.
    conn = _open(db_path(state_dir), SCHEMA, "NORMAL", BUSY_TIMEOUT_MS)
    _add_columns(conn, "invocations", {"error_message": "TEXT", "max_memory_mb": "INTEGER",
                                       "init_duration_ms": "REAL"})
    return conn


def _add_columns(conn: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """Add the columns a store made by an older Sora lacks (CREATE TABLE IF NOT EXISTS keeps
    the old table as it was)."""
    have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    for name, decl in columns.items():
        if name not in have:
            try:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
            except sqlite3.OperationalError as exc:   # another process added it meanwhile
                if "duplicate column" not in str(exc):
                    raise


def connect_queue(state_dir: str, busy_ms: int = BUSY_TIMEOUT_MS, synchronous: str = "FULL",
                  checkpoints: bool = True) -> sqlite3.Connection:
    """A connection to the event queue; creates the file and tables if needed.

    FULL (the default, and what gateways use to accept events): a commit returns only once the
    WAL is on disk, so an event answered with 202 is not lost even by a power cut. Gateways also
    open it with a short busy timeout (an event that cannot be stored promptly is refused, never
    accepted and dropped) and without checkpoints (`checkpoints=False`: the dispatcher's
    connection folds the WAL back into the database, so no 202 waits for that).
    """
    conn = _open(db_path(state_dir, QUEUE_FILE), QUEUE_SCHEMA, synchronous, busy_ms)
    if conn.execute("PRAGMA user_version").fetchone()[0] < QUEUE_VERSION:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            if conn.execute("PRAGMA user_version").fetchone()[0] < QUEUE_VERSION:
                conn.execute("DELETE FROM event_totals")
                conn.execute("INSERT INTO event_totals SELECT function, COUNT(*), "
                             "SUM(length(payload)) FROM events GROUP BY function")
                conn.execute(f"PRAGMA user_version = {QUEUE_VERSION}")
    if not checkpoints:
        conn.execute("PRAGMA wal_autocheckpoint = 0")
    return conn
