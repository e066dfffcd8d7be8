"""Slow clients: a connection must send its first request's headers within
`server.headerTimeout` seconds, or it is closed.

gunicorn's asgi worker times out idle keep-alive connections and slow bodies (its `timeout`),
but waits forever for the headers of a connection's first request, so a client that opens
connections and trickles bytes (slowloris) would hold them all. This arms one timer per
connection, cancelled when the first request's headers are complete. It wraps two methods of
gunicorn's ASGIProtocol; if a gunicorn release renames them, the guard is skipped with a
warning rather than breaking the gateway (a test notices).
"""
from __future__ import annotations

import logging

log = logging.getLogger("sora.gateway")


def guard_slow_clients(header_timeout: float) -> bool:
    try:
        from gunicorn.asgi.protocol import ASGIProtocol
        made, headers_done = ASGIProtocol.connection_made, ASGIProtocol._on_headers_complete
        close = ASGIProtocol._keepalive_timeout
    except (ImportError, AttributeError):
        log.warning("slow-client guard not installed: this gunicorn has no hook for it")
        return False
    if getattr(ASGIProtocol, "_sora_guarded", False):
        return True

    def connection_made(self, transport):
        made(self, transport)
        self._sora_header_timer = self.worker.loop.call_later(header_timeout, _expire, self)

    def _expire(self):
        if not self._closed:
            close(self)   # closes the transport and wakes the connection's task

    def on_headers_complete(self):
        timer = getattr(self, "_sora_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._sora_header_timer = None
        return headers_done(self)

    ASGIProtocol.connection_made = connection_made
    ASGIProtocol._on_headers_complete = on_headers_complete
    ASGIProtocol._sora_guarded = True
    return True
