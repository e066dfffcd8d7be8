"""Disk exhaustion (issue 14 point 6): what a function prints, and what anyone sends to a public
function as asynchronous events, must not fill the host's disk.

Attacks: a function that prints as fast as it can (one long invocation, and many short ones at
once); asynchronous events past a function's count and byte caps; an event over the payload
limit; and a state dir on a small real file system (tmpfs) filled up to below its free-space
minimum.

The event caps and the payload limit run on both store backends (the module's host per
backend). The flood's checks are about sora.db's size and the host's log files and the
low-disk test about the state dir's own file system: SQLite only (a PostgreSQL server's disk is
its operator's; the log files and the free-space check are the same code on both)."""
from __future__ import annotations

import os
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.integration.store_backends import queue_of, store_setting
from tests.support import SoraHost, json_of, served, wait_for, write_function

pytestmark = pytest.mark.integration

# Prints ~50 KB per write: for `ms` milliseconds, or `kb` kilobytes. Written with writeSync, so
# the function waits for the worker to read (process.stdout would buffer in Node's memory).
FLOOD = r"""
const fs = require('fs');
const line = 'f'.repeat(199) + '\n';
const chunk = Buffer.from(line.repeat(256));
function print() {   // the pipe is non-blocking: retry on EAGAIN, go on after a partial write
  for (let done = 0; done < chunk.length;) {
    try { done += fs.writeSync(1, chunk, done); } catch (e) { if (e.code !== 'EAGAIN') throw e; }
  }
}
exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  let n = 0;
  for (let i = 0; i < Number(q.kb || 0) * 1024 / chunk.length; i++) { print(); n++; }
  const until = Date.now() + Number(q.ms || 0);
  while (Date.now() < until) { print(); n++; }
  return { writes: n };
};
"""

# Holds its one instance for a long time, so the events sent to it stay stored.
HOLDER = r"""
exports.handler = async (event) => {
  await new Promise((r) => setTimeout(r, 8000));
  return { held: true };
};
"""

MB = 1 << 20
LOG_FILE_MB, KEEP_FILES = 1, 2
STORE_MB = 16
PER_INVOCATION = 512 * 1024
SHORT_CALLS = 56   # each stores its allowance: 28 MB stored in all, past the 16 MB cap
API_KEY = "disk-limits-admin-key-0123456789"


def state_sizes(state: Path) -> dict[str, int]:
    out = {}
    for path in [*state.glob("logs/*"), *state.glob("sora.db*"), *state.glob("queue.db*")]:
        try:
            out[str(path.relative_to(state))] = path.stat().st_size
        except FileNotFoundError:
            pass
    return out


class Sampler:
    """The largest size each file of the state dir reached, sampled every 50 ms while a flood
    runs (the caps must hold during it, not only once pruning has caught up)."""

    def __init__(self, state: Path):
        self.state = state
        self.most: dict[str, int] = {}
        self.most_store = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            sizes = state_sizes(self.state)
            for name, size in sizes.items():
                self.most[name] = max(self.most.get(name, 0), size)
            self.most_store = max(self.most_store, sizes.get("sora.db", 0) +
                                  sizes.get("sora.db-wal", 0))
            self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def host(tmp_path_factory, module_store_backend):
    base = tmp_path_factory.mktemp("disk")
    fns = base / "fns"
    dirs = [write_function(fns, "flood", {"index.js": FLOOD}, name="flood", instances=2,
                           timeout=20),
            write_function(fns, "counted", {"index.js": HOLDER}, name="counted", instances=1,
                           timeout=30, auth="none",
                           eventInvoke={"maxConcurrency": 1, "maxQueuedEvents": 3}),
            write_function(fns, "weighed", {"index.js": HOLDER}, name="weighed", instances=1,
                           timeout=30, auth="none",
                           eventInvoke={"maxConcurrency": 1, "maxQueuedMB": 1})]
    served_host = served(base, dirs, https=False, api_key=API_KEY, fresh_connections=True, extra={
        "logs": {"maxFileMB": LOG_FILE_MB, "keepFiles": KEEP_FILES},
        "records": {"maxStoreMB": STORE_MB, "maxLogBytesPerInvocation": PER_INVOCATION},
        "auth": {"apiKeys": [{"name": "admin", "key": API_KEY, "scopes": ["admin"]}]},
        **store_setting(module_store_backend)})
    host = next(served_host)
    host.store = module_store_backend   # which backend the tests read the queue from
    yield host
    next(served_host, None)     # stops it and checks it stopped cleanly


def log_files(host) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (host.base / "state" / "logs").glob("flood.log*")}


def test_a_function_printing_as_fast_as_it_can_stays_within_the_log_and_store_caps(host):
    if host.store.kind != "sqlite":
        pytest.skip("sora.db's size and the log files: the SQLite host covers them")
    state = host.base / "state"
    with Sampler(state) as sampler:
        # One invocation printing for 5 s, beside two callers making many that print 576 KB
        # each (every one past its stored-log allowance, so each stores the allowance).
        with ThreadPoolExecutor(3) as pool:
            long_call = pool.submit(host.invoke, "flood", params={"ms": "5000"})

            def many():
                for _ in range(SHORT_CALLS // 2):
                    assert host.invoke("flood", params={"kb": "576"}).status_code == 200
                return SHORT_CALLS // 2
            short_calls = [pool.submit(many) for _ in range(2)]
            r = long_call.result()
            made = sum(f.result() for f in short_calls)
        assert r.status_code == 200, r.text
        printed = json_of(r)["writes"] * 51200 + made * 576 * 1024
        assert printed > 8 * (KEEP_FILES + 1) * LOG_FILE_MB * MB, printed
        assert made * PER_INVOCATION > 1.25 * STORE_MB * MB, made   # the store's cap is hit
        host.record(r.headers["X-Sora-Request-Id"])
        wait_for(lambda: host.session.get(
            f"{host.url}/api/functions/flood/invocations", timeout=5).json()["invocations"],
            what="the records")
    # Log files: rotated at their size (a sixteenth of slack per worker, and one batch).
    files = log_files(host)
    assert len(files) <= KEEP_FILES + 1, files
    for name, most in sampler.most.items():
        if name.startswith("logs/flood.log"):
            assert most <= LOG_FILE_MB * MB * 1.25, (name, most)
    print(f"printed {printed >> 20} MB; largest sizes: {sampler.most}; store "
          f"{sampler.most_store}")
    # The store (sora.db and its WAL) within its cap, at every moment sampled.
    assert sampler.most_store <= STORE_MB * MB * 1.1, (sampler.most_store, sampler.most)
    # One invocation's stored lines stop at its allowance, with a line that says so (the
    # flood's own were pruned, oldest first); the host still serves and records.
    cut = host.invoke("flood", params={"kb": "576"})
    assert cut.status_code == 200
    # Lambda's START, END and REPORT lines are kept whole around them (issue 15 point 5).
    stored = wait_for(lambda: (logs := host.record(cut.headers["X-Sora-Request-Id"])["logs"])
                      and logs[-1]["line"].startswith("REPORT") and logs,
                      what="the cut invocation's lines")
    printed = [x for x in stored if x["stream"] != "platform"]
    assert sum(len(x["line"]) + 1 for x in printed) <= PER_INVOCATION + 512
    assert "lines are not stored (records.maxLogBytesPerInvocation)" in printed[-1]["line"]
    assert [x["line"].split(" ")[0] for x in stored if x["stream"] == "platform"] == [
        "START", "END", "REPORT"]


def queued(host, function: str) -> tuple[int, int]:
    conn = queue_of(host, host.store)
    try:
        row = conn.execute("SELECT COUNT(*), COALESCE(SUM(length(payload)), 0) FROM events "
                           "WHERE function = ?", (function,)).fetchone()
        return row[0], row[1]
    finally:
        conn.close()


def queue_size(host) -> int:
    return sum(size for name, size in state_sizes(host.base / "state").items()
               if name.startswith("queue.db"))


def send_events(host, function: str, count: int, body: bytes) -> list:
    """Unauthenticated async events to a public function (each on a connection of its own,
    without the host session's key)."""
    return [requests.post(f"{host.url}/functions/{function}", data=body, timeout=30,
                          headers={"X-Sora-Invocation-Type": "Event"}) for _ in range(count)]


def test_async_events_past_a_functions_count_cap_get_429_and_are_not_stored(host):
    answers = send_events(host, "counted", 3, b'{"n": 1}')
    assert [r.status_code for r in answers] == [202] * 3, [r.text for r in answers]
    before = queue_size(host)
    refused = send_events(host, "counted", 20, b'{"n": 2}')
    for r in refused:
        assert r.status_code == 429, r.text
        assert json_of(r)["errorType"] == "TooManyRequestsException"
        assert "maxQueuedEvents" in json_of(r)["errorMessage"]
        assert r.headers["Retry-After"]
    assert queued(host, "counted")[0] == 3
    if host.store.kind == "sqlite":
        assert queue_size(host) <= before + 64 * 1024


def test_async_events_past_a_functions_byte_cap_get_429_and_the_queue_does_not_grow(host):
    body = b'{"pad": "' + b"p" * (200 * 1024) + b'"}'   # under the 256 KiB payload limit
    answers = send_events(host, "weighed", 40, body)
    codes = [r.status_code for r in answers]
    accepted = codes.count(202)
    assert 1 <= accepted <= 5 and codes[:accepted] == [202] * accepted, codes
    assert set(codes[accepted:]) == {429}, codes
    assert all(r.headers.get("Retry-After") for r in answers[accepted:])
    count, stored = queued(host, "weighed")
    assert count == accepted and stored <= MB
    if host.store.kind == "sqlite":
        assert queue_size(host) < 8 * MB   # 40 events of 200 KB would be 8 MB


def test_an_async_event_over_the_payload_limit_gets_413_and_nothing_is_stored(host):
    body = b'{"pad": "' + b"p" * (300 * 1024) + b'"}'
    r = host.session.post(f"{host.url}/2015-03-31/functions/flood/invocations", data=body,
                          headers={"X-Amz-Invocation-Type": "Event"}, timeout=30)
    assert r.status_code == 413, r.text
    assert r.headers["x-amzn-ErrorType"] == "RequestEntityTooLargeException"
    assert "262144" in json_of(r)["errorMessage"]
    assert queued(host, "flood") == (0, 0)


# --- low free disk: a real small file system --------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """A 48 MB tmpfs mounted in the test's folder (unmounted after)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_low_free_disk_gives_503_for_events_and_serving_resumes_when_space_is_back(
        tmp_path, small_fs):
    fn = write_function(tmp_path / "fns", "sink", {"index.js": FLOOD}, name="sink",
                        instances=1, auth="none")
    host = SoraHost(tmp_path, [fn], https=False, fresh_connections=True, extra={
        "stateDir": str(small_fs / "state"), "minFreeDiskMB": 16})
    host.start()
    try:
        event = {"headers": {"X-Sora-Invocation-Type": "Event"}, "data": b"{}", "timeout": 10}
        assert host.invoke("sink", method="POST", **event).status_code == 202
        free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
        ballast = small_fs / "ballast"
        with open(ballast, "wb") as fh:   # leave ~8 MB, below the 16 MB minimum
            fh.write(b"\0" * (free - 8 * MB))
        # (a list: a 503 response is falsy)
        low, = wait_for(lambda: (r := host.invoke("sink", method="POST", **event)).status_code
                        != 202 and [r], timeout=10, what="async intake to see the low disk")
        for r in [low, *(host.invoke("sink", method="POST", **event) for _ in range(5))]:
            assert r.status_code == 503, r.text
            body = json_of(r)
            assert body["errorType"] == "Sora.LowDisk", body
            assert "low on disk space" in body["errorMessage"]
            assert str(small_fs) not in r.text
            assert r.headers["Retry-After"]
        # Synchronous calls need no disk: they still run (their logs are not written).
        sync = host.invoke("sink", params={"kb": "64"})
        assert sync.status_code == 200, sync.text
        assert "low disk" in host.log(whole=True)
        ballast.unlink()
        wait_for(lambda: host.invoke("sink", method="POST", **event).status_code == 202,
                 timeout=10, what="async intake to resume")
        back = host.invoke("sink", params={"kb": "1"})
        assert back.status_code == 200
        host.record(back.headers["X-Sora-Request-Id"])
    finally:
        assert host.stop() == 0
