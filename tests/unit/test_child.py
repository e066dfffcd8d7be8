"""The supervised-child state machine, with the process replaced by a stub (unit test)."""
import pytest

from sora.supervisor import child as c


class FakeProc:
    def __init__(self, pid=4242):
        self.pid = pid
        self.returncode = None


def supervised(retries=3):
    s = c.Supervised("fn", "worker", c.Launch(["x"], {}, start_timeout=5, start_retries=retries))
    s.proc = FakeProc()
    s.started_at = 0.0
    return s


def exit_(s, now, why="exited"):
    s.proc.returncode = 1
    s.on_exit(1, now, why)


def test_illegal_transition_is_refused():
    s = supervised()
    with pytest.raises(c.IllegalTransition):
        s.to(c.State.SETUP, "back")


def test_failed_starts_back_off_exponentially_then_go_fatal(monkeypatch):
    monkeypatch.setattr(c.os, "killpg", lambda *a: None)
    s = supervised(retries=3)
    exit_(s, 1.0)
    assert s.state is c.State.BACKOFF and s.backoff_until == 1.0 + c.BACKOFF_BASE
    s.to(c.State.STARTING, "again")
    exit_(s, 2.0)
    assert s.state is c.State.BACKOFF and s.backoff_until == 2.0 + 2 * c.BACKOFF_BASE
    s.to(c.State.STARTING, "again")
    exit_(s, 3.0, "boom")
    assert s.state is c.State.FATAL and "boom; gave up after 3" in s.reason
    assert [t.target for t in s.transitions][-1] is c.State.FATAL


def test_a_stable_run_resets_the_failure_count(monkeypatch):
    monkeypatch.setattr(c.os, "killpg", lambda *a: None)
    s = supervised(retries=2)
    s.mark_ready(1.0)
    exit_(s, 1.0 + c.STABLE_AFTER + 1)
    assert s.state is c.State.BACKOFF and s.failures == 1
    s.to(c.State.STARTING, "again")
    s.mark_ready(50.0)
    exit_(s, 50.0 + c.STABLE_AFTER + 1)
    assert s.state is c.State.BACKOFF  # not FATAL: each run was stable


def test_exit_while_stopping_is_stopped(monkeypatch):
    monkeypatch.setattr(c.os, "killpg", lambda *a: None)
    s = supervised()
    s.to(c.State.STOPPING, "host stopping")
    exit_(s, 1.0)
    assert s.state is c.State.STOPPED
