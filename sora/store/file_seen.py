"""What each file watcher last saw of its folder, so a restart neither misses nor repeats a file.

A file trigger fires for a file once it has settled; the file's size, mtime and eTag are then
marked here in the same transaction that enqueues its event (the trigger service's
`fire(..., also=...)`), so a crash leaves both or neither: the file is either queued and
marked, or neither, and found again at the next start. At start the watcher compares the folder
with these rows: a file not here (or changed) is new (or modified) and fires, a row whose file
is gone fires a delete; a file that is here unchanged was processed already and does not fire
again.

Every row carries the host's id (sora.store.backend.host_id): a watched folder is one host's
own, so on a store several hosts share (PostgreSQL) each host remembers its own folder, and two
hosts watching their own `/srv/inbox` never take each other's files as seen. The tables are
sora.store.schema's (queue.db on SQLite). Every function takes the caller's connection and
runs inside the caller's transaction where it writes (no commit of its own).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Seen:
    """A file as it was when its event was enqueued (or, for an event kind the trigger does not
    fire for, when it settled)."""
    size: int
    mtime_ns: int
    etag: str | None


def seen(conn, host: str, function: str, key: str) -> dict[str, Seen]:
    """Every file the trigger has seen on `host`, by relative path."""
    return {row[0]: Seen(row[1], row[2], row[3]) for row in conn.execute(
        "SELECT relpath, size, mtime_ns, etag FROM file_seen WHERE host = ? AND function = ? "
        "AND trigger_key = ?", (host, function, key)).fetchall()}


def mark(conn, host: str, function: str, key: str, relpath: str, entry: Seen) -> None:
    """The file was processed as it is now (inside the caller's transaction)."""
    conn.execute("INSERT INTO file_seen (host, function, trigger_key, relpath, size, mtime_ns, "
                 "etag) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (host, function, trigger_key, "
                 "relpath) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
                 "etag = excluded.etag",
                 (host, function, key, relpath, entry.size, entry.mtime_ns, entry.etag))


def forget(conn, host: str, function: str, key: str, relpath: str) -> None:
    """The file is gone (inside the caller's transaction)."""
    conn.execute("DELETE FROM file_seen WHERE host = ? AND function = ? AND trigger_key = ? "
                 "AND relpath = ?", (host, function, key, relpath))


def last_sequencer(conn, host: str, function: str, key: str) -> int:
    """The highest sequencer recorded for the trigger on `host` (0: none yet)."""
    row = conn.execute("SELECT last FROM file_sequencers WHERE host = ? AND function = ? AND "
                       "trigger_key = ?", (host, function, key)).fetchone()
    return row[0] if row else 0


def record_sequencer(conn, host: str, function: str, key: str, value: int) -> None:
    """`value` was used in an enqueued event (inside the caller's transaction); the record only
    grows, so events committed out of order cannot lower it."""
    greatest = "GREATEST" if conn.dialect == "postgresql" else "max"
    conn.execute("INSERT INTO file_sequencers (host, function, trigger_key, last) "
                 "VALUES (?, ?, ?, ?) ON CONFLICT (host, function, trigger_key) DO UPDATE SET "
                 f"last = {greatest}(file_sequencers.last, excluded.last)",
                 (host, function, key, value))


def format_sequencer(value: int) -> str:
    """S3's sequencer is a hexadecimal string compared as a string: fixed width, so a later
    event's sequencer also sorts later."""
    return f"{value:016X}"
