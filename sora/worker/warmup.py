"""The warm-up call of a reload's new generation (docs/architecture.md, "Live reload").

Before a new generation's worker binds its data endpoint and says READY, one of its instances
answers one invocation with the event `{"source": "sora.warmup"}`: the convention Lambda
warmers use (serverless-plugin-warmup sends `{"source": "serverless-plugin-warmup"}`), so a
handler can tell it apart and return early. It goes through the worker's own dispatch, as a
caller's call would, but it comes from no client and takes no credit: its answer is sent
nowhere and it makes no invocation record; its START/END/REPORT lines are in the function's
log like any call's.

The handler answering, with a result or with an error of its own, warms the generation; the
runtime exiting, a timeout or no answer by the deadline is a boot error.
"""
from __future__ import annotations

import uuid

from .. import protocol as p

EVENT = b'{"source":"sora.warmup"}'
# Stands for the client of the warm-up call: a ROUTER never gives a peer an empty identity,
# so no client's call can be taken for it.
CLIENT = b""


def request_id() -> bytes:
    return str(uuid.uuid4()).encode()


def warmed(status: bytes) -> bool:
    """Whether an answer with this status warms the generation: the handler answered (its own
    error is its own business); a timeout or the runtime exiting does not."""
    return status in (p.OK, p.FUNCTION_ERROR)


def failure(status: bytes, body: bytes) -> bytes:
    """The boot error of a warm-up that did not warm: the answer's error, said to be the
    warm-up's."""
    error_type, message = p.parse_error(body)
    if status == p.TIMEOUT:
        error_type = "Sora.Timeout"
    return p.error_body(error_type, f"the warm-up call failed: {message}")
