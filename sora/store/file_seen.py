"""What each file watcher last saw of its folder, so a restart neither misses nor repeats a file.

A file trigger fires for a file once it has settled; the file's size, mtime and eTag are then
marked here in the same transaction that enqueues its event (the trigger service's
`fire(..., also=...)`), so a crash leaves both or neither: the file is either queued and
marked, or neither, and found again at the next start. At start the watcher compares the folder
with these rows: a file not here (or changed) is new (or modified) and fires, a row whose file
is gone fires a delete; a file that is here unchanged was processed already and does not fire
again.

The tables live in queue.db, next to the events they go with; this module creates them.
Every function takes the caller's connection and runs inside the caller's transaction where it
writes (no commit of its own), except `ensure`, which creates the tables.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass

SCHEMA = """
CREATE TABLE IF NOT EXISTS file_seen (
    function    TEXT NOT NULL,
    trigger_key TEXT NOT NULL,                -- FileTrigger.key: path, pattern, recursive
    relpath     TEXT NOT NULL,                -- '/'-separated, relative to the watched folder
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    etag        TEXT,                         -- MD5 of the content; NULL: seen, not hashed
    PRIMARY KEY (function, trigger_key, relpath)
) WITHOUT ROWID;
-- Per trigger, the highest S3 `sequencer` handed out: sequencers keep increasing across
-- restarts (an S3 consumer orders a key's events by it).
CREATE TABLE IF NOT EXISTS file_sequencers (
    function    TEXT NOT NULL,
    trigger_key TEXT NOT NULL,
    last        INTEGER NOT NULL,
    PRIMARY KEY (function, trigger_key)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Seen:
    """A file as it was when its event was enqueued (or, for an event kind the trigger does not
    fire for, when it settled)."""
    size: int
    mtime_ns: int
    etag: str | None


def ensure(conn: sqlite3.Connection) -> None:
    """Create the tables if this queue.db has none yet."""
    conn.executescript(SCHEMA)


def seen(conn: sqlite3.Connection, function: str, key: str) -> dict[str, Seen]:
    """Every file the trigger has seen, by relative path."""
    return {row[0]: Seen(row[1], row[2], row[3]) for row in conn.execute(
        "SELECT relpath, size, mtime_ns, etag FROM file_seen WHERE function = ? "
        "AND trigger_key = ?", (function, key))}


def mark(conn: sqlite3.Connection, function: str, key: str, relpath: str,
         entry: Seen) -> None:
    """The file was processed as it is now (inside the caller's transaction)."""
    conn.execute("INSERT INTO file_seen (function, trigger_key, relpath, size, mtime_ns, etag) "
                 "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (function, trigger_key, relpath) DO "
                 "UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
                 "etag = excluded.etag",
                 (function, key, relpath, entry.size, entry.mtime_ns, entry.etag))


def forget(conn: sqlite3.Connection, function: str, key: str, relpath: str) -> None:
    """The file is gone (inside the caller's transaction)."""
    conn.execute("DELETE FROM file_seen WHERE function = ? AND trigger_key = ? AND relpath = ?",
                 (function, key, relpath))


def last_sequencer(conn: sqlite3.Connection, function: str, key: str) -> int:
    """The highest sequencer recorded for the trigger (0: none yet)."""
    row = conn.execute("SELECT last FROM file_sequencers WHERE function = ? AND "
                       "trigger_key = ?", (function, key)).fetchone()
    return row[0] if row else 0


def record_sequencer(conn: sqlite3.Connection, function: str, key: str, value: int) -> None:
    """`value` was used in an enqueued event (inside the caller's transaction); the record only
    grows, so events committed out of order cannot lower it."""
    conn.execute("INSERT INTO file_sequencers (function, trigger_key, last) VALUES (?, ?, ?) "
                 "ON CONFLICT (function, trigger_key) DO UPDATE SET "
                 "last = max(last, excluded.last)", (function, key, value))


def format_sequencer(value: int) -> str:
    """S3's sequencer is a hexadecimal string compared as a string: fixed width, so a later
    event's sequencer also sorts later."""
    return f"{value:016X}"
