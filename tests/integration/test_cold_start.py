"""Cold-start simulation: `coldStart: always` and `always-setup` in sora.yaml."""
from __future__ import annotations

import pytest

from tests.integration import functions as F
from tests.support import json_of, processes_in, served, wait_for, write_function

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("cold-start")
    fns = base / "fns"
    dirs = [
        write_function(fns, "always", {"index.js": F.SETUP_COUNTER}, name="always",
                       coldStart="always"),
        write_function(fns, "always-setup", {"index.js": F.SETUP_COUNTER}, name="always-setup",
                       coldStart="always-setup", setup=["echo run >> setup-runs.txt"]),
        write_function(fns, "warm", {"index.js": F.SETUP_COUNTER}, name="warm"),
    ]
    yield from served(base, dirs, https=False)


def invoke(host, name):
    r = host.invoke(name)
    assert r.status_code == 200, r.text
    return json_of(r), host.record(r.headers["X-Sora-Request-Id"])


def test_always_runs_every_invocation_on_a_fresh_instance(host):
    seen = [invoke(host, "always") for _ in range(3)]
    assert len({body["instance"] for body, _ in seen}) == 3
    assert all(rec["cold"] for _, rec in seen)
    # The instances it tore down are gone, not left running beside the fresh ones.
    wait_for(lambda: len(processes_in(host.base / "fns" / "always", "node")) <= 1,
             what="torn-down instances to be gone")


def test_always_setup_runs_setup_again_before_each_fresh_instance(host):
    first, rec1 = invoke(host, "always-setup")
    assert first["setupRuns"] >= 1  # run at start too, even though nothing changed
    # Each fresh instance starts after a setup of its own: the count grows by one each time.
    second, rec2 = wait_for(lambda: invoke(host, "always-setup"), what="the next invocation")
    assert second["setupRuns"] == first["setupRuns"] + 1
    assert second["instance"] != first["instance"]
    assert rec1["cold"] and rec2["cold"]


def test_never_is_the_default_and_keeps_the_instance_warm(host):
    (first, _), (second, rec2) = invoke(host, "warm"), invoke(host, "warm")
    assert first["instance"] == second["instance"]
    assert rec2["cold"] is False
