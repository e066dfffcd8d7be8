"""Whether this gateway process is stopping (gunicorn's worker got SIGTERM).

A graceful stop waits for every open connection, up to `server.gracefulTimeout`; an answer
that never ends by itself (the dashboard's live log tail, a browser tab left open) would hold
every stop that long. Such answers check `stopping()` and end; the browser reconnects to the
gateway that comes next. Set up by gunicorn_conf.post_worker_init; never true outside gunicorn.
"""
from __future__ import annotations

_worker = None


def watch(worker) -> None:
    """Remember this process's gunicorn worker (its `alive` turns false on SIGTERM)."""
    global _worker
    _worker = worker


def stopping() -> bool:
    return _worker is not None and not _worker.alive
