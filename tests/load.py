"""Closed-loop HTTP load for the cluster tests and bench/hosts.py: n clients, each sending one
call after another on a keep-alive connection of its own until stopped, every call kept with
its start, end, status and JSON answer, so a test can ask what happened around an instant
(a host killed, a link cut) and a bench what the rate was once the function was saturated."""
from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Call:
    start: float            # time.monotonic() when sent
    end: float              # ... when answered (or failed)
    status: int             # HTTP status; 0 when no answer came (connection error)
    body: dict | None       # the answer when it was JSON
    error: str = ""         # the connection error, if any

    @property
    def error_type(self) -> str | None:
        return (self.body or {}).get("errorType")


class Load:
    """`clients` threads calling `url` (a full http:// URL) back to back; `path(i, n)` may
    give each call its own path and query (client i's n-th call) instead."""

    def __init__(self, url: str, clients: int, path=None, timeout: float = 60.0):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.default_path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.path = path or (lambda i, n: self.default_path)
        self.clients, self.timeout = clients, timeout
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> "Load":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "Load":
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                         for i in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float | None = None) -> list[Call]:
        """Stop sending; wait for the calls in flight (at most `timeout`, default the call
        timeout) and return every call."""
        self._stop.set()
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            return list(self.calls)

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def _client(self, i: int) -> None:
        conn = None
        n = 0
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            start = time.monotonic()
            try:
                conn.request("GET", self.path(i, n))
                resp = conn.getresponse()
                raw = resp.read()
                call = Call(start, time.monotonic(), resp.status, _json(raw))
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                call = Call(start, time.monotonic(), 0, None, f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = None
                if not self._stop.is_set():
                    time.sleep(0.05)   # the gateway is gone: do not spin
            with self._lock:
                self.calls.append(call)
            n += 1
        if conn is not None:
            conn.close()


def _json(raw: bytes) -> dict | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def rate(calls: list[Call], since: float, until: float) -> float:
    """Successful calls per second answered in [since, until)."""
    done = [c for c in calls if c.status == 200 and since <= c.end < until]
    return len(done) / (until - since)


def throughput(url: str, clients: int, seconds: float, warmup: float = 1.0) -> dict:
    """Saturate `url` with `clients` closed-loop clients: calls/s answered 200 over `seconds`
    after `warmup`, and how many answered otherwise in that window."""
    with Load(url, clients) as load:
        t0 = time.monotonic() + warmup
        time.sleep(warmup + seconds)
        t1 = time.monotonic()
    calls = load.calls
    window = [c for c in calls if t0 <= c.end < t1]
    return {"rps": rate(calls, t0, t1), "ok": sum(c.status == 200 for c in window),
            "failed": sum(c.status != 200 for c in window),
            "failures": sorted({(c.status, c.error_type or c.error) for c in window
                                if c.status != 200})}


__all__ = ["Call", "Load", "rate", "throughput"]
