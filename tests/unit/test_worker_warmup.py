"""What a warm-up call's answer means for a reload's new generation (sora.worker.warmup)."""
from __future__ import annotations

import json

from sora import protocol as p
from sora.worker import warmup


def test_the_event_is_the_warmers_convention():
    assert json.loads(warmup.EVENT) == {"source": "sora.warmup"}


def test_request_ids_are_valid_and_fresh():
    first, second = warmup.request_id(), warmup.request_id()
    assert p.valid_request_id(first) and first != second


def test_an_answer_or_a_handler_error_warms():
    assert warmup.warmed(p.OK)
    assert warmup.warmed(p.FUNCTION_ERROR)


def test_a_timeout_or_an_exited_runtime_does_not_warm():
    assert not warmup.warmed(p.TIMEOUT)
    assert not warmup.warmed(p.RUNTIME_EXITED)


def test_the_failure_says_it_was_the_warm_up():
    body = warmup.failure(p.TIMEOUT, p.error_body("Sora.Timeout", p.timeout_message(2)))
    assert p.parse_error(body) == ("Sora.Timeout", "the warm-up call failed: Task timed out "
                                                   "after 2.00 seconds")
    body = warmup.failure(p.RUNTIME_EXITED, p.error_body("Sora.RuntimeExited", "exit status 3"))
    assert p.parse_error(body) == ("Sora.RuntimeExited", "the warm-up call failed: exit status 3")
