"""What every gateway route needs of a request: its id and its body."""
from __future__ import annotations

import asyncio
import os
import random
import time

import falcon.asgi

from .errors import SoraError

REQUEST_ID_HEADER = "X-Sora-Request-Id"


# Request ids must be unique, not secret: a generator seeded from the OS (again in each forked
# gateway process) saves a getrandom() system call per request.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def new_request_id() -> str:
    """A time-ordered (version 7, RFC 9562) UUID: 48 bits of Unix milliseconds, then 74
    random bits, formatted without the cost of uuid.UUID().

    Time-ordered rather than random (version 4, as AWS's look): the store indexes invocation
    records and log lines by request id, and random keys land on random pages of that index,
    so each batch of records rewrote a page per record (measured: ~9 KB written and ~21 µs of
    the recorder's CPU per record, against ~0.5 KB and ~6 µs with these)."""
    h = f"{time.time_ns() // 1_000_000:012x}{_ids.getrandbits(76):019x}"
    return f"{h[:8]}-{h[8:12]}-7{h[12:15]}-{'89ab'[int(h[15], 16) & 3]}{h[16:19]}-{h[19:31]}"


def request_id_of(req: falcon.asgi.Request) -> str:
    rid = req.context.get("request_id")
    if rid is None:
        rid = req.context.request_id = new_request_id()
    return rid


class IncompleteBody(SoraError):
    """The request body ended before its length (or its final chunk), or stalled: it is never
    invoked nor stored."""


def _body_events(req: falcon.asgi.Request):
    """The request's first ASGI body event and its `receive` callable.

    Falcon's `req.stream` ends quietly on `http.disconnect`, so a body cut short by the client
    (or by gunicorn's own read timeout, which also says `http.disconnect`) would read as a
    shorter, complete one. Reading the events ourselves is the only way to tell: Falcon keeps
    them in these attributes (tests/unit/test_gateway_app.py fails if a release renames them)."""
    return req._first_event, req._receive


def keep_body(req: falcon.asgi.Request, body: bytes) -> None:
    """Hand a body already read whole (to check its signature, sora.gateway.auth) to the
    route's own `read_body`, as the one event it gets."""
    req._first_event = {"type": "http.request", "body": body, "more_body": False}


async def read_body(req: falcon.asgi.Request, limit: int, stall_timeout: float) -> bytes:
    """The request body, whole or not at all.

    Refused while it is read with 413 past `limit` bytes (chunked too); with 400 when the
    client goes away before the body's end (fewer bytes than its Content-Length, or no final
    chunk); with 408 when no bytes arrive for `stall_timeout` seconds. A body that fits in the
    first event (most do) costs no timer."""
    length = req.content_length
    if length is None and not any(name == b"transfer-encoding"
                                  for name, _ in req.scope["headers"]):
        return b""  # HTTP/1.1: no Content-Length and no Transfer-Encoding means no body
    if length is not None and length > limit:
        if length - limit <= DRAIN_REFUSED_UP_TO:
            await _discard_body(req, stall_timeout)
        raise SoraError(413, "Sora.RequestTooLarge",
                        f"The request body is {length} bytes; the limit is {limit}")
    if length == 0:
        return b""
    event, receive = _body_events(req)
    chunks = []
    size = 0
    while True:
        if event is None or event["type"] != "http.request":
            # http.disconnect: the client closed (or half-closed) the connection mid-body.
            raise IncompleteBody(400, "Sora.IncompleteBody",
                                 f"The request body ended after {size} bytes, before "
                                 f"{_end_of(length)}; nothing was run or stored")
        chunk = event.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise SoraError(413, "Sora.RequestTooLarge",
                                f"The request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        if not event.get("more_body", False):
            break
        try:
            event = await asyncio.wait_for(receive(), stall_timeout)
        except asyncio.TimeoutError:
            raise IncompleteBody(408, "Sora.RequestTimeout",
                                 f"The request body stalled for {stall_timeout:g} s after "
                                 f"{size} bytes, before {_end_of(length)}; nothing was run "
                                 f"or stored") from None
    if length is not None and size != length:
        raise IncompleteBody(400, "Sora.IncompleteBody",
                             f"The request body has {size} bytes, not its Content-Length of "
                             f"{length}; nothing was run or stored")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


# A body refused for its declared size is still read (and dropped) when it is at most this much
# over the limit: closing a connection with unread bytes makes the kernel reset it, and a client
# still writing its body then gets ECONNRESET instead of the 413 (seen with a 65 KB body and a
# 64 KB limit). A far larger body is refused without reading it: its sender may get the reset.
DRAIN_REFUSED_UP_TO = 1 << 20


async def _discard_body(req: falcon.asgi.Request, stall_timeout: float) -> None:
    event, receive = _body_events(req)
    while event is not None and event["type"] == "http.request" and event.get("more_body"):
        try:
            event = await asyncio.wait_for(receive(), stall_timeout)
        except asyncio.TimeoutError:
            return


def _end_of(length: int | None) -> str:
    return f"its Content-Length of {length}" if length is not None else "its last chunk"
