"""Autoscaling: scale out on waiting calls, back in when idle, to zero, within the function's
concurrency and the host's limits (real supervisor, gateway and Node)."""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration import functions as F
from tests.support import SoraHost, json_of, wait_for, write_function

pytestmark = pytest.mark.integration


def runtimes_of(host, fn_dir):
    """The function's live Node instances (runtime processes whose cwd is its folder)."""
    out = []
    for proc in host.descendants():
        try:
            if proc.cwd() == str(fn_dir) and "node" in proc.name():
                out.append(proc)
        except Exception:  # it exited meanwhile
            continue
    return out


def burst(host, name, count, ms):
    # Connections kept from an earlier burst may be at the gateway's keep-alive limit (2 s) as
    # the burst reuses them: the gateway closing one as a request goes out is no answer.
    host.session.close()
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: host.invoke(name, params={"ms": str(ms)}),
                             range(count)))


def test_a_burst_scales_out_and_idle_instances_scale_back_in(tmp_path):
    fn = write_function(tmp_path / "fns", "burst", {"index.js": F.TIMED}, name="burst",
                        maxInstances=16, idleTimeout=1)
    host = SoraHost(tmp_path, [fn], https=False)
    host.start()
    try:
        assert host.function_state("burst")["instances"] == 1   # minInstances defaults to 1
        results = burst(host, "burst", 200, 100)
        assert [r.status_code for r in results] == [200] * 200
        pids = {json_of(r)["instance"] for r in results}
        assert len(pids) >= 8, f"only {len(pids)} instances served the burst"
        log = host.log(whole=True)
        assert "burst: scale out 1 -> " in log and "invocation(s) waiting, the oldest" in log
        # Idle for idleTimeout: back to minInstances, the others' processes gone.
        wait_for(lambda: host.function_state("burst")["instances"] == 1, timeout=20,
                 what="scale in to 1 instance")
        wait_for(lambda: len(runtimes_of(host, fn)) == 1, what="idle runtimes to exit")
        assert "(idleTimeout 1s)" in host.log(whole=True)
        assert host.invoke("burst", params={"ms": "1"}).status_code == 200
    finally:
        assert host.stop() == 0
    assert not host.leftovers(), host.leftovers()


def standbys_of(host, fn_dir):
    """The pre-started Node runtimes waiting for a function (not loaded: not in its folder)."""
    out = []
    for proc in host.descendants():
        try:
            if "node" in proc.name() and proc.cwd() != str(fn_dir):
                out.append(proc)
        except Exception:  # it exited meanwhile
            continue
    return out


def test_a_second_burst_starts_its_instances_at_once_from_pre_started_runtimes(tmp_path):
    fn = write_function(tmp_path / "fns", "burst", {"index.js": F.TIMED}, name="burst",
                        maxInstances=8, idleTimeout=1)
    host = SoraHost(tmp_path, [fn], https=False)
    host.start()
    try:
        assert len(burst(host, "burst", 40, 100)) == 40   # its average: ~100 ms a call
        wait_for(lambda: host.function_state("burst")["instances"] == 1, timeout=20,
                 what="scale in to 1 instance")
        # The pool has grown to what the scale-out took (up to 7; at least 5 under load).
        wait_for(lambda: len(standbys_of(host, fn)) >= 5, timeout=20,
                 what="the pool to keep what the scale-out took")
        results = burst(host, "burst", 40, 100)
        assert [r.status_code for r in results] == [200] * 40
        log = host.log(whole=True)
        # Asked at once (its calls are known to take ~100 ms), not after the oldest's wait.
        assert "invocation(s) waiting, the last would wait" in log
        done = re.findall(r"burst: scale out done: \d+ instance\(s\), the last ready \d+ ms "
                          r"after the last grant; (\d+) of the (\d+) started were pre-started",
                          log)
        pooled, started = map(int, done[-1])
        assert started >= 5 and pooled >= 5, done
    finally:
        assert host.stop() == 0
    assert not host.leftovers(), host.leftovers()


def test_min_instances_0_scales_to_zero_and_the_next_call_starts_one(tmp_path):
    fn = write_function(tmp_path / "fns", "zero", {"index.js": F.TIMED}, name="zero",
                        minInstances=0, idleTimeout=1)
    host = SoraHost(tmp_path, [fn], https=False)
    host.start()
    try:
        assert host.function_state("zero")["instances"] == 0
        assert runtimes_of(host, fn) == []
        first = host.invoke("zero", params={"ms": "1"})
        second = host.invoke("zero", params={"ms": "1"})
        assert first.status_code == second.status_code == 200
        assert host.record(first.headers["X-Sora-Request-Id"])["cold"] is True
        assert host.record(second.headers["X-Sora-Request-Id"])["cold"] is False
        assert host.function_state("zero")["instances"] == 1
        wait_for(lambda: host.function_state("zero")["instances"] == 0, timeout=20,
                 what="scale to zero")
        wait_for(lambda: runtimes_of(host, fn) == [], what="the idle runtime to exit")
        again = host.invoke("zero", params={"ms": "1"})
        assert again.status_code == 200
        assert host.record(again.headers["X-Sora-Request-Id"])["cold"] is True
        assert json_of(again)["instance"] != json_of(first)["instance"]
    finally:
        assert host.stop() == 0
    assert not host.leftovers(), host.leftovers()


def overlap(results) -> int:
    """Most invocations that ran at the same moment."""
    edges = []
    for r in results:
        body = json_of(r)
        edges += [(body["start"], 1), (body["end"], -1)]
    running = peak = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        running += step
        peak = max(peak, running)
    return peak


def test_concurrency_caps_running_calls_and_a_full_queue_gets_429(tmp_path):
    fn = write_function(tmp_path / "fns", "capped", {"index.js": F.TIMED}, name="capped",
                        maxInstances=8, concurrency=2, maxQueued=2)
    host = SoraHost(tmp_path, [fn], https=False)
    host.start()
    try:
        results = burst(host, "capped", 12, 700)
        ok = [r for r in results if r.status_code == 200]
        throttled = [r for r in results if r.status_code == 429]
        assert len(ok) + len(throttled) == 12 and ok and throttled
        assert all(r.headers["Retry-After"] == "1" for r in throttled)
        assert {json_of(r)["errorType"] for r in throttled} == {"TooManyRequestsException"}
        assert overlap(ok) == 2   # it scaled out to the cap, and never past it
        assert len(runtimes_of(host, fn)) == 2
    finally:
        assert host.stop() == 0


def test_host_limits_bound_all_functions_together(tmp_path):
    fns = tmp_path / "fns"
    a = write_function(fns, "a", {"index.js": F.TIMED}, name="a", maxInstances=8)
    b = write_function(fns, "b", {"index.js": F.TIMED}, name="b", maxInstances=8)
    host = SoraHost(tmp_path, [a, b], https=False, extra={"limits": {"maxInstances": 3}})
    host.start()
    try:
        with ThreadPoolExecutor(2) as pool:
            runs = list(pool.map(lambda name: burst(host, name, 16, 300), ["a", "b"]))
        assert all(r.status_code == 200 for results in runs for r in results)
        pids = {json_of(r)["instance"] for results in runs for r in results}
        assert len(pids) == 3, pids   # both scaled out, together to the host's limit
        health = host.health()["functions"]
        assert health["a"]["instances"] + health["b"]["instances"] == 3
        assert "the host's limits are reached" in host.log(whole=True)
    finally:
        assert host.stop() == 0


def test_two_workers_share_a_function_and_one_dying_leaves_the_other_serving(tmp_path):
    import os
    import signal
    fn = write_function(tmp_path / "fns", "pair", {"index.js": F.TIMED}, name="pair",
                        instances=1, workers=2)
    host = SoraHost(tmp_path, [fn], https=False)
    host.start()
    try:
        wait_for(lambda: host.function_state("pair")["workers"] == 2, what="both workers")
        state = host.function_state("pair")
        assert state["instances"] == 2 and len(state["workerProcesses"]) == 2
        results = burst(host, "pair", 6, 300)
        assert all(r.status_code == 200 for r in results)
        assert len({json_of(r)["instance"] for r in results}) == 2   # one instance in each worker
        assert overlap(results) == 2
        second = state["workerProcesses"][1]["pid"]
        os.kill(second, signal.SIGKILL)
        wait_for(lambda: host.function_state("pair")["workerProcesses"][1]["pid"] != second,
                 what="the killed worker to be reaped")
        # The first worker serves on while the second is restarted.
        assert all(r.status_code == 200 for r in burst(host, "pair", 3, 10))
        wait_for(lambda: (s := host.function_state("pair"))["workers"] == 2 and
                 s["workerProcesses"][1]["pid"] not in (None, second),
                 what="the second worker to be restarted")
    finally:
        assert host.stop() == 0
    assert not host.leftovers(), host.leftovers()
