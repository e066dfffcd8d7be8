"""The SQLite backend's files: in the state dir, in WAL mode, shared by processes.

`sora.db` (part "records") holds invocation records and log lines: the recorder writes them,
gateways read them. `queue.db` (part "queue") holds accepted asynchronous events: gateways add
them, the dispatcher leases and acknowledges them. They are two files so that a commit of one
never waits for the other's lock, and so each has the durability it needs (below). WAL lets
readers run while one writer commits, and `busy_timeout` makes writers wait their turn rather
than fail.

Every process opens its store with `sora.store.backend.connect(config.store, ...)`; `connect`
and `connect_queue` here are that call's SQLite side for callers that have no StoreConfig
(tests, tools). The tables themselves are sora.store.schema's.
"""
from __future__ import annotations

import os
import sqlite3

from . import schema
from .backend import BUSY_TIMEOUT_MS, SQLITE_FILES, SqliteConnection

DB_FILE = SQLITE_FILES["records"]
QUEUE_FILE = SQLITE_FILES["queue"]

# Records may lose the last moments before a power cut (never on a process crash): NORMAL is
# WAL's durable-against-crashes setting and keeps commits off fsync's path. The queue's FULL:
# a commit returns only once the WAL is on disk, so an event answered with 202 is not lost
# even by a power cut.
DEFAULT_SYNCHRONOUS = {"records": "NORMAL", "queue": "FULL"}


def db_path(state_dir: str, name: str = DB_FILE) -> str:
    return os.path.join(state_dir, name)


def open_sqlite(state_dir: str, part: str, synchronous: str | None = None,
                busy_ms: int = BUSY_TIMEOUT_MS, checkpoints: bool = True) -> SqliteConnection:
    """The part's file (created if needed), its schema brought to the code's version.

    Gateways open the queue with a short busy timeout (an event that cannot be stored promptly
    is refused, never accepted and dropped) and without checkpoints (`checkpoints=False`: the
    dispatcher's connection folds the WAL back into the database, so no 202 waits for that).
    """
    path = db_path(state_dir, SQLITE_FILES[part])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    conn = sqlite3.connect(path, timeout=busy_ms / 1000, isolation_level=None,
                           check_same_thread=False, factory=SqliteConnection)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous or DEFAULT_SYNCHRONOUS[part]}")
        schema.ensure(conn, path, part)
        if not checkpoints:
            conn.execute("PRAGMA wal_autocheckpoint = 0")
    except BaseException:
        conn.close()
        raise
    return conn


def connect(state_dir: str) -> SqliteConnection:
    """A connection to the SQLite records store; creates the file and tables if needed."""
    return open_sqlite(state_dir, "records")


def connect_queue(state_dir: str, busy_ms: int = BUSY_TIMEOUT_MS, synchronous: str = "FULL",
                  checkpoints: bool = True) -> SqliteConnection:
    """A connection to the SQLite event queue; creates the file and tables if needed."""
    return open_sqlite(state_dir, "queue", synchronous=synchronous, busy_ms=busy_ms,
                       checkpoints=checkpoints)
