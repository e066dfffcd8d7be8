"""Every table of the store, in both dialects, and the migrations between schema versions.

SQLite keeps two files (sora.store.db): `sora.db` (part "records": invocations, log lines,
record senders, function versions and aliases) and `queue.db` (part "queue": events, attempts,
event totals, triggers' state and history, file watchers' seen files and sequencers).
PostgreSQL holds all of them in one database.

Each store (each SQLite file; the PostgreSQL database) has a table `sora_schema` with one row,
the schema version its tables are at. At connect, `ensure` brings the store to
SCHEMA_VERSION: under a lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: a transaction-scoped
advisory lock, so hosts starting together migrate once), it applies each numbered step above
the stored version, in one transaction with the version's update. A store whose version is
above this code's raises SchemaTooNew: an older Sora never writes tables it does not know.

Version 1 is the first with the table: a SQLite file made by an earlier Sora (no `sora_schema`,
maybe older columns, `PRAGMA user_version` 1 in queue.db once event_totals were counted) is
brought to version 1 by the same step that creates a new one, with its rows kept.

Adding a version: append a step to STEPS for each dialect and part it changes (a function
taking the connection, run inside the migration's transaction) and raise SCHEMA_VERSION.
"""
from __future__ import annotations

from typing import Callable

from .backend import SchemaTooNew

SCHEMA_VERSION = 1

# PostgreSQL's advisory lock key for migrations (any constant; "sora" in ASCII).
PG_LOCK_KEY = 0x736F7261

# Column types by dialect: the DDL below is written once with these names.
_TYPES = {
    "sqlite": {"ID": "INTEGER PRIMARY KEY", "REAL": "REAL", "BLOB": "BLOB",
               "BIGINT": "INTEGER", "NOROWID": " WITHOUT ROWID"},
    "postgresql": {"ID": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
                   "REAL": "DOUBLE PRECISION", "BLOB": "BYTEA", "BIGINT": "BIGINT",
                   "NOROWID": ""},
}

RECORDS_TABLES = [
    """CREATE TABLE IF NOT EXISTS invocations (
    id          {ID},                         -- order of completion; the listing cursor
    request_id  TEXT NOT NULL UNIQUE,
    function    TEXT NOT NULL,
    version     TEXT NOT NULL,
    trigger     TEXT NOT NULL,                -- http | invoke | event | schedule:N | file:N
    start       {REAL} NOT NULL,              -- epoch seconds
    duration_ms {REAL} NOT NULL,
    status      TEXT NOT NULL,                -- ok | error | timeout | crashed
    error_type  TEXT,
    cold        INTEGER NOT NULL,             -- 1: the instance's first invocation
    error_message TEXT,                       -- what the caller's errorMessage said
    max_memory_mb    INTEGER,                 -- REPORT's Max Memory Used; NULL: not run
    init_duration_ms {REAL}                   -- REPORT's Init Duration; NULL: warm
)""",
    "CREATE INDEX IF NOT EXISTS invocations_by_function ON invocations (function, id)",
    "CREATE INDEX IF NOT EXISTS invocations_by_start ON invocations (start)",
    # A function's records in a time window, with what sora.store.stats reads of them (the
    # dashboard's figures and charts): covering, so a day of records is read from the index.
    "CREATE INDEX IF NOT EXISTS invocations_by_function_start "
    "ON invocations (function, start, duration_ms, status, cold)",
    """CREATE TABLE IF NOT EXISTS log_lines (
    id          {ID},                         -- order of arrival; the follow cursor
    function    TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    time        {REAL} NOT NULL,
    stream      TEXT NOT NULL,                -- stdout | stderr
    line        TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS log_lines_by_request ON log_lines (request_id, id)",
    "CREATE INDEX IF NOT EXISTS log_lines_by_function ON log_lines (function, id)",
    # Per sender of records (a worker, a client): the last batch committed, in the same
    # transaction as the batch, so a batch resent after a recorder crash is stored once.
    """CREATE TABLE IF NOT EXISTS record_senders (
    sender      TEXT PRIMARY KEY,             -- <pid>.<random>, chosen by the sender
    last_batch  {BIGINT} NOT NULL,
    seen        {REAL} NOT NULL               -- epoch seconds; forgotten a day after
)""",
    # Published versions (sora.versions): the function's settings as published and, on
    # PostgreSQL, its code as a tar (another host materializes it from the row); on SQLite
    # the code is the folder under <stateDir>/versions/ and `code` is NULL.
    """CREATE TABLE IF NOT EXISTS function_versions (
    function        TEXT NOT NULL,
    version         INTEGER NOT NULL,
    config          TEXT NOT NULL,            -- the version's entry, JSON
    code_sha256     TEXT,
    settings_sha256 TEXT,
    description     TEXT,
    created         {REAL} NOT NULL,
    code            {BLOB},
    code_size       {BIGINT},
    PRIMARY KEY (function, version)
)""",
    """CREATE TABLE IF NOT EXISTS function_aliases (
    function    TEXT NOT NULL,
    name        TEXT NOT NULL,
    document    TEXT NOT NULL,                -- the alias, JSON as AliasStore keeps it
    revision    {BIGINT} NOT NULL,
    PRIMARY KEY (function, name)
)""",
]

QUEUE_TABLES = [
    """CREATE TABLE IF NOT EXISTS events (
    id          {ID},                         -- order of acceptance
    request_id  TEXT NOT NULL UNIQUE,
    function    TEXT NOT NULL,
    trigger     TEXT NOT NULL,                -- invoke | http | schedule:N | file:N
    payload     {BLOB} NOT NULL,              -- the event, as the function receives it
    accepted    {REAL} NOT NULL,              -- epoch seconds; the event's age counts from it
    state       TEXT NOT NULL,                -- queued | leased | dead
    attempts    INTEGER NOT NULL DEFAULT 0,   -- attempts made since accepted or replayed
    due         {REAL} NOT NULL,              -- epoch seconds: not to run before
    lease_until {REAL},                       -- epoch seconds, while leased
    dead_reason TEXT,                         -- why it is in the dead-letter list
    lease_owner TEXT                          -- host id + pid of the lease's dispatcher
)""",
    "CREATE INDEX IF NOT EXISTS events_due ON events (state, due)",
    # Leasing walks a function's queued events in due order and stops at the limit: O(limit),
    # however long the backlog.
    "CREATE INDEX IF NOT EXISTS events_by_function ON events (function, state, due)",
    """CREATE TABLE IF NOT EXISTS attempts (
    id            {ID},
    event_id      {BIGINT} NOT NULL,
    start         {REAL} NOT NULL,
    duration_ms   {REAL} NOT NULL,
    error_type    TEXT NOT NULL,
    error_message TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS attempts_by_event ON attempts (event_id, id)",
    # Per function, how many events are stored (in any state) and their payloads' bytes, kept
    # by triggers so intake checks a function's caps with one row read instead of a scan.
    """CREATE TABLE IF NOT EXISTS event_totals (
    function    TEXT PRIMARY KEY,
    events      {BIGINT} NOT NULL,
    bytes       {BIGINT} NOT NULL
)""",
    # Triggers' state (sora.store.triggers): per trigger, when it was first seen, the last due
    # time handled and its last firing; and the recent firings and skips.
    """CREATE TABLE IF NOT EXISTS trigger_state (
    function        TEXT NOT NULL,
    trigger_key     TEXT NOT NULL,
    first_seen      {REAL},
    last_due        {REAL},
    last_fired      {REAL},
    last_request_id TEXT,
    last_outcome    TEXT,
    last_reason     TEXT,
    paused          INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (function, trigger_key)
)""",
    """CREATE TABLE IF NOT EXISTS trigger_firings (
    id          {ID},
    function    TEXT NOT NULL,
    trigger_key TEXT NOT NULL,
    route       TEXT NOT NULL,                -- schedule:N | file:N
    due         {REAL} NOT NULL,
    fired       {REAL} NOT NULL,
    request_id  TEXT,                         -- NULL: skipped
    outcome     TEXT NOT NULL,                -- enqueued | skipped
    reason      TEXT
)""",
    "CREATE INDEX IF NOT EXISTS trigger_firings_by_key "
    "ON trigger_firings (function, trigger_key, id)",
    # File watchers (sora.store.file_seen): a watched folder is one host's, so its rows carry
    # the host id (sora.store.backend.host_id) in their keys.
    """CREATE TABLE IF NOT EXISTS file_seen (
    host        TEXT NOT NULL DEFAULT '',
    function    TEXT NOT NULL,
    trigger_key TEXT NOT NULL,                -- FileTrigger.key: path, pattern, recursive
    relpath     TEXT NOT NULL,                -- '/'-separated, relative to the watched folder
    size        {BIGINT} NOT NULL,
    mtime_ns    {BIGINT} NOT NULL,
    etag        TEXT,                         -- MD5 of the content; NULL: seen, not hashed
    PRIMARY KEY (host, function, trigger_key, relpath)
){NOROWID}""",
    # Per trigger, the highest S3 `sequencer` handed out: sequencers keep increasing across
    # restarts (an S3 consumer orders a key's events by it).
    """CREATE TABLE IF NOT EXISTS file_sequencers (
    host        TEXT NOT NULL DEFAULT '',
    function    TEXT NOT NULL,
    trigger_key TEXT NOT NULL,
    last        {BIGINT} NOT NULL,
    PRIMARY KEY (host, function, trigger_key)
){NOROWID}""",
]

# event_totals follow events' inserts and deletes.
SQLITE_TOTALS_TRIGGERS = [
    """CREATE TRIGGER IF NOT EXISTS event_totals_add AFTER INSERT ON events BEGIN
    INSERT INTO event_totals (function, events, bytes)
    VALUES (NEW.function, 1, length(NEW.payload))
    ON CONFLICT (function) DO UPDATE SET events = events + 1,
                                         bytes = bytes + length(NEW.payload);
END""",
    """CREATE TRIGGER IF NOT EXISTS event_totals_remove AFTER DELETE ON events BEGIN
    UPDATE event_totals SET events = events - 1, bytes = bytes - length(OLD.payload)
    WHERE function = OLD.function;
END""",
]

PG_TOTALS_TRIGGERS = [
    """CREATE OR REPLACE FUNCTION sora_event_totals_add() RETURNS trigger AS $$
BEGIN
    INSERT INTO event_totals (function, events, bytes)
    VALUES (NEW.function, 1, octet_length(NEW.payload))
    ON CONFLICT (function) DO UPDATE SET events = event_totals.events + 1,
                                         bytes = event_totals.bytes + octet_length(NEW.payload);
    RETURN NULL;
END $$ LANGUAGE plpgsql""",
    """CREATE OR REPLACE FUNCTION sora_event_totals_remove() RETURNS trigger AS $$
BEGIN
    UPDATE event_totals SET events = events - 1, bytes = bytes - octet_length(OLD.payload)
    WHERE function = OLD.function;
    RETURN NULL;
END $$ LANGUAGE plpgsql""",
    "DROP TRIGGER IF EXISTS event_totals_add ON events",
    "CREATE TRIGGER event_totals_add AFTER INSERT ON events "
    "FOR EACH ROW EXECUTE FUNCTION sora_event_totals_add()",
    "DROP TRIGGER IF EXISTS event_totals_remove ON events",
    "CREATE TRIGGER event_totals_remove AFTER DELETE ON events "
    "FOR EACH ROW EXECUTE FUNCTION sora_event_totals_remove()",
]


def ddl(statements: list[str], dialect: str) -> list[str]:
    return [s.format(**_TYPES[dialect]) for s in statements]


def _run(conn, statements: list[str]) -> None:
    for statement in statements:
        conn.execute(statement)


def _columns(conn, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _add_columns(conn, table: str, columns: dict[str, str]) -> None:
    """SQLite: the columns a table made by an older Sora lacks (CREATE TABLE IF NOT EXISTS
    keeps an old table as it was)."""
    have = _columns(conn, table)
    for name, decl in columns.items():
        if name not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")


def _with_host_key(conn, table: str, create: str, columns: str) -> None:
    """SQLite: an older file_seen / file_sequencers (no `host`, keyed without it) rebuilt with
    the host in its key; rows kept, host '' (this host's: sora.store.file_seen reads them)."""
    if not _columns(conn, table) or "host" in _columns(conn, table):
        return
    conn.execute(f"ALTER TABLE {table} RENAME TO {table}_old")
    conn.execute(create)
    conn.execute(f"INSERT INTO {table} (host, {columns}) SELECT '', {columns} FROM {table}_old")
    conn.execute(f"DROP TABLE {table}_old")


def _sqlite_records_v1(conn) -> None:
    _run(conn, ddl(RECORDS_TABLES, "sqlite"))
    _add_columns(conn, "invocations", {"error_message": "TEXT", "max_memory_mb": "INTEGER",
                                       "init_duration_ms": "REAL"})


def _sqlite_queue_v1(conn) -> None:
    tables = ddl(QUEUE_TABLES, "sqlite")
    by_name = {t.split("EXISTS ", 1)[1].split(" ", 1)[0]: t for t in tables
               if t.startswith("CREATE TABLE")}
    _with_host_key(conn, "file_seen", by_name["file_seen"],
                   "function, trigger_key, relpath, size, mtime_ns, etag")
    _with_host_key(conn, "file_sequencers", by_name["file_sequencers"],
                   "function, trigger_key, last")
    _run(conn, tables)
    _add_columns(conn, "events", {"lease_owner": "TEXT"})
    _run(conn, SQLITE_TOTALS_TRIGGERS)
    # Files from before event_totals (PRAGMA user_version 0): count them once.
    if conn.execute("PRAGMA user_version").fetchone()[0] < 1:
        conn.execute("DELETE FROM event_totals")
        conn.execute("INSERT INTO event_totals SELECT function, COUNT(*), "
                     "SUM(length(payload)) FROM events GROUP BY function")
        conn.execute("PRAGMA user_version = 1")


def _pg_v1(conn) -> None:
    _run(conn, ddl(RECORDS_TABLES, "postgresql"))
    _run(conn, ddl(QUEUE_TABLES, "postgresql"))
    _run(conn, PG_TOTALS_TRIGGERS)


# (dialect, part) -> [(version, step)], in order. PostgreSQL's part is "all": one database.
STEPS: dict[tuple[str, str], list[tuple[int, Callable]]] = {
    ("sqlite", "records"): [(1, _sqlite_records_v1)],
    ("sqlite", "queue"): [(1, _sqlite_queue_v1)],
    ("postgresql", "all"): [(1, _pg_v1)],
}


def _stored_version(conn) -> int | None:
    """The store's schema version; None when it has no `sora_schema` table yet."""
    if conn.dialect == "sqlite":
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                        "name = 'sora_schema'").fetchone() is None:
            return None
    elif conn.execute("SELECT to_regclass('sora_schema')").fetchone()[0] is None:
        return None
    row = conn.execute("SELECT MAX(version) FROM sora_schema").fetchone()
    return row[0] if row and row[0] is not None else 0


def _too_new(stored: int, where: str) -> SchemaTooNew:
    return SchemaTooNew(
        f"{where}: the store's schema is version {stored}; this Sora knows up to "
        f"{SCHEMA_VERSION}. A newer Sora has used this store: run that version (or newer), "
        "or give this one a store of its own (an older Sora never writes tables it does not "
        "know).")


def ensure(conn, where: str, part: str = "all") -> int:
    """Bring the store to SCHEMA_VERSION (see the module's doc); returns the version it was
    at (0: new or made before versions). `where` names the store in errors (a file's path or
    the display URL). Raises SchemaTooNew."""
    stored = _stored_version(conn)
    if stored is not None and stored == SCHEMA_VERSION:
        return stored              # the common case: no lock, one or two reads
    if stored is not None and stored > SCHEMA_VERSION:
        raise _too_new(stored, where)
    steps = STEPS[(conn.dialect, "all" if conn.dialect == "postgresql" else part)]
    with conn.transaction():
        if conn.dialect == "postgresql":
            conn.execute("SELECT pg_advisory_xact_lock(?)", (PG_LOCK_KEY,))
        conn.execute("CREATE TABLE IF NOT EXISTS sora_schema (version INTEGER NOT NULL)")
        stored = _stored_version(conn) or 0      # again, under the lock
        if stored > SCHEMA_VERSION:
            raise _too_new(stored, where)
        for version, step in steps:
            if version > stored:
                step(conn)
        if stored < SCHEMA_VERSION:
            conn.execute("DELETE FROM sora_schema")
            conn.execute("INSERT INTO sora_schema (version) VALUES (?)", (SCHEMA_VERSION,))
    return stored


def set_version(conn, version: int) -> None:
    """Tests: mark the store as made by another Sora's schema `version`."""
    with conn.transaction():
        conn.execute("DELETE FROM sora_schema")
        conn.execute("INSERT INTO sora_schema (version) VALUES (?)", (version,))
