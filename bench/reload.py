"""Watch mode's reload, measured (`make bench-reload`):

1. Edit to live: a Node function on a host started with `--watch`; its index.js is saved
   anew (answering the edit's number) EDITS times, and a client polling every POLL_S on a
   keep-alive connection records when the first answer of the new code comes. p50/p95 of
   write -> first new answer; the target is p95 <= 1 s. From the supervisor's log, where the
   time goes: write -> the watcher's "reloading" line (inotify, the batch's STEP_MS quiet
   time, the loop waking), "reloading" -> "replaced" (the rolling switch: new worker, its
   instance, the warm-up call), and "replaced" -> the first new answer (gateways learning
   the new generation).
2. Calls per second during a switch: CLIENTS threads call the function back to back for
   LOAD_S seconds; a code edit is saved in the middle. Calls/s in the steady seconds before
   the write, against the second around the switch (centred on the first new answer) and
   the second after the write; non-2xx answers and failed calls, which must be 0; how long
   old answers still came after the first new one.

The host runs with Python's bytecode cache on, as an installed Sora does (pip writes the .pyc
files at install): this environment sets PYTHONDONTWRITEBYTECODE, with which every new worker
compiles Sora's modules from source at start, about 100 ms of each switch on this machine
(`--no-bytecode` measures that).

    .venv/bin/python bench/reload.py [--edits 20] [--clients 4] [--no-bytecode]
                                     [--keep-log FILE]
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import free_port, start_host, stop
from startup import function_state

NAME = "edited"
POLL_S = 0.005
LOAD_S = 8.0
SWITCH_AT_S = 4.0


def code(version: int) -> str:
    return f"exports.handler = async () => ({{ version: {version} }});\n"


def save(folder: Path, version: int) -> tuple[float, float]:
    """Save index.js as an editor does (whole file, in place): (monotonic, wall) time once
    written."""
    with open(folder / "index.js", "w") as fh:
        fh.write(code(version))
    return time.monotonic(), time.time()


class Caller:
    """One keep-alive connection to the function: (status, version) per call."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self) -> tuple[int, int | None]:
        try:
            self.conn.request("GET", f"/functions/{NAME}")
            response = self.conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            return 0, None
        try:
            version = json.loads(body).get("version") if response.status == 200 else None
        except ValueError:
            version = None
        return response.status, version


def wait_running(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if function_state(port, NAME).get("state") == "RUNNING":
                return
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(0.1)
    raise SystemExit("the function did not start")


def first_new_answer(caller: Caller, version: int, failed: list,
                     timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, seen = caller.call()
        if seen == version:
            return time.monotonic()
        if not 200 <= status < 300:
            failed.append((version, status))
        time.sleep(POLL_S)
    raise SystemExit(f"edit {version} was not live within {timeout:.0f}s")


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_times(log: str, *markers: str) -> list[float]:
    """Wall times of the supervisor's log lines holding every one of `markers`."""
    found = []
    for line in log.splitlines():
        match = LOG_TIME.match(line)
        if match and all(marker in line for marker in markers):
            stamp = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            found.append(stamp.timestamp())
    return found


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def edits_to_live(port: int, folder: Path, edits: int) -> tuple[list[float], list[float],
                                                                list]:
    caller = Caller(port)
    took, written, failed = [], [], []
    for version in range(1, edits + 1):
        start, wall = save(folder, version)
        live = first_new_answer(caller, version, failed)
        took.append(live - start)
        written.append(wall)
        print(f"  edit {version:>2}: live in {took[-1] * 1000:6.0f} ms", flush=True)
        time.sleep(0.3)   # the old generation drains before the next edit
    return took, written, failed


def breakdown(log: str, written: list[float], took: list[float]) -> dict[str, list[float]]:
    """Per edit, from the log: write -> "reloading", "reloading" -> "replaced", and the rest."""
    begun = log_times(log, "watch:", f"({NAME})", "reloading")
    done = log_times(log, f"watch: {NAME} replaced")
    parts = {"detect": [], "switch": [], "propagate": []}
    for wall, total in zip(written, took):
        start = next((t for t in begun if t >= wall - 0.002), None)
        end = next((t for t in done if start is not None and t >= start), None)
        if start is None or end is None:
            continue
        parts["detect"].append(start - wall)
        parts["switch"].append(end - start)
        parts["propagate"].append(max(0.0, wall + total - end))
    return parts


def load_through_switch(port: int, folder: Path, clients: int, version: int) -> dict:
    # (monotonic end, status, version, seconds the call took)
    calls: list[tuple[float, int, int | None, float]] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + LOAD_S

    def client():
        caller = Caller(port)
        while time.monotonic() < stop_at:
            sent = time.monotonic()
            status, seen = caller.call()
            ended = time.monotonic()
            with lock:
                calls.append((ended, status, seen, ended - sent))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(SWITCH_AT_S)
    written, _ = save(folder, version)
    for thread in threads:
        thread.join()
    first_new = min((t for t, _, v, _ in calls if v == version), default=None)
    last_old = max((t for t, _, v, _ in calls if v != version and v is not None), default=None)
    steady = [t for t, _, _, _ in calls if began + 1.0 <= t < written]
    steady_rate = len(steady) / (written - began - 1.0)
    slowest = max(((took, t) for t, _, _, took in calls if written <= t < written + 2.0),
                  default=(0.0, written))
    buckets = [sum(1 for t, _, _, _ in calls if written + i / 10 <= t < written + (i + 1) / 10)
               for i in range(-5, 15)]

    def rate(start: float) -> float:
        return sum(1 for t, _, _, _ in calls if start <= t < start + 1.0)

    return {"calls": len(calls), "steady": steady_rate,
            "after_write": rate(written),
            "around_switch": rate(first_new - 0.5) if first_new else 0.0,
            "failed": sum(1 for _, status, _, _ in calls if not 200 <= status < 300),
            "slowest_ms": slowest[0] * 1000, "slowest_at_ms": (slowest[1] - written) * 1000,
            "per_100ms": buckets,
            "live_s": (first_new - written) if first_new else None,
            "old_after_new_s": max(0.0, last_old - first_new) if first_new and last_old
            else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--switches", type=int, default=3,
                        help="switches under load (each LOAD_S seconds); medians printed")
    parser.add_argument("--keep-log", help="copy the supervisor's log here")
    parser.add_argument("--no-bytecode", action="store_true", help="keep "
                        "PYTHONDONTWRITEBYTECODE as it is (see above)")
    args = parser.parse_args()
    if not args.no_bytecode:
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)   # the host inherits it
    tmp = Path(tempfile.mkdtemp(prefix="sora-bench-reload-"))
    folder = tmp / NAME
    folder.mkdir()
    (folder / "index.js").write_text(code(0))
    (folder / "sora.yaml").write_text(f"name: {NAME}\nlanguage: nodejs\nentrypoint: index.js\n"
                                      "handler: handler\ntrigger: http\nauth: none\n")
    port = free_port()
    host = start_host(tmp, port, 1, [folder], options=["--watch"])
    try:
        wait_running(port, time.monotonic() + 60)
        print(f"edit -> first answer of the new code, {args.edits} edits "
              f"(polled every {POLL_S * 1000:.0f} ms):", flush=True)
        took, written, failed = edits_to_live(port, folder, args.edits)
        log = (tmp / "supervisor.log").read_text(errors="replace")
        parts = breakdown(log, written, took)
        loads = []
        for n in range(args.switches):
            loads.append(load_through_switch(port, folder, args.clients, args.edits + 1 + n))
            time.sleep(0.5)
    finally:
        stop(host)
        if args.keep_log:
            shutil.copy(tmp / "supervisor.log", args.keep_log)
        shutil.rmtree(tmp, ignore_errors=True)
    ms = [t * 1000 for t in took]
    print(f"\nedit to live: p50 {pct(ms, 50):.0f} ms, p95 {pct(ms, 95):.0f} ms, "
          f"max {max(ms):.0f} ms (target: p95 <= 1000 ms); polls that failed: "
          f"{len(failed)}{' ' + repr(failed) if failed else ''}")
    for part, values in parts.items():
        if values:
            print(f"  {part:<10} median {statistics.median(values) * 1000:5.0f} ms  "
                  f"p95 {pct(values, 95) * 1000:5.0f} ms")
    print(f"\ncalls/s with {args.clients} clients, {args.switches} switches under load:")
    for load in loads:
        print(f"  steady {load['steady']:.0f}; the second around the switch "
              f"{load['around_switch']:.0f} ({load['around_switch'] / load['steady'] * 100:.0f} %)"
              f", the second after the write {load['after_write']:.0f} "
              f"({load['after_write'] / load['steady'] * 100:.0f} %); calls {load['calls']}, "
              f"non-2xx or failed {load['failed']}; live in {load['live_s'] * 1000:.0f} ms; "
              f"old code answered {load['old_after_new_s'] * 1000:.0f} ms after the first new "
              f"answer; slowest call {load['slowest_ms']:.0f} ms")
        print(f"    calls per 100 ms from 0.5 s before the write: "
              f"{' '.join(map(str, load['per_100ms']))}")
    around = statistics.median(x["around_switch"] / x["steady"] for x in loads) * 100
    after = statistics.median(x["after_write"] / x["steady"] for x in loads) * 100
    failed_calls = sum(x["failed"] for x in loads)
    print(f"  median: the second around the switch {around:.0f} % of steady, the second after "
          f"the write {after:.0f} %; non-2xx or failed calls in all: {failed_calls} (must be 0)")
    return 1 if failed_calls or failed else 0


if __name__ == "__main__":
    sys.exit(main())
