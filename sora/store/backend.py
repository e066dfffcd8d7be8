"""One store interface over two backends: SQLite files in the state dir, or one PostgreSQL
database that several hosts share (host-config.yaml `store:`, sora.config.StoreConfig).

Every part of Sora opens its store with `connect(config.store, state_dir, part)` and gets a
`Connection` whose calls are the same on both: `execute`/`executemany` with `?` placeholders,
rows indexable by position and by column name, `with conn.transaction():` for a write that
must be atomic, `conn.dialect` where the SQL must differ. Errors of either backend are caught
with `except ERRORS` (what was `except sqlite3.Error`).

- SQLite: a `sqlite3.Connection` subclass (made by `sqlite3.connect(factory=...)`), so the
  path that served one machine costs nothing more. `part` picks the file: "records"
  (`sora.db`) or "queue" (`queue.db`); each has its own lock and durability (sora.store.db).
- PostgreSQL: one database for every part. Each process keeps one psycopg_pool
  ConnectionPool per URL (made on first use, so after any fork; at most `poolSize`
  connections). Outside a transaction each execute borrows a connection in autocommit, fetches
  its rows and gives the connection back; inside `transaction()` one connection is held for
  the block (per thread). psycopg's errors never leave this module: they become StoreError
  subclasses whose messages show the URL with its password as `***`.

The schema is created or migrated once per process and store at connect (sora.store.schema).
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
import threading
from typing import Any, Callable, Iterable, Iterator

from ..config import HostConfig, StoreConfig, display_url

log = logging.getLogger("sora.store")

PARTS = ("records", "queue")
SQLITE_FILES = {"records": "sora.db", "queue": "queue.db"}
BUSY_TIMEOUT_MS = 5000
# How long a PostgreSQL caller waits for a pooled connection before StoreUnavailable (a
# down database answers 503 after this, not after psycopg_pool's 30 s default). A caller's
# `busy_ms` (the gateways' short wait for the queue) takes its place when given.
POOL_WAIT_S = 5.0
# A new connection that cannot reach the server within this fails (libpq's connect_timeout).
CONNECT_TIMEOUT_S = 5


class StoreError(Exception):
    """A store's error (PostgreSQL's, as raised through a PgConnection)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached: no connection, a lost one, or none free in time. Callers
    answer 503; the pool reconnects by itself when the database is back."""


class StoreIntegrityError(StoreError):
    """A unique or foreign-key violation (psycopg.IntegrityError)."""


class SchemaTooNew(StoreError):
    """The store's schema was made by a newer Sora than this one."""


ERRORS = (sqlite3.Error, StoreError)
INTEGRITY_ERRORS = (sqlite3.IntegrityError, StoreIntegrityError)


def host_id(config: HostConfig) -> str:
    """This host's name in shared rows (lease owners, file_seen's host): `cluster.name` when
    the config sets one, else `<hostname>:<stateDir>` (two hosts on one machine differ by
    their state dirs)."""
    from ..config import default_host_name
    name = config.cluster.name
    if name and name != default_host_name():
        return name
    return f"{socket.gethostname() or 'host'}:{config.stateDir}"


def connect(store: StoreConfig, state_dir: str, part: str, **sqlite_options) -> "Connection":
    """A connection to the store's `part` ("records" or "queue"); creates or migrates the
    schema first (once per process and store). `sqlite_options`: `synchronous` (default:
    NORMAL for records, FULL for the queue), `busy_ms`, `checkpoints` (see sora.store.db);
    on PostgreSQL `busy_ms` is the longest wait for a pooled connection and the rest do not
    apply. Raises SchemaTooNew, StoreUnavailable, or sqlite3.Error."""
    if part not in PARTS:
        raise ValueError(f"store part: expected one of {PARTS}, got {part!r}")
    if store.kind == "postgresql":
        busy_ms = sqlite_options.get("busy_ms")
        conn = PgConnection(store, wait_s=busy_ms / 1000 if busy_ms else POOL_WAIT_S)
        _ensure_pg_schema(conn)
        return conn
    from . import db
    return db.open_sqlite(state_dir, part, **sqlite_options)


def prepare(store: StoreConfig, state_dir: str) -> None:
    """At a host's start, before its children: create or migrate every part's schema (so an
    older Sora refuses a newer store at once, with SchemaTooNew, rather than in each child's
    log), then close what it opened (the children open their own, after the fork). Raises
    SchemaTooNew, StoreUnavailable, sqlite3.Error."""
    try:
        for part in PARTS:
            connect(store, state_dir, part).close()
    finally:
        close_pools()


# --- SQLite -----------------------------------------------------------------------------------

class SqliteConnection(sqlite3.Connection):
    """sqlite3's connection with the interface's two additions."""
    dialect = "sqlite"

    @contextlib.contextmanager
    def transaction(self) -> Iterator["SqliteConnection"]:
        """BEGIN IMMEDIATE (the write lock from the start, so two writers never deadlock
        upgrading a read) ... COMMIT, or ROLLBACK on an error. Inside another transaction of
        this connection it is part of that one."""
        if self.in_transaction:
            yield self
            return
        self.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.rollback()
            raise
        self.commit()

    @property
    def store_name(self) -> str:
        return self.execute("PRAGMA database_list").fetchone()[2]


# --- PostgreSQL -------------------------------------------------------------------------------

_pools: dict[tuple[int, str], Any] = {}
_pools_lock = threading.Lock()
_secrets: set[str] = set()          # passwords scrubbed from messages and psycopg's log lines


def _password_of(url: str) -> str | None:
    from urllib.parse import parse_qs, unquote, urlsplit
    try:
        parts = urlsplit(url)
        password = parts.password
        query = parse_qs(parts.query).get("password")
    except ValueError:
        return None
    found = unquote(password) if password else (query[0] if query else None)
    return found or None


def scrub(text: str, url: str | None = None) -> str:
    """`text` with every known store password (and `url` itself) replaced by `***`."""
    if url:
        text = text.replace(url, display_url(url))
    for secret in _secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class _ScrubFilter(logging.Filter):
    """psycopg_pool logs its connection failures itself: without the password."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            message = scrub(record.getMessage())
            record.msg, record.args = message, None
        return True


def _pool(store: StoreConfig):
    """This process's pool for the store's URL (made here on first use: a pool's threads
    and sockets do not survive a fork, so a child makes its own)."""
    key = (os.getpid(), store.url)
    pool = _pools.get(key)
    if pool is not None:
        return pool
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            from psycopg_pool import ConnectionPool
            secret = _password_of(store.url)
            if secret:
                _secrets.add(secret)
            for name in ("psycopg", "psycopg.pool"):
                logger = logging.getLogger(name)
                if not any(isinstance(f, _ScrubFilter) for f in logger.filters):
                    logger.addFilter(_ScrubFilter())
            pool = ConnectionPool(
                store.url, min_size=1, max_size=store.poolSize, open=True,
                name=f"sora-{os.getpid()}",
                kwargs={"autocommit": True, "row_factory": _row_factory,
                        "connect_timeout": CONNECT_TIMEOUT_S,
                        "application_name": f"sora-{os.getpid()}"},
                # A connection the database dropped (a restart) is found and replaced when
                # lent, not handed out to fail the caller's statement.
                check=ConnectionPool.check_connection,
                reconnect_timeout=24 * 3600)
            _pools[key] = pool
    return pool


def close_pools(which: Callable[[str], bool] | None = None) -> None:
    """Close this process's pools (those whose URL `which` accepts; all by default): a
    process's shutdown, or a test dropping its database."""
    with _pools_lock:
        mine = [key for key in _pools
                if key[0] == os.getpid() and (which is None or which(key[1]))]
        for key in mine:
            _pools.pop(key).close()
            _ensured.discard(key)


class Row(tuple):
    """A PostgreSQL row as sqlite3.Row shows one: by position, or by column name."""
    __slots__ = ()
    _names: dict[str, int] = {}

    def __getitem__(self, key):
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


_row_classes: dict[tuple[str, ...], type] = {}


def _row_factory(cursor):
    description = cursor.description
    if description is None:
        return tuple
    names = tuple(column.name for column in description)
    cls = _row_classes.get(names)
    if cls is None:
        cls = type("Row", (Row,), {"__slots__": (), "_names": {n: i for i, n in enumerate(names)}})
        _row_classes[names] = cls
    return cls


_converted: dict[str, str] = {}


def pg_sql(sql: str) -> str:
    """`?` placeholders as psycopg's `%s`, and a literal `%` as `%%` (outside and inside
    quoted strings: psycopg reads every `%` of a query given parameters); cached per string."""
    done = _converted.get(sql)
    if done is None:
        out, quoted = [], False
        for ch in sql:
            if ch == "'":
                quoted = not quoted
                out.append(ch)
            elif ch == "%":
                out.append("%%")
            elif ch == "?" and not quoted:
                out.append("%s")
            else:
                out.append(ch)
        done = _converted[sql] = "".join(out)
    return done


class Result:
    """The rows of one statement, fetched before its connection went back to the pool."""

    def __init__(self, rows: list, rowcount: int, description=None):
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount
        self.description = description

    def fetchone(self):
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list:
        rows, self._next = self._rows[self._next:], len(self._rows)
        return rows

    def fetchmany(self, size: int = 1) -> list:
        rows = self._rows[self._next:self._next + size]
        self._next += len(rows)
        return rows

    def __iter__(self):
        while (row := self.fetchone()) is not None:
            yield row


def _run(pg, sql: str, params, many: bool = False) -> Result:
    with pg.cursor() as cursor:
        if many:
            cursor.executemany(pg_sql(sql), params)
        else:
            cursor.execute(pg_sql(sql), tuple(params))
        rows = cursor.fetchall() if cursor.description is not None else []
        return Result(rows, cursor.rowcount, cursor.description)


class PgConnection:
    """A Connection on PostgreSQL (see the module's doc). Safe to share between threads: a
    transaction's connection is per thread."""
    dialect = "postgresql"

    def __init__(self, store: StoreConfig, wait_s: float = POOL_WAIT_S):
        self.store = store
        self.wait_s = wait_s
        self._local = threading.local()
        self.closed = False

    @property
    def _held(self):
        return getattr(self._local, "conn", None)

    @property
    def in_transaction(self) -> bool:
        return self._held is not None

    @property
    def store_name(self) -> str:
        return self.store.display_url

    def _error(self, exc: BaseException) -> StoreError:
        return wrap_error(exc, self.store)

    def execute(self, sql: str, params: Iterable = ()) -> Result:
        held = self._held
        try:
            if held is not None:
                return _run(held, sql, params)
            with _pool(self.store).connection(timeout=self.wait_s) as pg:
                return _run(pg, sql, params)
        except StoreError:
            raise
        except Exception as exc:
            if _is_psycopg(exc):
                raise self._error(exc) from None
            raise

    def executemany(self, sql: str, seq: Iterable) -> Result:
        seq = list(seq)
        if not seq:
            return Result([], 0)
        held = self._held
        try:
            if held is not None:
                return _run(held, sql, seq, many=True)
            with _pool(self.store).connection(timeout=self.wait_s) as pg:
                with pg.transaction():
                    return _run(pg, sql, seq, many=True)
        except StoreError:
            raise
        except Exception as exc:
            if _is_psycopg(exc):
                raise self._error(exc) from None
            raise

    def copy_rows(self, table: str, columns: tuple[str, ...], rows: Iterable) -> None:
        """PostgreSQL only: insert `rows` with COPY (one round trip for a whole batch; the
        recorder's many rows at once), inside the current transaction if there is one."""
        statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"

        def run(pg):
            with pg.cursor() as cursor, cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
        held = self._held
        try:
            if held is not None:
                run(held)
                return
            with _pool(self.store).connection(timeout=self.wait_s) as pg:
                with pg.transaction():
                    run(pg)
        except StoreError:
            raise
        except Exception as exc:
            if _is_psycopg(exc):
                raise self._error(exc) from None
            raise

    @contextlib.contextmanager
    def transaction(self) -> Iterator["PgConnection"]:
        """One pooled connection held for the block, in a transaction committed at its end
        (rolled back on an error). Nested inside another of this thread: part of that one."""
        if self._held is not None:
            yield self
            return
        try:
            with _pool(self.store).connection(timeout=self.wait_s) as pg:
                with pg.transaction():
                    self._local.conn = pg
                    try:
                        yield self
                    finally:
                        self._local.conn = None
        except StoreError:
            raise
        except Exception as exc:
            if _is_psycopg(exc):
                raise self._error(exc) from None
            raise

    def commit(self) -> None:
        """Nothing to do: outside a transaction every statement is committed by itself."""

    def close(self) -> None:
        """The pool stays for the process's other connections (close_pools ends it)."""
        self.closed = True


def _is_psycopg(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return module.startswith("psycopg")


def wrap_error(exc: BaseException, store: StoreConfig) -> StoreError:
    """psycopg's (or psycopg_pool's) error as a StoreError naming the store by its display
    URL, its message scrubbed of the password."""
    import psycopg
    from psycopg_pool import PoolTimeout
    message = scrub(str(exc).strip() or type(exc).__name__, store.url)
    where = store.display_url
    if isinstance(exc, PoolTimeout):
        return StoreUnavailable(f"store {where}: no database connection within the wait "
                                f"({message})")
    if isinstance(exc, psycopg.IntegrityError):
        return StoreIntegrityError(f"store {where}: {message}")
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) and \
            not isinstance(exc, psycopg.errors.QueryCanceled) or \
            getattr(exc, "sqlstate", None) and str(exc.sqlstate).startswith(("08", "57P")):
        return StoreUnavailable(f"store {where}: {message}")
    return StoreError(f"store {where}: {message}")


_ensured: set[tuple[int, str]] = set()


def _ensure_pg_schema(conn: PgConnection) -> None:
    key = (os.getpid(), conn.store.url)
    if key in _ensured:
        return
    from . import schema
    schema.ensure(conn, conn.store.display_url)
    _ensured.add(key)


Connection = SqliteConnection | PgConnection


def sqlite_path(state_dir: str, part: str) -> str:
    return os.path.join(state_dir, SQLITE_FILES[part])

