"""An asynchronous event whose worker was lost (WORKER_LOST: the worker died, fell silent, its
host was cut off) runs again, at least once, whatever its retry policy: it is queued again at
once, its attempt kept but not counted, until its age runs out (issue 16, point 5). On both
store backends."""
import time

import pytest

from sora import protocol as p
from sora.config import load_function_config
from sora.events.dispatcher import Dispatcher
from sora.store import queue
from tests.unit.test_queue import accept, connect, settle


@pytest.fixture
def dispatcher(tmp_path, store_backend):
    fn_dir = tmp_path / "fn"
    fn_dir.mkdir()
    (fn_dir / "index.js").write_text("exports.handler = async () => 1;")
    (fn_dir / "sora.yaml").write_text(
        "name: fn\nlanguage: nodejs\nentrypoint: index.js\n"
        "eventInvoke: {maximumRetryAttempts: 1, retryDelaySeconds: 10, "
        "maximumEventAgeInSeconds: 100}\n")
    fn = load_function_config(str(fn_dir))
    d = Dispatcher.__new__(Dispatcher)
    d.functions, d.conn = {"fn": fn}, connect(store_backend, tmp_path)
    return d, fn

LOST = p.error_body("Sora.WorkerLost", "The worker running fn was lost (its connection dropped)")


def test_an_event_lost_with_its_worker_runs_again_without_using_an_attempt(dispatcher):
    d, fn = dispatcher   # maximumRetryAttempts: 1
    accept(d.conn, "lost")
    for _ in range(4):   # more losses than retries allow: never dead-lettered for that
        after = settle(d, fn, p.WORKER_LOST, LOST)
        assert after["state"] == "queued" and after["attempts"] == 0, after
        assert after["due"] <= time.time() + 1
        d.conn.execute("UPDATE events SET due = 0")
    assert [e["errorType"] for e in after["errors"]] == ["Sora.WorkerLost"] * 4
    # It runs again and succeeds: gone from the queue.
    assert settle(d, fn, p.OK) is None


def test_a_lost_event_past_its_age_is_dead_lettered(dispatcher):
    d, fn = dispatcher   # maximumEventAgeInSeconds: 100
    accept(d.conn, "old", at=time.time() - 100)
    after = settle(d, fn, p.WORKER_LOST, LOST)
    assert after["state"] == "dead" and after["deadReason"] == "EventAgeExceeded"
    assert queue.find_event(d.conn, "old")["errors"][0]["errorType"] == "Sora.WorkerLost"
