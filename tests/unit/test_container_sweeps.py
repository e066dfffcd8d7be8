"""sora.supervisor.container_sweeps with the engine replaced: when it sweeps, what, and that
an engine that does not answer is never fatal (the real engine's cases are in
tests/integration/test_container_engine.py)."""
import threading

from sora.containers import engine
from sora.supervisor.container_sweeps import ContainerSweeps


def recording(monkeypatch, fail=False):
    calls = []
    done = threading.Event()

    def remove(socket, host_id, worker_pid=None):
        calls.append((socket, host_id, worker_pid))
        done.set()
        if fail:
            raise engine.EngineUnavailable(socket, "nothing at that path")
        return 1
    monkeypatch.setattr(engine, "remove_containers", remove)
    return calls, done


def test_a_host_without_containers_never_sweeps(monkeypatch, tmp_path):
    calls, _ = recording(monkeypatch)
    sweeps = ContainerSweeps("/nothing.sock", str(tmp_path))
    sweeps.at_start()
    sweeps.after_worker(42)
    sweeps.at_stop()
    assert calls == []


def test_start_worker_and_stop_sweeps(monkeypatch, tmp_path):
    calls, done = recording(monkeypatch)
    sweeps = ContainerSweeps("/e.sock", str(tmp_path))
    sweeps.use()
    host = engine.host_id(str(tmp_path))
    sweeps.at_start()
    assert calls == [("/e.sock", host, None)]
    done.clear()
    sweeps.after_worker(42)   # on the sweeps' thread
    assert done.wait(5)
    sweeps.at_stop()
    assert calls == [("/e.sock", host, None), ("/e.sock", host, 42), ("/e.sock", host, None)]
    assert sweeps._thread is None


def test_no_engine_is_a_warning(monkeypatch, tmp_path, caplog):
    calls, _ = recording(monkeypatch, fail=True)
    sweeps = ContainerSweeps("/e.sock", str(tmp_path))
    sweeps.use()
    sweeps.at_start()
    sweeps.at_stop()
    assert len(calls) == 2
    assert "not swept: no Docker engine answers at /e.sock" in caplog.text
