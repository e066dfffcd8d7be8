"""For integration modules whose one host serves all their tests on each backend (the
`module_store_backend` fixture of tests/postgres_server.py): `store_setting` (a StoreConfig's
host-config.yaml `store:`) and `queue_of` (a connection to a host's queue)."""
from __future__ import annotations

from sora.config import StoreConfig
from sora.store import backend


def store_setting(store: StoreConfig) -> dict:
    """host-config.yaml's `store:` for a StoreConfig (nothing for SQLite, the default)."""
    return {} if store.kind == "sqlite" else {"store": {"url": store.url, "poolSize": 4}}


def queue_of(host, store: StoreConfig):
    """A connection to the host's queue (its queue.db, or the PostgreSQL store)."""
    return backend.connect(store, str(host.base / "state"), "queue")
