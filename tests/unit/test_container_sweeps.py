"""sora.supervisor.container_sweeps with the engine replaced: when it sweeps, what, and that
an engine that does not answer is never fatal (the real engine's cases are in
tests/integration/test_container_engine.py)."""
import threading
import time

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
    sweeps.at_stop()          # before the worker's second sweep: the stop's covers it
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


def test_a_dead_workers_containers_are_swept_again_for_creates_it_had_in_flight(monkeypatch,
                                                                              tmp_path):
    """The engine completes a create whose client (the killed worker) is gone, after the
    first sweep: the worker's label is swept again at each of RESWEEP_AFTER."""
    from sora.supervisor import container_sweeps
    monkeypatch.setattr(container_sweeps, "RESWEEP_AFTER", (0.2, 0.5))
    calls, _ = recording(monkeypatch)
    sweeps = ContainerSweeps("/e.sock", str(tmp_path))
    sweeps.use()
    sweeps.after_worker(42)
    deadline = time.monotonic() + 5
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [c[2] for c in calls] == [42, 42, 42]
    sweeps.at_stop()
    assert [c[2] for c in calls] == [42, 42, 42, None]
