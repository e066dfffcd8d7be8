import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest  # noqa: E402 - after the path insert above, like the tests' own imports


@pytest.fixture(scope="session")
def _netns_session():
    """Once per session, for tests that make hosts: skip where the kernel refuses network
    namespaces, and sweep what an earlier run killed before its teardown left behind."""
    from tests import netns
    try:
        netns.check_available()
    except netns.NetnsUnavailable as exc:
        if netns.skippable(exc):
            pytest.skip(f"network namespaces are not available here: {exc}")
        raise
    netns.sweep_dead_runs()
    yield netns


@pytest.fixture
def hosts(_netns_session):
    """`hosts(n)`: a tests.netns.Network of n hosts, each in a network namespace of its own,
    bridged with each other and the root namespace; removed (with every supervisor started on
    it) at the end of the test, and the test fails if anything is left."""
    networks = []

    def make(n: int):
        networks.append(_netns_session.Network(n))
        return networks[-1]
    yield make
    left = []
    for network in networks:
        left += network.teardown()
    assert not left, f"network namespaces left behind: {left}"


@pytest.fixture(scope="session")
def docker_engine():
    """The Docker engine of the container tests (tests/docker_engine.py): the system's at
    /var/run/docker.sock when it answers, else a dockerd of this session's own, stopped at the
    session's end. `.socket` is for Sora's `server.docker.socket`, `.client` for the tests."""
    from tests import docker_engine as engines
    try:
        engine = engines.open_engine()
    except engines.EngineFailed as exc:
        pytest.fail(str(exc), pytrace=False)
    yield engine
    engines.close_engine(engine)


# PostgreSQL servers of the tests' own (tests/postgres_server.py): `postgres_server`,
# `postgres_url`, `store_backend` (sqlite / postgresql), `module_store_backend` and
# `postgres_server_factory`.
from tests import postgres_server as _postgres  # noqa: E402

postgres_server = _postgres.postgres_server
postgres_url = _postgres.postgres_url
store_backend = _postgres.store_backend
module_store_backend = _postgres.module_store_backend
postgres_server_factory = _postgres.postgres_server_factory
