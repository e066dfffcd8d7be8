"""The store connection of the versions' readers and writers: one per process, thread and
store (sora.store.backend.connect, part "records"), opened on first use.

The gateways build a VersionsApi per request and a Resolver per route; opening SQLite (and
checking its schema) per object would cost more than the reads themselves. A SQLite
connection is kept per thread because a transaction (BEGIN IMMEDIATE ... COMMIT) belongs to
its connection: two threads sharing one would mix their statements into one transaction.
PostgreSQL's connection object already holds a transaction per thread (its pool is the
process's).
"""
from __future__ import annotations

import os
import threading

from ..config import StoreConfig
from ..store import backend

_local = threading.local()


def store_connection(store: StoreConfig, state_dir: str, busy_ms: int | None = None):
    """This thread's connection to `store` (for SQLite: `state_dir`'s sora.db). `busy_ms`:
    the longest wait for a pooled connection (the call path waits less than the default)."""
    key = (os.getpid(), store.kind, store.url, os.path.abspath(state_dir), busy_ms)
    cache = getattr(_local, "connections", None)
    if cache is None:
        cache = _local.connections = {}
    conn = cache.get(key)
    if conn is None:
        options = {"busy_ms": busy_ms} if busy_ms else {}
        conn = cache[key] = backend.connect(store, state_dir, "records", **options)
    return conn
