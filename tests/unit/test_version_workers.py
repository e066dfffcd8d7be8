"""The arbiter's part of versions (sora.supervisor.versions) against a stand-in arbiter: which
versions the control plane lists, when a call's WAKE starts a worker, and what becomes of the
workers of versions that are pruned or exited idle. Workers are `sleep` processes. On both
store backends; on PostgreSQL also a version another host published (its copy made from the
store's tar on first WAKE)."""
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
    def __init__(self, state_dir, functions, store=None):
        server = ServerConfig(8080, None, None, None, "127.0.0.1", 1, 1 << 20, 1.0)
        self.config = HostConfig(path="/nonexistent", server=server, stateDir=state_dir,
                                 functions=functions, **({"store": store} if store else {}))
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


def test_wake_table_prune_and_idle(tmp_path, store_backend):
    fn = load_function_config(str(write_function(
        tmp_path, "f", {"index.js": "exports.handler = async () => 1;\n"}, name="f")))
    arbiter = StandInArbiter(str(tmp_path / "state"), [fn], store_backend)
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


def test_publish_op_steps_without_blocking(tmp_path, store_backend):
    import time
    fn_dir = write_function(tmp_path, "g", {"index.js": "exports.handler = async () => 1;\n"},
                            name="g")
    fn = load_function_config(str(fn_dir))
    arbiter = StandInArbiter(str(tmp_path / "state"), [fn], store_backend)
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


def test_a_version_published_on_another_host_is_listed_copied_and_woken(tmp_path,
                                                                          postgres_url):
    """Host A publishes into the shared database; host B's arbiter lists the version at its
    next poll, and the first WAKE copies its code from the row's tar (on the publishing
    thread) before the worker starts; a version A prunes away is gone from B too."""
    import os
    import time
    from sora.config import StoreConfig
    from sora.versions.store import VersionStore
    store = StoreConfig(kind="postgresql", url=postgres_url, poolSize=2)
    fn_dir = write_function(tmp_path, "h", {"index.js": "exports.handler = async () => 1;\n",
                                            "lib/data.txt": "payload"}, name="h")
    os.symlink("/usr/bin/python3", fn_dir / "lib" / "python")   # a link out, kept a link
    fn = load_function_config(str(fn_dir))
    host_a = VersionStore(str(tmp_path / "a"), store)
    record, _ = host_a.publish(fn)
    arbiter = StandInArbiter(str(tmp_path / "b"), [fn], store)
    versions = Versions(arbiter)
    try:
        versions.prepare()
        versions.refresh(0.0)
        assert list(versions.table()) == ["h:1"]
        code = os.path.join(str(tmp_path / "b"), "versions", "h", "1", "code")
        assert not os.path.exists(code)   # not copied before it is used
        versions.wake("h:1", 0.0)
        assert not arbiter.workers and "h:1" in versions.copying
        deadline = time.monotonic() + 30
        while not arbiter.workers and time.monotonic() < deadline:
            versions.step(time.monotonic())
            time.sleep(0.01)
        assert list(arbiter.workers) == ["h:1"]
        assert open(os.path.join(code, "lib", "data.txt")).read() == "payload"
        assert os.readlink(os.path.join(code, "lib", "python")) == "/usr/bin/python3"
        local = VersionStore(str(tmp_path / "b")).local_config("h", "1")
        assert local.directory == code and local.version == "1"
        assert host_a.prune("h", 0) == [1]   # (keep 0 only here: removes the newest too)
        versions.refresh(100.0)
        assert versions.table() == {} and arbiter.retired == ["h:1"]
        assert not os.path.exists(code)
    finally:
        for worker in arbiter.workers.values():
            worker.signal(signal.SIGKILL)
        versions.shutdown()



def test_a_version_whose_code_is_refused_is_unavailable_then_tried_again(tmp_path,
                                                                          postgres_url):
    import time
    from sora.config import StoreConfig
    from sora.supervisor.versions import COPY_RETRY_S
    from sora.versions.store import VersionStore
    store = StoreConfig(kind="postgresql", url=postgres_url, poolSize=2)
    fn = load_function_config(str(write_function(
        tmp_path, "k", {"index.js": "exports.handler = async () => 1;\n"}, name="k")))
    host_a = VersionStore(str(tmp_path / "a"), store)
    host_a.publish(fn)
    host_a.conn.execute("UPDATE function_versions SET code = ?", (b"not a tar",))
    arbiter = StandInArbiter(str(tmp_path / "b"), [fn], store)
    versions = Versions(arbiter)
    try:
        versions.wake("k:1", 0.0)
        deadline = time.monotonic() + 30
        while "k:1" not in versions.copy_failed and time.monotonic() < deadline:
            versions.step(time.monotonic())
            time.sleep(0.01)
        entry = versions.table()["k:1"]
        assert not entry["available"] and "could not be copied" in entry["reason"]
        assert postgres_url.split("@")[1] not in entry["reason"]   # nothing of the store's
        assert not arbiter.workers
        versions.refresh(time.monotonic() + COPY_RETRY_S, force=True)
        assert versions.table()["k:1"]["available"]   # its next call tries again
    finally:
        versions.shutdown()
