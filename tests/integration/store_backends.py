"""A module-scoped store backend for integration modules whose one host serves all their tests:
`module_store` (parametrized `sqlite` / `postgresql`, a fresh database on the tests' server),
`store_setting` (its host-config.yaml `store:`) and `queue_of` (a connection to a host's queue).
A module binds the fixture under its name (`module_store = store_backends.module_store`) and
its host takes `extra=store_setting(module_store)`."""
from __future__ import annotations

import pytest

from sora.config import StoreConfig
from sora.store import backend


def store_setting(store: StoreConfig) -> dict:
    """host-config.yaml's `store:` for a StoreConfig (nothing for SQLite, the default)."""
    return {} if store.kind == "sqlite" else {"store": {"url": store.url, "poolSize": 4}}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_store(request):
    """The module's store: SQLite, or a fresh PostgreSQL database on the tests' server."""
    if request.param == "sqlite":
        yield StoreConfig()
        return
    server = request.getfixturevalue("postgres_server")
    database = server.create_database()
    yield StoreConfig(kind="postgresql", url=server.url(database), poolSize=4)
    server.drop_database(database)


def queue_of(host, store: StoreConfig):
    """A connection to the host's queue (its queue.db, or the PostgreSQL store)."""
    return backend.connect(store, str(host.base / "state"), "queue")
