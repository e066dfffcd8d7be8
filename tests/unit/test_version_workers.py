"""The arbiter's part of versions (sora.supervisor.versions) against a stand-in arbiter: which
versions the control plane lists, when a call's WAKE starts a worker, and what becomes of the
workers of versions that are pruned or exited idle. Workers are `sleep` processes."""
from __future__ import annotations

import dataclasses
import signal
import sys

from sora.config import HostConfig, ServerConfig, load_function_config
from sora.supervisor.child import Launch, State, Supervised
from sora.supervisor.reloading import function_of
from sora.supervisor.versions import Versions
from tests.support import write_function


class StandInArbiter:
    def __init__(self, state_dir, functions):
        server = ServerConfig(8080, None, None, None, "127.0.0.1", 1, 1 << 20, 1.0)
        self.config = HostConfig(path="/nonexistent", server=server, stateDir=state_dir,
                                 functions=functions)
        self.state_dir = state_dir
        self.workers: dict[str, Supervised] = {}
        self.setups, self.switches = {}, {}
        self.stopping = False
        self.retired: list[str] = []
        self.published = 0

    def worker_launch(self, fn):
        return Launch([sys.executable, "-c", "import time; time.sleep(30)"], {}, 30.0, 3)

    def workers_of(self, function):
        return [w for w in self.workers.values() if function_of(w) == function]

    def retire(self, worker, why):
        self.retired.append(worker.name)
        worker.to(State.STOPPING, why)
        worker.signal(signal.SIGKILL)
        worker.proc.wait()

    def publish(self):
        self.published += 1


def test_wake_table_prune_and_idle(tmp_path):
    fn = load_function_config(str(write_function(
        tmp_path, "f", {"index.js": "exports.handler = async () => 1;\n"}, name="f")))
    arbiter = StandInArbiter(str(tmp_path / "state"), [fn])
    versions = Versions(arbiter)
    try:
        record, _ = versions.store.publish(fn)
        versions.refresh(0.0)
        assert list(versions.table()) == ["f:1"]
        assert versions.table()["f:1"]["available"]
        versions.wake("f:9", 0.0)   # no such version: nothing starts
        versions.wake("f:1", 0.0)
        assert list(arbiter.workers) == ["f:1"]
        versions.wake("f:1", 0.0)   # once
        assert list(arbiter.workers) == ["f:1"]
        # One exiting idle (STOPPING) does not keep a call's WAKE from starting another.
        arbiter.workers["f:1"].to(State.RUNNING, "ready")
        arbiter.workers["f:1"].to(State.STOPPING, "idle")
        versions.wake("f:1", 0.0)
        assert len(arbiter.workers_of("f:1")) == 2
        second = next(k for k in arbiter.workers if k != "f:1")
        assert second.startswith("f:1#")
        versions.stop_removed()   # the second is the same version's: kept
        assert second in arbiter.workers and not arbiter.retired
        old = arbiter.workers["f:1"]
        old.signal(signal.SIGKILL)
        old.proc.wait()
        old.to(State.STOPPED, "exited idle")
        versions.forget_idle()
        assert list(arbiter.workers) == [second]
        # Pruned (or its function gone): its worker is retired, the version unlisted.
        arbiter.config = dataclasses.replace(arbiter.config, functions=[])
        versions.refresh(10.0, force=True)
        assert versions.table() == {} and arbiter.retired == [second]
    finally:
        for worker in arbiter.workers.values():
            worker.signal(signal.SIGKILL)
        versions.shutdown()


def test_publish_op_steps_without_blocking(tmp_path):
    import time
    fn_dir = write_function(tmp_path, "g", {"index.js": "exports.handler = async () => 1;\n"},
                            name="g")
    fn = load_function_config(str(fn_dir))
    arbiter = StandInArbiter(str(tmp_path / "state"), [fn])
    versions = Versions(arbiter)
    answers = []
    try:
        versions.publish({"function": "nope"}, answers.append)
        assert answers.pop()["error"]["type"] == "ResourceNotFoundException"
        arbiter.setups["g"] = object()
        versions.publish({"function": "g"}, answers.append)
        assert answers.pop()["error"]["type"] == "ResourceConflictException"
        del arbiter.setups["g"]
        versions.publish({"function": "g", "description": "d"}, answers.append)
        assert versions.busy() and versions.pids() and not answers   # it runs as a child
        deadline = time.monotonic() + 30
        while not answers and time.monotonic() < deadline:
            versions.step(time.monotonic())
            time.sleep(0.01)
        assert answers[0]["Version"] == "1" and answers[0]["Description"] == "d"
        assert list(versions.table()) == ["g:1"] and arbiter.published == 1
        assert not versions.busy()
    finally:
        versions.shutdown()
