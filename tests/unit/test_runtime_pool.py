"""The runtime pool on its own: real processes (a small Python stand-in for a runtime), its
socket, fd passing, reaping."""
import json
import os
import signal
import sys
import time

import pytest

from sora.runtimes import pool as pool_module
from sora.runtimes.pool import Kind, PoolClient, RuntimePool
from sora.isolation import cgroups
from tests.support import wait_for

# Waits for its assignment line, says READY on the control fd, then exits with the code the
# line asks for once stdin closes.
STANDBY = """
import os, sys, json
spec = json.loads(sys.stdin.readline())
os.write(int(os.environ["SORA_CONTROL_FD"]), b"READY " + spec["cwd"].encode() + b"\\n")
sys.stdin.read()
sys.exit(spec["env"]["CODE"])
"""


@pytest.fixture
def pool(tmp_path):
    (tmp_path / "run").mkdir()
    argv = [sys.executable, "-c", STANDBY]
    pool = RuntimePool(str(tmp_path), [(argv, 2)])
    pool.start()
    yield pool, argv, tmp_path
    pool.stop()


def assign(proc, cwd, code):
    proc.stdin.write(json.dumps({"cwd": cwd, "env": {"CODE": code}}).encode() + b"\n")
    deadline = time.monotonic() + 10
    got = b""
    while not got.endswith(b"\n") and time.monotonic() < deadline:
        got += os.read(proc.control_fd, 100)
    return got


def test_take_assign_and_exit_status(pool):
    pool_, argv, tmp = pool
    wait_for(lambda: len(pool_.pids()) == 2, what="two standby processes")
    client = PoolClient(str(tmp))
    proc = client.take(argv)
    assert proc is not None and proc.pid in pool_.pids()
    assert assign(proc, "/tmp", 7) == b"READY /tmp\n"
    proc.stdin.close()
    assert proc.wait(10) == 7   # reaped by the pool, told to the worker
    wait_for(lambda: len(pool_.pids()) == 2, what="the pool to refill")
    killed = client.take(argv)
    os.killpg(killed.pid, signal.SIGKILL)
    assert killed.wait(10) == -signal.SIGKILL
    assert client.take([sys.executable, "-c", "pass"]) is None   # a kind it does not keep
    client.close()


def test_a_workers_processes_die_with_its_connection(pool):
    pool_, argv, tmp = pool
    wait_for(lambda: len(pool_.pids()) == 2, what="two standby processes")
    client = PoolClient(str(tmp))
    proc = client.take(argv)
    assert assign(proc, "/", 0).startswith(b"READY")
    pid = proc.pid
    client.close()      # as when the worker dies
    wait_for(lambda: pid not in pool_.pids(), what="the taken process to be killed and reaped")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_no_pool_means_no_process(tmp_path):
    assert PoolClient(str(tmp_path)).take(["node"]) is None


def cgroup_of(pid: int, controller: str = "memory") -> str:
    """The path of the process's group in one controller's hierarchy (v1) or the unified one."""
    with open(f"/proc/{pid}/cgroup") as fh:
        for line in fh:
            _, controllers, path = line.strip().split(":", 2)
            if controller in controllers.split(",") or controllers == "":
                return path
    return ""


@pytest.mark.skipif(cgroups.detect() is None, reason="no writable cgroup hierarchy")
def test_a_taken_process_brings_its_cgroup_which_becomes_the_instances(pool):
    pool_, argv, tmp = pool
    wait_for(lambda: len(pool_.pids()) == 2, what="two standby processes")
    client = PoolClient(str(tmp))
    proc = client.take(argv)
    # Started into a group of its own, named for the pool's supervisor (this process).
    assert proc.group.startswith(f"{cgroups.STANDBY_PREFIX}{os.getpid()}-")
    assert cgroup_of(proc.pid).endswith("/sora/" + proc.group)
    group = cgroups.InstanceGroup(cgroups.detect(), f"unit-{os.getpid()}-1", 64)
    group.take_over(proc.group)   # renamed, limited; the process did not move
    assert cgroup_of(proc.pid).endswith(f"/sora/unit-{os.getpid()}-1")
    limit = "memory.max" if group.version == "v2" else "memory.limit_in_bytes"
    with open(os.path.join(group.dirs["memory"], limit)) as fh:
        assert int(fh.read()) == 64 << 20
    assert assign(proc, "/", 0).startswith(b"READY")
    proc.stdin.close()
    assert proc.wait(10) == 0
    group.remove()
    assert not os.path.exists(group.dirs["memory"])
    client.close()


@pytest.mark.skipif(cgroups.detect() is None, reason="no writable cgroup hierarchy")
def test_groups_whose_owner_is_gone_are_swept(tmp_path):
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    orphan = cgroups.InstanceGroup(cgroups.detect(), f"unit-{dead}-1", 64)
    live = cgroups.InstanceGroup(cgroups.detect(), f"unit-{os.getpid()}-2", 64)
    cgroups.remove_orphaned_groups()
    assert not any(os.path.exists(d) for d in orphan.dirs.values())
    assert all(os.path.exists(d) for d in live.dirs.values())
    live.remove()


def test_a_kind_keeps_what_a_scale_out_took_then_goes_back_to_its_number(monkeypatch):
    monkeypatch.setattr(pool_module, "STANDBY_KEEP", 60.0)
    kind = Kind(["node"], 2)
    for i in range(5):   # one scale-out: five takes within DEMAND_WINDOW
        kind.asked(100.0 + i * 0.01)
    assert kind.target == 5
    kind.asked(103.0)    # a lone take later does not lower it
    assert kind.target == 5
    assert kind.refill_due(150.0) == 0.0     # wanted: refilled
    assert kind.refill_due(160.0) == 0.0 and kind.target == 5
    kind.refill_due(160.1)                   # 60 s since more than two were last wanted
    assert kind.target == 2


def test_demand_is_capped():
    kind = Kind(["node"], 1)
    for i in range(pool_module.MOST_STANDBYS * 2):
        kind.asked(10.0 + i * 0.001)
    assert kind.target == pool_module.MOST_STANDBYS


def test_refilling_waits_for_the_takes_to_pause():
    kind = Kind(["node"], 2)
    assert kind.refill_due(0.0) == 0.0       # at start: at once
    kind.ready = ["a", "b"]
    assert kind.refill_due(0.0) is None      # full
    kind.ready = []
    kind.asked(10.0)
    kind.asked(10.1)
    # Below its number: REFILL_QUIET after the last take...
    assert kind.refill_due(10.1) == pytest.approx(pool_module.REFILL_QUIET)
    # ...but not longer than REFILL_MAX_DEFER after the first take not refilled.
    for i in range(1, 40):
        kind.asked(10.1 + i * 0.05)
    assert kind.refill_due(11.0) == pytest.approx(10.0 + pool_module.REFILL_MAX_DEFER - 11.0)
    # Past its number (what a scale-out took): GROWN_REFILL_QUIET after the last take.
    kind.ready = ["a", "b"]
    last = kind.requests[-1]
    assert kind.refill_due(last) == pytest.approx(pool_module.GROWN_REFILL_QUIET)


def test_the_pool_grows_to_a_scale_out_and_shrinks_back(tmp_path, monkeypatch):
    monkeypatch.setattr(pool_module, "REFILL_QUIET", 0.2)
    monkeypatch.setattr(pool_module, "GROWN_REFILL_QUIET", 0.2)
    monkeypatch.setattr(pool_module, "STANDBY_KEEP", 3.0)
    (tmp_path / "run").mkdir()
    argv = [sys.executable, "-c", STANDBY]
    pool = RuntimePool(str(tmp_path), [(argv, 1)])
    pool.start()
    try:
        kind = pool.kinds[json.dumps(argv)]
        wait_for(lambda: len(kind.ready) == 1, what="one standby process")
        client = PoolClient(str(tmp_path))
        taken = [client.take(argv) for _ in range(4)]   # a scale-out of four
        assert taken[0] is not None and taken[1:] == [None, None, None]
        wait_for(lambda: len(kind.ready) == 4, what="the pool to keep four")
        assert kind.target == 4
        # STANDBY_KEEP later with no scale-out, back to one: the others are stopped and reaped.
        wait_for(lambda: len(kind.ready) == 1 and len(pool.pids()) == 2, timeout=10,
                 what="the pool to go back to one")
        client.close()
    finally:
        pool.stop()


def test_what_all_kinds_keep_past_their_numbers_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(pool_module, "MOST_EXTRA_STANDBYS", 5)
    (tmp_path / "run").mkdir()
    pool = RuntimePool(str(tmp_path), [(["a"], 1), (["b"], 1)])   # not started: no processes
    for _ in range(4):
        pool.take(json.dumps(["a"]))
    for _ in range(6):
        pool.take(json.dumps(["b"]))
    assert pool.kinds[json.dumps(["a"])].target == 4        # 3 past its number
    assert pool.kinds[json.dumps(["b"])].target == 1 + 2    # what is left of the 5
    pool.close()
