"""Benchmark: scheduled and file triggers, beside plain Node doing the same.

In one run, on this machine:
  - schedule firing delay: a `rate(1 second)` schedule, invocation start (the record's `start`)
    minus the firing's due time (the trigger service's persisted firings), p50/p99 over
    `--firings` firings; beside it, at the same time, Node's setInterval(1000)'s lateness;
  - file-to-invocation delay: `--files` files written one at a time into a watched folder
    (each written beside, closed, renamed in), the invocation's start minus the moment it
    landed, p50/p99; beside it the same files landing in a folder that Node's fs.watch watches
    (the callback's time). Sora's includes the trigger's debounceMs (default 200 ms: a file
    fires once it has been quiet that long), which `--debounce-ms` sets;
  - a burst: `--burst` files renamed into the watched folder at once (written beside it first,
    so they land in well under a second), then the events/s from the first landing to the
    start of the last invocation, and how many were lost (files without an invocation); then
    the same burst into Node's fs.watch folder;
  - a peer (serverless-offline with a scheduler plugin) where one runs here; else why not.
Then a table with ratios (Sora / plain Node). Delays use wall-clock times taken on this
machine by each side (Python's time.time(), Node's performance.timeOrigin + now()).

    .venv/bin/python bench/triggers.py [--firings 60] [--files 200] [--burst 10000]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from common import ROOT, free_port, start_host, stop

from peer_triggers import FILE_PEER, peer_schedule

NODE_SCRIPT = ROOT / "bench" / "plain_node_triggers.js"
# The handlers: as small as Sora's hello, so the figures are the trigger path's.
TICK_JS = "exports.handler = async (event) => ({ time: event.time });\n"
INBOX_JS = """exports.handler = async (event) => {
  for (const r of event.Records) console.log('KEY ' + r.s3.object.key + ' ' + r.eventTime);
  return {};
};
"""
KEY = re.compile(r"KEY (\S+) (\S+)")


def write_function(folder: Path, name: str, handler_js: str, trigger: list) -> Path:
    folder.mkdir(parents=True)
    (folder / "index.js").write_text(handler_js)
    (folder / "sora.yaml").write_text(json.dumps({
        "name": name, "language": "nodejs", "handler": "index.handler", "timeout": 10,
        "instances": 2, "trigger": trigger}))
    return folder


def percentile(values: list[float], pct: float) -> float:
    """Nearest rank: the value at or below which pct % of them lie."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def wait_running(url: str, names: list[str], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
                functions = json.load(r)["functions"]
            if all(functions.get(n, {}).get("state") == "RUNNING" for n in names):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{names} not RUNNING within {timeout}s")


def poll(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


def wait_count(count, target: int, stall: float, what: str) -> int:
    """Poll count() until it reaches target or stops growing for `stall` seconds (then what
    is missing is reported as lost, not waited for forever)."""
    last, since = -1, time.monotonic()
    while (now := count()) < target:
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > stall:
            print(f"  {what}: {now} of {target}, no more for {stall:.0f} s", flush=True)
            break
        time.sleep(0.2)
    return now


class Records:
    """The host's invocation records and log lines (`<stateDir>/sora.db`), read directly: the
    bench needs thousands of rows at a time, which the paged API would make slow to poll."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / "sora.db"
        self.conn: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self.conn is None:
            self.conn = sqlite3.connect(self.path, timeout=10)
        return self.conn

    def count(self, function: str, trigger: str) -> int:
        if not self.path.exists():
            return 0
        return self._conn().execute(
            "SELECT COUNT(*) FROM invocations WHERE function = ? AND trigger LIKE ?",
            (function, trigger + "%")).fetchone()[0]

    def starts(self, function: str) -> dict[str, float]:
        """request id -> the invocation's start."""
        return dict(self._conn().execute(
            "SELECT request_id, start FROM invocations WHERE function = ?", (function,)))

    def keys(self, function: str) -> dict[str, tuple[float, float]]:
        """The object key each invocation logged -> (its start, the event's eventTime: when
        the watcher made it), the first if one ran twice."""
        found: dict[str, tuple[float, float]] = {}
        for line, start in self._conn().execute(
                "SELECT l.line, i.start FROM log_lines l JOIN invocations i "
                "ON i.request_id = l.request_id WHERE i.function = ? ORDER BY i.start",
                (function,)):
            m = KEY.search(line)
            if m:
                made = datetime.fromisoformat(m.group(2).replace("Z", "+00:00")).timestamp()
                found.setdefault(m.group(1), (start, made))
        return found

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def schedule_due_times(state_dir: Path, function: str, limit: int) -> dict[str, float]:
    """request id -> due time, from the trigger service's persisted firings (it keeps the
    last KEEP_FIRINGS of each trigger: enough for the default 60)."""
    from sora.store import triggers as trigger_store
    from sora.config import ScheduleTrigger
    key = ScheduleTrigger(expression="rate(1 second)", index=0).key
    conn = sqlite3.connect(state_dir / "queue.db", timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        rows = trigger_store.firings(conn, function, key, limit=limit)
    finally:
        conn.close()
    return {row["requestId"]: row["due"] for row in rows if row["requestId"]}


def node(*args: str) -> subprocess.Popen:
    return subprocess.Popen(["node", str(NODE_SCRIPT), *args], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)


def bench_schedule(tmp: Path, firings: int) -> tuple[list[float], list[float]]:
    """(Sora's delays, Node's lateness) in ms, measured at the same time."""
    port = free_port()
    fn = write_function(tmp / "tick", "tick", TICK_JS, [{"schedule": "rate(1 second)"}])
    host = start_host(tmp, port, 1, [fn])
    records = Records(tmp / "state")
    try:
        wait_running(f"http://127.0.0.1:{port}", ["tick"])
        plain = node("interval", str(firings))
        poll(lambda: records.count("tick", "schedule") >= firings, firings + 60,
             f"{firings} firings")
        late = json.loads(plain.communicate(timeout=30)[0])
        starts = records.starts("tick")
        due = schedule_due_times(tmp / "state", "tick", firings + 20)
    finally:
        records.close()
        stop(host)
    # The first `firings` firings, in order of their due times.
    ran = sorted((when, starts[rid]) for rid, when in due.items() if rid in starts)[:firings]
    return [(start - when) * 1000 for when, start in ran], late


class NodeWatch:
    """fs.watch on a folder in plain Node; the time it first saw each file."""

    def __init__(self, folder: Path, suffix: str):
        self.proc = node("watch", str(folder), suffix)
        self.seen: dict[str, float] = {}
        assert self.proc.stdout.readline().strip() == "ready"
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            when, name = line.rstrip("\n").split(" ", 1)
            self.seen[name] = float(when) / 1000

    def close(self) -> None:
        stop(self.proc)
        self.reader.join(5)


def rate(times: list[float], first: float) -> float:
    """Events per second from `first` to the last of `times`."""
    return len(times) / (max(times) - first) if times else 0.0


def write_landed(path: Path, data: bytes) -> float:
    """Write the file under a name the pattern does not match, close it, rename it in (as a
    careful uploader does); returns when it landed, complete. (Written in place, fs.watch would
    report it at its creation, before its content, and Node would run its handler on a file
    still being written; Sora waits for it to settle either way.)"""
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as f:
        f.write(data)
    os.rename(part, path)
    return time.time()


def land(staging: Path, inbox: Path, names: list[str]) -> float:
    """Rename the staged files into the folder at once; returns when the first landed."""
    first = time.time()
    for name in names:
        os.rename(staging / name, inbox / name)
    return first


def bench_files(tmp: Path, files: int, burst: int, gap: float, debounce_ms: int) -> dict:
    port = free_port()
    sora_inbox, node_inbox = tmp / "inbox", tmp / "node-inbox"
    sora_inbox.mkdir(parents=True)
    node_inbox.mkdir()
    fn = write_function(tmp / "drop", "drop", INBOX_JS,
                        [{"file": {"path": str(sora_inbox), "pattern": "*.dat",
                                   "debounceMs": debounce_ms}}])
    host = start_host(tmp, port, 1, [fn], extra={"records": {"maxPerFunction": 10 * burst}})
    records = Records(tmp / "state")
    watch = NodeWatch(node_inbox, ".dat")
    data = os.urandom(1024)
    result: dict = {}
    try:
        wait_running(f"http://127.0.0.1:{port}", ["drop"])
        # One at a time: each file to both folders, `gap` apart.
        closed: dict[str, tuple[float, float]] = {}
        for i in range(files):
            name = f"one-{i:05d}.dat"
            closed[name] = (write_landed(sora_inbox / name, data),
                            write_landed(node_inbox / name, data))
            time.sleep(gap)
        wait_count(lambda: records.count("drop", "file"), files, 30, "file invocations")
        wait_count(lambda: len(watch.seen), files, 10, "Node's fs.watch")
        invoked = records.keys("drop")
        result["file_sora"] = [(invoked[n][0] - c[0]) * 1000 for n, c in closed.items()
                               if n in invoked]
        result["file_node"] = [(watch.seen[n] - c[1]) * 1000 for n, c in closed.items()
                               if n in watch.seen]
        # The burst: written beside the folders first, then renamed in at once.
        for side, inbox in (("sora", sora_inbox), ("node", node_inbox)):
            staging = tmp / f"staging-{side}"
            staging.mkdir()
            names = [f"burst-{i:05d}.dat" for i in range(burst)]
            for name in names:
                (staging / name).write_bytes(data)
            first = land(staging, inbox, names)
            landed = time.time() - first
            if side == "sora":
                wait_count(lambda: records.count("drop", "file"), files + burst, 60,
                           "burst invocations")
                # Time for anything extra (a file run twice) to show up in the count.
                time.sleep(2)
                invoked = records.keys("drop")
                starts = [invoked[n][0] for n in names if n in invoked]
                made = [invoked[n][1] for n in names if n in invoked]
                result["burst_sora"] = {"landed_s": landed, "invoked": len(starts),
                                        "extra": records.count("drop", "file") - files - burst,
                                        "rate": rate(starts, first),
                                        "made_rate": rate(made, first)}
            else:
                # fs.watch may lose some (inotify's queue overflows): counted below.
                wait_count(lambda: sum(n in watch.seen for n in names), burst, 10,
                           "Node's burst")
                seen = [watch.seen[n] for n in names if n in watch.seen]
                result["burst_node"] = {"landed_s": landed, "invoked": len(seen), "extra": 0,
                                        "rate": rate(seen, first)}
    finally:
        watch.close()
        records.close()
        stop(host)
    return result


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:,.1f}x"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--firings", type=int, default=60, help="schedule firings measured")
    parser.add_argument("--files", type=int, default=200, help="files written one at a time")
    parser.add_argument("--gap", type=float, default=0.1, help="seconds between those files")
    parser.add_argument("--burst", type=int, default=10_000, help="files landing at once")
    parser.add_argument("--debounce-ms", type=int, default=200,
                        help="the file trigger's debounceMs (200: its default)")
    parser.add_argument("--no-peer", dest="peer", action="store_false")
    args = parser.parse_args()
    print(f"scheduled and file triggers, {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="sora-bench-triggers-") as tmp_name:
        tmp = Path(tmp_name)
        print(f"schedule: rate(1 second), {args.firings} firings (and setInterval, and "
              "serverless-offline's schedule, beside)...", flush=True)
        # The peer fires at the same time as Sora and Node, on its own thread.
        peer: list = [(None, "--no-peer")]
        peer_thread = threading.Thread(
            target=lambda: peer.__setitem__(0, peer_schedule(tmp / "peer", args.firings)))
        if args.peer:
            peer_thread.start()
        sched_sora, sched_node = bench_schedule(tmp / "schedule", args.firings)
        if args.peer:
            peer_thread.join()
        print(f"files: {args.files} one at a time ({args.gap}s apart), then {args.burst} at "
              f"once (and fs.watch beside); debounceMs {args.debounce_ms}...", flush=True)
        files = bench_files(tmp / "files", args.files, args.burst, args.gap, args.debounce_ms)
    peer_delays, peer_reason = peer[0]
    rows = []
    for label, sora, plain, other in (
            ("schedule delay", sched_sora, sched_node, peer_delays),
            ("file -> invocation", files["file_sora"], files["file_node"], None)):
        for pct in (50, 99):
            rows.append((f"{label} p{pct} (ms)", percentile(sora, pct),
                         percentile(plain, pct), percentile(other, pct) if other else None,
                         True))
    bs, bn = files["burst_sora"], files["burst_node"]
    rows.append((f"{args.burst} files: events/s", bs["rate"], bn["rate"], None, False))
    rows.append((f"{args.burst} files: invoked", bs["invoked"], bn["invoked"], None, False))
    print(f"\n{'':<28}{'sora':>10}{'plain node':>12}{'sora/node':>11}{'sls-offline':>13}"
          f"{'sora/sls':>10}")
    for label, sora, plain, other, ms in rows:
        digits = 1 if ms or isinstance(sora, float) else 0
        print(f"{label:<28}{fmt(sora, digits):>10}{fmt(plain, digits):>12}"
              f"{ratio(sora, plain):>11}{fmt(other, digits):>13}{ratio(sora, other):>10}")
    print(f"\nsamples: {len(sched_sora)} firings, {len(files['file_sora'])} files "
          f"(Node: {len(sched_node)}, {len(files['file_node'])})")
    print(f"burst: landed in {bs['landed_s']:.2f} s (Sora's folder), {bn['landed_s']:.2f} s "
          f"(Node's); Sora lost {args.burst - bs['invoked']}, ran {bs['extra']} more than "
          f"once; Node's fs.watch missed {args.burst - bn['invoked']}")
    print(f"burst: Sora's watcher made the {bs['invoked']} events at {bs['made_rate']:,.0f}/s "
          "(landing to the last event's eventTime); the rest is the queue and the function")
    if peer_delays is None:
        print(f"peer (schedule) skipped: {peer_reason}")
    else:
        print(f"peer (schedule): {peer_reason}")
    print(f"peer (files) skipped: {FILE_PEER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
