"""A reason phrase for every status a function can return (200 to 599) in the status line.

An ASGI app hands the server an integer status only; gunicorn's ASGI worker (27.x) writes the
status line from its own table of 40-odd codes and calls everything else "Unknown" (a function
answering 418 went out as `HTTP/1.1 418 Unknown`). `install()` completes that table, in the
gateway's gunicorn master before it forks its workers, with the standard library's phrases
(RFC 9110 and the registered extensions: `418 I'm a Teapot`, `429 Too Many Requests`) and,
for a code with no registered phrase, the name of its class (`299 Successful`,
`499 Client Error`). It costs nothing per request: gunicorn caches each status line it makes.
"""
from __future__ import annotations

import http
import logging

log = logging.getLogger("sora.gateway")

# RFC 9110 section 15: the class of a status code, for a code no registry names.
CLASS_NAMES = {1: "Informational", 2: "Successful", 3: "Redirection", 4: "Client Error",
               5: "Server Error"}


def phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return CLASS_NAMES.get(status // 100, "Unknown")


def install() -> None:
    """Fill in gunicorn's ASGI reason phrases for every code from 100 to 599 it lacks."""
    try:
        from gunicorn.asgi import protocol
        table = protocol._REASON_PHRASES
    except (ImportError, AttributeError):
        # A gunicorn whose internals moved: its own phrases stay; tests/integration/
        # test_startup.py's 418 check tells when this needs following.
        log.warning("gunicorn has no ASGI reason phrase table here; unknown statuses keep "
                    "gunicorn's own phrase")
        return
    for status in range(100, 600):
        table.setdefault(status, phrase(status))
