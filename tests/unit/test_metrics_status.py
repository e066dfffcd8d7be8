"""The status figures (issue 19): busy, idle, starting, queued summed per function over its
workers and joined hosts, as /healthz, /api/functions and /metrics read them."""
import time

import pytest

from sora.control.plane import ControlPlane
from sora.supervisor.hosts import checked_members


@pytest.fixture
def plane(tmp_path):
    c = ControlPlane(f"ipc://{tmp_path}/control.sock", host="main")
    yield c
    c.close()


def entry(**figures):
    return {"available": True, "reason": "", "maxQueued": 7, "maxWait": 2.0,
            "state": "RUNNING", "instances": 2, "inFlight": 1, **figures,
            "workers": [{"id": "hello/9", "endpoint": "tcp://10.0.0.2:7001"}]}


def test_figures_are_summed_over_workers_and_hosts(plane):
    import json
    c = plane
    c.set_functions({"hello": {"maxQueued": 3, "maxWait": 4.0, "available": True},
                     "idle": {"maxQueued": 3, "maxWait": 4.0, "available": True}})
    c.status_snapshot = {"functions": {"hello": {"state": "RUNNING"},
                                       "idle": {"state": "RUNNING"},
                                       "broken": {"state": "FATAL"}}}
    now = time.monotonic()
    c.register(b"hello/5", "hello", "ipc:///x/w-5.sock", 2, now)
    c.register(b"hello/6", "hello", "ipc:///x/w-6.sock", 1, now)
    c.workers[b"hello/5"].figures = (2, 0, 0, 4)
    c.workers[b"hello/6"].figures = (0, 1, 1, 0)
    # A joined host's sums; what is no count there counts as 0 (hosts.checked_members).
    c.set_remote("h2", checked_members("h2", {"hello": entry(busy=1, idle=2, starting="x",
                                                             queued=1e999)}, "K" * 40))
    status = json.loads(c.status_body())
    hello = status["functions"]["hello"]
    assert (hello["busy"], hello["idle"], hello["starting"], hello["queued"]) == (3, 3, 1, 4)
    assert [status["functions"][n]["busy"] for n in ("idle", "broken")] == [0, 0]
    local = c.local_members()["hello"]
    assert (local["busy"], local["idle"], local["starting"], local["queued"]) == (2, 1, 1, 4)
