"""Two Sora hosts on one PostgreSQL database (issue 21): each its own supervisor, state dir,
ports and cluster.name, sharing only the store. A version published on host A runs its code on
host B (B's copy is made from the store's tar on B's first call), an alias made on A routes
B's calls, a move on A reaches B within a second, numbers continue across hosts, and neither
the function nor the logs nor the answers ever show the database's password."""
from __future__ import annotations

import time

import pytest

from sora.config import StoreConfig
from sora.control import admin
from sora.versions.api import VersionsApi
from tests.support import SoraHost, wait_for, write_function

pytestmark = pytest.mark.integration

CODE = """
exports.handler = async (event, context) => ({
  code: '%s', ctx: context.functionVersion,
  env: Object.entries(process.env).map(([k, v]) => k + '=' + v).join('\\n'),
});
"""


@pytest.fixture
def hosts(tmp_path, postgres_url):
    store = StoreConfig(kind="postgresql", url=postgres_url, poolSize=2)
    made = []
    for name, code in (("a", "A-1"), ("b", "B-latest")):
        base = tmp_path / name
        fn_dir = write_function(base / "fns", "ver", {"index.js": CODE % code}, name="ver")
        host = SoraHost(base, [fn_dir], https=False, store=store,
                        extra={"cluster": {"name": f"host-{name}"}})
        host.state_dir = str(base / "state")
        made.append(host)
    try:
        for host in made:
            host.start()
        yield made[0], made[1], store
    finally:
        for host in made:
            if host.proc is not None:
                assert host.stop() == 0


def call(host, name):
    r = host.invoke(name)
    assert r.status_code == 200, r.text
    return r.json(), r.headers


def test_a_version_published_on_one_host_runs_on_the_other(hosts):
    host_a, host_b, store = hosts
    one = admin.request(host_a.state_dir, "publish", {"function": "ver"}, 120)
    assert one["Version"] == "1", one
    VersionsApi(host_a.state_dir, store=store).create_alias("ver", "live", "1")

    body, headers = call(host_b, "ver:1")   # B never had this code: copied from the store
    assert body["code"] == "A-1" and body["ctx"] == "1"
    assert headers["X-Amz-Executed-Version"] == "1"
    body, _ = call(host_b, "ver:live")
    assert body["code"] == "A-1"
    body, _ = call(host_b, "ver")
    assert body["code"] == "B-latest" and body["ctx"] == "$LATEST"

    # Moved on A: B's calls follow within a second (its cached aliases are rechecked).
    VersionsApi(host_a.state_dir, store=store).update_alias("ver", "live", "$LATEST")
    moved = time.monotonic()
    wait_for(lambda: call(host_b, "ver:live")[0]["code"] == "B-latest", 10,
             what="host B to follow the alias moved on host A")
    assert time.monotonic() - moved < 3.0

    # Numbers continue across hosts: B's publish is 2, and A runs it.
    two = admin.request(host_b.state_dir, "publish", {"function": "ver"}, 120)
    assert two["Version"] == "2", two
    body, _ = call(host_a, "ver:2")
    assert body["code"] == "B-latest" and body["ctx"] == "2"
    listed = [v["Version"] for v in host_b.session.get(
        f"{host_b.url}/2015-03-31/functions/ver/versions", timeout=10).json()["Versions"]]
    assert listed == ["$LATEST", "1", "2"]

    # The trust boundary: the database URL's password is nowhere a function or a caller sees.
    password = store.url.split(":")[2].split("@")[0]
    for host in (host_a, host_b):
        for name in ("ver", "ver:1", "ver:2"):
            body, _ = call(host, name)
            assert password not in body["env"] and "postgresql://" not in body["env"]
        assert password not in host.log(whole=True)
    health = host_b.health()
    assert "ver:1" in health["versions"] and password not in str(health)
