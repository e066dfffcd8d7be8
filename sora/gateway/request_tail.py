"""A request sent on a kept-alive connection right after its predecessor's response is served,
whatever its size.

gunicorn's asgi worker answers a request, then resets its HTTP parser for the next one a few
event-loop turns later. A client that reads the response and sends its next request within
those turns (a client on the same machine, an SDK reusing its connection) has that request
held by the parser as the "tail" of the last one. gunicorn's C parser (gunicorn_h1c) keeps at
most 64 KiB of tail and gunicorn closes a connection whose tail was cut, with no response: a
POST of over ~64 KiB got `RemoteDisconnected` in 10-30% of tries (test_input_hardening's
test_a_large_request_right_after_a_response_is_answered). The pure-Python parser keeps the
whole tail, but cost the gateway ~20% of its throughput (bench/run.py --baseline).

So, in each gateway worker: the C parser is made with a larger tail (TAIL_LIMIT), and reading
pauses as soon as bytes arrive while the parser holds a finished request, until gunicorn's loop
has taken the tail and resumed reading. The tail is then at most what two reads bring (the
event loop reads at most 256 KiB at a time), well under TAIL_LIMIT, and a connection that
pipelines holds no more than that. Both hooks wrap gunicorn's private names; if a release
renames them, the guard is skipped with a warning (the test above then fails).
"""
from __future__ import annotations

import logging

log = logging.getLogger("sora.gateway")

# Above two event-loop reads (2 x 256 KiB) with room to spare; held only between a request's
# end and the parser's reset.
TAIL_LIMIT = 1 << 20


def guard_request_tail() -> bool:
    try:
        from gunicorn.asgi.protocol import ASGIProtocol
        received = ASGIProtocol.data_received
        pause = ASGIProtocol._pause_reading
        if not ASGIProtocol._check_h1c_protocol_available():
            return True   # the pure-Python parser keeps the whole tail already
        parser_class = ASGIProtocol._h1c_protocol_class
    except (ImportError, AttributeError):
        log.warning("request-tail guard not installed: this gunicorn has no hook for it")
        return False
    if getattr(ASGIProtocol, "_sora_tail_guarded", False):
        return True

    class RoomyTailParser(parser_class):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("limit_remaining", TAIL_LIMIT)
            super().__init__(*args, **kwargs)

    def data_received(self, data):
        received(self, data)
        parser = self._callback_parser
        # Bytes held after a finished request, before the loop has reset the parser: the next
        # request, early. The rest of it waits in the socket until the loop reads on.
        if parser is not None and parser.is_complete and parser.remaining():
            pause(self)

    ASGIProtocol._h1c_protocol_class = RoomyTailParser
    ASGIProtocol.data_received = data_received
    ASGIProtocol._sora_tail_guarded = True
    return True
