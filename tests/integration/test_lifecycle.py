"""Supervision with real processes: broken functions, setup, restarts, kill -9, queues, stop."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from tests.integration import functions as F
from tests.support import SoraHost, json_of, processes_in, wait_for, write_function

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_broken_functions_are_reported_and_the_others_serve(tmp_path):
    fns = tmp_path / "fns"
    good = write_function(fns, "good", {"index.js": F.PROMISE}, name="good")
    bad_yaml = write_function(fns, "bad-yaml", {"index.js": F.PROMISE,
                                                "sora.yaml": "name: bad-yaml\nlanguage: [nodejs\n"})
    no_entry = write_function(fns, "no-entry", {}, name="no-entry", entrypoint="missing.js")
    typo = write_function(fns, "typo", {"index.js": F.PROMISE}, name="typo", timout=3)
    setup_fails = write_function(fns, "setup-fails", {"index.js": F.PROMISE},
                                 name="setup-fails", setup=["echo about to fail", "exit 7"])
    load_throws = write_function(fns, "load-throws", {"index.js": F.LOAD_THROWS},
                                 name="load-throws")
    duplicate = write_function(fns, "duplicate", {"index.js": F.PROMISE}, name="good")
    host = SoraHost(tmp_path, [good, bad_yaml, no_entry, typo, setup_fails, load_throws,
                               duplicate], https=False)
    host.start(wait_functions=["good"])
    try:
        assert json_of(host.invoke("good"))["via"] == "promise"
        fatal = wait_for(lambda: (h := host.health()) and
                         h["functions"]["load-throws"]["state"] == "FATAL" and h,
                         timeout=30, what="load-throws to go FATAL")
        states = fatal["functions"]
        assert states["good"]["state"] == "RUNNING"
        assert "cannot start: missing DATABASE_URL" in states["load-throws"]["reason"]
        assert "gave up after 3" in states["load-throws"]["reason"]
        assert "line 3" in states["bad-yaml"]["reason"] and "invalid YAML" in \
            states["bad-yaml"]["reason"]
        assert str(no_entry / "sora.yaml") in states["no-entry"]["reason"]
        assert "entrypoint" in states["no-entry"]["reason"]
        assert "timout: unknown field; did you mean 'timeout'?" in states["typo"]["reason"]
        assert states["setup-fails"]["state"] == "FATAL"
        assert "'exit 7' failed with exit status 7" in states["setup-fails"]["reason"]
        setup_log = (tmp_path / "state" / "setup" / "setup-fails.log").read_text()
        assert "about to fail" in setup_log
        assert fatal["status"] == "degraded"
        r = host.invoke("load-throws")
        assert r.status_code == 503
        assert json_of(r)["errorType"] == "Sora.FunctionUnavailable"
        # Why is the operator's (/healthz above), not the caller's (errorDetail: message).
        assert "DATABASE_URL" not in json_of(r)["errorMessage"]
        assert "/healthz" in json_of(r)["errorMessage"]
        assert host.invoke("typo").status_code == 503
    finally:
        assert host.stop() == 0
    # The duplicate name was refused with both paths named.
    assert "already used by" in host.log(whole=True)


def test_check_validates_without_starting(tmp_path):
    fns = tmp_path / "fns"
    good = write_function(fns, "good", {"index.js": F.PROMISE}, name="good")
    typo = write_function(fns, "typo", {"index.js": F.PROMISE}, name="typo", memroy=128)
    host = SoraHost(tmp_path, [good, typo], https=False)
    run = subprocess.run([sys.executable, "-m", "sora.supervisor.cli", "check", "--config",
                          str(host.config_path)], capture_output=True, text=True)
    assert run.returncode == 1
    assert "ok      good" in run.stdout
    assert "memroy: unknown field; did you mean 'memory'?" in run.stdout
    bad_host = tmp_path / "bad-host.yaml"
    bad_host.write_text("functionPaths: ./x\nserver:\n  httpPort: 99999\n  sslKeyPath: 3\n")
    run = subprocess.run([sys.executable, "-m", "sora.supervisor.cli", "check", "--config",
                          str(bad_host)], capture_output=True, text=True)
    assert run.returncode == 2
    assert f"{bad_host}: functionPaths: expected a non-empty list" in run.stderr
    assert f"{bad_host}: server.httpPort: expected an integer from 1 to 65535, got 99999" \
        in run.stderr


def test_setup_runs_once_and_reruns_when_the_folder_changes(tmp_path):
    fns = tmp_path / "fns"
    fn = write_function(fns, "with-setup", {"index.js": F.PROMISE}, name="with-setup",
                        setup=["echo installing; echo ran >> installed.txt",
                               "mkdir -p deps && echo dep > deps/lib.txt"])
    host = SoraHost(tmp_path, [fn], https=False)
    host.start()
    assert host.invoke("with-setup").status_code == 200
    assert host.stop() == 0
    assert (fn / "installed.txt").read_text() == "ran\n"
    assert "installing" in (tmp_path / "state" / "setup" / "with-setup.log").read_text()

    host.start()  # unchanged folder: setup skipped
    assert host.stop() == 0
    assert (fn / "installed.txt").read_text() == "ran\n"
    assert "setup unchanged, skipped" in host.log(whole=True)

    (fn / "index.js").write_text(F.PROMISE + "\n// changed\n")
    host.start()  # changed source: setup runs again
    assert host.stop() == 0
    assert (fn / "installed.txt").read_text() == "ran\nran\n"

    (fn / "deps" / "lib.txt").unlink()
    import shutil
    shutil.rmtree(fn / "deps")
    host.start()  # an output of setup is gone: setup runs again
    assert host.stop() == 0
    assert (fn / "deps" / "lib.txt").exists()


def test_setup_timeout_kills_the_command(tmp_path):
    fns = tmp_path / "fns"
    fn = write_function(fns, "stuck", {"index.js": F.PROMISE}, name="stuck",
                        setup=["sleep 120 & sleep 121"], setupTimeout=1)
    good = write_function(fns, "good", {"index.js": F.PROMISE}, name="good")
    host = SoraHost(tmp_path, [fn, good], https=False)
    host.start(wait_functions=["good"])
    try:
        state = wait_for(lambda: (s := host.function_state("stuck"))["state"] == "FATAL" and s,
                         what="setup timeout")
        assert "timed out after 1s" in state["reason"]
        # SIGKILL to the group is delivered asynchronously: poll briefly for it to take.
        # Only this setup's processes (they run in the function folder), not any `sleep 120`.
        wait_for(lambda: not [p for p in psutil.process_iter(["cmdline", "status", "cwd"])
                              if p.info["cmdline"] and p.info["status"] != psutil.STATUS_ZOMBIE
                              and p.info["cwd"] == str(fn)
                              and p.info["cmdline"][:2] in (["sleep", "120"], ["sleep", "121"])],
                 timeout=5, what="the setup commands to be killed")
    finally:
        assert host.stop() == 0


def test_kill_9_of_a_worker_mid_load(tmp_path):
    fns = tmp_path / "fns"
    slow = write_function(fns, "slow", {"index.js": F.SLOW}, name="slow", instances=2,
                          timeout=20)
    spawner = write_function(fns, "spawner", {"index.js": F.SPAWNER}, name="spawner")
    other = write_function(fns, "other", {"index.js": F.PROMISE}, name="other")
    host = SoraHost(tmp_path, [slow, spawner, other], https=False)
    host.start()
    try:
        assert json_of(host.invoke("spawner"))["spawned"]
        [grandchild] = [p.pid for p in wait_for(lambda: processes_in(spawner, "sleep"),
                                               what="the spawned process")]
        worker_pid = host.function_state("slow")["pid"]
        node_pids = [p.pid for p in processes_in(slow, "node")]
        assert len(node_pids) == 2
        with ThreadPoolExecutor(4) as pool:
            calls = [pool.submit(host.invoke, "slow", params={"ms": "10000"}) for _ in range(4)]
            wait_for(lambda: host.function_state("slow")["inFlight"] == 4, what="load")
            started = time.monotonic()
            os.kill(worker_pid, signal.SIGKILL)
            results = [c.result(timeout=15) for c in calls]
            took = time.monotonic() - started
        assert all(r.status_code == 502 for r in results), [r.text for r in results]
        assert {json_of(r)["errorType"] for r in results} == {"Sora.WorkerLost"}
        assert took < 10, "in-flight invocations must fail at once, not after they time out"
        # Lost with their worker, they are recorded all the same (by the broker).
        for r in results:
            rec = host.record(r.headers["X-Sora-Request-Id"])
            assert rec["status"] == "crashed" and rec["errorType"] == "Sora.WorkerLost"
            assert rec["trigger"] == "http" and rec["durationMs"] > 0
        # The worker is restarted; its old runtimes died with it; the others kept serving.
        assert json_of(host.invoke("other"))["via"] == "promise"
        state = wait_for(lambda: (s := host.function_state("slow"))["state"] == "RUNNING" and
                         s["pid"] != worker_pid and s, what="worker restart")
        assert state["restarts"] == 1
        wait_for(lambda: not any(alive(p) for p in node_pids), what="old runtimes to die")
        assert json_of(host.invoke("slow", params={"ms": "1"}))["slept"] == 1

        # Kill the spawner's worker too: its runtime's grandchild must not survive it.
        os.kill(host.function_state("spawner")["pid"], signal.SIGKILL)
        wait_for(lambda: not alive(grandchild), what="orphaned grandchild to be killed")
    finally:
        assert host.stop() == 0
    assert not host.leftovers(), host.leftovers()


def test_full_queue_answers_429_with_retry_after(tmp_path):
    fns = tmp_path / "fns"
    slow = write_function(fns, "slow", {"index.js": F.SLOW}, name="slow", instances=1,
                          maxQueued=1, timeout=10)
    host = SoraHost(tmp_path, [slow], https=False)
    host.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: host.invoke("slow", params={"ms": "1500"}),
                                    range(8)))
        codes = sorted(r.status_code for r in results)
        assert 200 in codes and 429 in codes, codes
        rejected = [r for r in results if r.status_code == 429]
        assert all(r.headers["Retry-After"] == "1" for r in rejected)
        assert {json_of(r)["errorType"] for r in rejected} == {"TooManyRequestsException"}
        assert all(json_of(r)["slept"] == 1500 for r in results if r.status_code == 200)
    finally:
        assert host.stop() == 0


def test_graceful_stop_finishes_in_flight_work_and_leaves_nothing(tmp_path):
    fns = tmp_path / "fns"
    slow = write_function(fns, "slow", {"index.js": F.SLOW}, name="slow", timeout=10)
    spawner = write_function(fns, "spawner", {"index.js": F.SPAWNER}, name="spawner")
    host = SoraHost(tmp_path, [slow, spawner])
    host.start()
    assert json_of(host.invoke("spawner"))["spawned"]
    [grandchild] = [p.pid for p in wait_for(lambda: processes_in(spawner, "sleep"),
                                               what="the spawned process")]
    everything = [p.pid for p in host.descendants()]
    assert len(everything) >= 6  # 2 gunicorn masters + workers, 2 workers, 2 node
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(host.invoke, "slow", params={"ms": "1500"})
        wait_for(lambda: host.function_state("slow")["inFlight"] == 1, what="in flight")
        code = host.stop()
        r = pending.result(timeout=10)
    assert code == 0, host.log()
    assert r.status_code == 200 and json_of(r)["slept"] == 1500
    assert not any(alive(pid) for pid in everything + [grandchild])
    assert not host.leftovers(), host.leftovers()


def test_stop_during_setup_leaves_no_setup_processes(tmp_path):
    fns = tmp_path / "fns"
    slow_setup = write_function(fns, "slow-setup", {"index.js": F.PROMISE}, name="slow-setup",
                                setup=["sh -c 'sleep 97' & sleep 98"])
    good = write_function(fns, "good", {"index.js": F.PROMISE}, name="good")
    host = SoraHost(tmp_path, [slow_setup, good], https=False)
    host.start(wait_functions=["good"])
    assert host.function_state("slow-setup")["state"] == "SETUP"
    sleepers = wait_for(lambda: [p.pid for p in host.descendants()
                                 if p.name() == "sleep"], what="setup commands")
    assert host.stop() == 0
    assert not any(alive(pid) for pid in sleepers)
    assert not host.leftovers(), host.leftovers()


def test_a_second_stop_signal_stops_at_once(tmp_path):
    fns = tmp_path / "fns"
    slow = write_function(fns, "slow", {"index.js": F.SLOW}, name="slow", timeout=60)
    host = SoraHost(tmp_path, [slow], https=False, server={"gracefulTimeout": 60})
    host.start()
    everything = [p.pid for p in host.descendants()]
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(host.invoke, "slow", params={"ms": "30000"})
        wait_for(lambda: host.function_state("slow")["inFlight"] == 1, what="in flight")
        started = time.monotonic()
        host.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "stopping (SIGTERM)" in host.log(), what="graceful stop to begin")
        host.proc.send_signal(signal.SIGTERM)
        host.proc.wait(timeout=15)
        took = time.monotonic() - started
        try:
            pending.result(timeout=15)  # answered or cut off: either way it ends, not hangs
        except requests.ConnectionError:
            pass
    host._log.close()
    assert took < 15, "the second signal must not wait the 60 s graceful timeout"
    assert not any(alive(pid) for pid in everything)
    assert not host.leftovers(), host.leftovers()


def test_a_second_supervisor_on_the_same_state_dir_is_refused(tmp_path):
    fn = write_function(tmp_path / "fns", "good", {"index.js": F.PROMISE}, name="good")
    host = SoraHost(tmp_path, [fn], https=False)
    host.start()
    try:
        second = subprocess.run([sys.executable, "-m", "sora.supervisor.cli", "start",
                                 "--config", str(host.config_path)],
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == 2
        assert f"is in use by pid {host.proc.pid}" in second.stderr
        assert host.invoke("good").status_code == 200  # the first one is untouched
    finally:
        assert host.stop() == 0
