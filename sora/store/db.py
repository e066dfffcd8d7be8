"""Opening the store: one SQLite file in the state dir, in WAL mode, shared by processes.

Workers write records, the supervisor prunes them, gateways read them; WAL lets readers run
while one writer commits, and `busy_timeout` makes writers wait their turn rather than fail.
"""
from __future__ import annotations

import os
import sqlite3

DB_FILE = "sora.db"
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
    cold        INTEGER NOT NULL              -- 1: the instance's first invocation
);
CREATE INDEX IF NOT EXISTS invocations_by_function ON invocations (function, id);
CREATE INDEX IF NOT EXISTS invocations_by_start ON invocations (start);
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
"""


def db_path(state_dir: str) -> str:
    return os.path.join(state_dir, DB_FILE)


def connect(state_dir: str) -> sqlite3.Connection:
    """A connection with the store's settings; creates the file and tables if needed."""
    os.makedirs(state_dir, exist_ok=True)
    conn = sqlite3.connect(db_path(state_dir), timeout=BUSY_TIMEOUT_MS / 1000,
                           isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    # Records may lose the last moments before a power cut (never on a process crash): NORMAL
    # is WAL's durable-against-crashes setting and keeps commits off fsync's path.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.executescript(SCHEMA)
    return conn
