"""Each schedule time fires once cluster-wide (issue 21): three hosts (`sora-supervisor start`,
each its own state dir, ports and cluster.name) on one PostgreSQL database run the same
`rate(1 second)` schedule; every due time is fired by exactly one of them, none is missed, and
when one host stops the others go on firing without a gap. The attacker's side: the scheduled
function never sees the store's URL or its password. Real time, polling with deadlines."""
from __future__ import annotations

import concurrent.futures
import json
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from sora.config import StoreConfig
from sora.store import backend
from sora.store import triggers as trigger_store
from sora.triggers import control
from tests.integration.test_schedule_triggers import due_of, marks_in
from tests.support import SoraHost, wait_for, write_function

pytestmark = pytest.mark.integration

HOSTS = 3
EXPRESSION = "rate(1 second)"     # the finest the schedule syntax has

# Leaves <marks>/<request id>.json with the event and the environment it ran with.
MARKER = """
const fs = require('node:fs');
const path = require('node:path');
exports.handler = async (event, context) => {
  fs.writeFileSync(path.join(process.env.MARKS, context.awsRequestId + '.json'),
                   JSON.stringify({ event, env: process.env }));
  return 'ok';
};
"""


def runs_by_due(folder: Path) -> dict[float, set[str]]:
    out: dict[float, set[str]] = {}
    for rid, mark in marks_in(folder).items():
        out.setdefault(due_of(mark["event"]), set()).add(rid)
    return out


@pytest.fixture
def cluster(tmp_path, postgres_url):
    url = postgres_url                     # with a password (tests/postgres_server.py)
    marks_dir = tmp_path / "marks"
    marks_dir.mkdir()
    # `isolation: none`: the marks are in a folder of the host's, which a sandbox hides.
    fn = write_function(tmp_path / "fns", "tick", {"index.js": MARKER}, name="tick",
                        trigger=["http", {"schedule": EXPRESSION, "overlap": "allow"}],
                        isolation="none", env={"MARKS": str(marks_dir)})
    hosts = []
    for i in range(HOSTS):
        base = tmp_path / f"host{i}"
        base.mkdir()
        hosts.append(SoraHost(base, [fn], https=False, extra={
            "store": {"url": url}, "cluster": {"name": f"host{i}"}}))
    try:
        with concurrent.futures.ThreadPoolExecutor(HOSTS) as pool:   # start them together
            list(pool.map(lambda h: h.start(["tick"]), hosts))
        yield hosts, marks_dir, StoreConfig(kind="postgresql", url=url)
    finally:
        for host in hosts:
            if host.proc is not None and host.proc.poll() is None:
                host.stop()


def test_three_hosts_fire_each_due_time_once_and_go_on_when_one_stops(cluster):
    hosts, marks_dir, store = cluster
    start = time.time()
    first = float(int(start) + 2)          # the first time every host's scheduler had
    # Every host runs the schedule (each trigger service reports its next times) ...
    for host in hosts:
        status = control.request(str(host.base / "state"), "status", {"function": "tick"})
        (entry,) = status["functions"]["tick"]
        assert entry["state"] == "active" and len(entry["next"]) == 3, entry
    wait_for(lambda: max(runs_by_due(marks_dir), default=0) >= first + 5, timeout=30,
             what="six seconds of firings from three hosts")
    assert hosts[0].stop() == 0            # ... and the other two go on without a gap
    stopped = time.time()
    last = float(int(stopped) + 4)
    wait_for(lambda: all(float(t) in runs_by_due(marks_dir)
                         for t in range(int(first), int(last) + 1)),
             timeout=30, what="a run for every due time, before and after the stop")
    by_due = runs_by_due(marks_dir)
    window = [float(t) for t in range(int(first), int(last) + 1)]
    twice = {t: ids for t, ids in by_due.items() if len(ids) > 1}
    assert not twice, f"due times fired more than once: {twice}"
    assert all(len(by_due[t]) == 1 for t in window)
    # The store agrees: one decision per due time, each an enqueued firing.
    conn = backend.connect(store, str(hosts[1].base / "state"), "queue")
    try:
        key = f"schedule:{EXPRESSION}@UTC"
        history = trigger_store.firings(conn, "tick", key, limit=trigger_store.KEEP_FIRINGS)
    finally:
        conn.close()
    # Every running host raced for every time: the losers found it handled (2 per time while
    # all three ran, 1 after the stop).
    lost = sum(control.request(str(h.base / "state"), "status", {"function": "tick"})
               ["scheduler"]["alreadyHandled"] for h in hosts[1:])
    print(f"{len(window)} due times, {lost} found handled by another host (hosts 1 and 2)")
    assert lost >= len(window) // 2, f"{lost} due times found handled by another host"
    decided = Counter(f["due"] for f in history if first <= f["due"] <= last)
    assert sorted(decided) == window and set(decided.values()) == {1}, decided
    assert {f["outcome"] for f in history if first <= f["due"] <= last} == {"enqueued"}
    # The attacker's side: a scheduled function sees neither the store's URL nor its password.
    password = urlsplit(store.url).password
    assert password
    for mark in marks_in(marks_dir).values():
        env = json.dumps(mark["env"])
        assert password not in env and "postgresql://" not in env
    for host in hosts[1:]:
        assert host.stop() == 0
    for host in hosts:
        assert password not in host.log(whole=True)
        assert not host.leftover_processes(), host.leftover_processes()
