"""What metrics cost in instructions, which machine load does not move (wall-clock and even
CPU-time figures do on a shared machine): valgrind's callgrind counts the instructions a
Python process runs, and the difference between a run of N2 and one of N1 operations, over
N2 - N1, is the cost of one operation without the process's start-up.

Operations, each in a process of its own:

- `gateway-off`, `gateway-on`: one GET /functions/hello through the gateway's Falcon app
  (create_app, a control plane that answers at once), without and with CountedApp counting
  into a metric slot; their difference is what counting adds per request in the gateway.
- `recorder-1`, `recorder-50`: the recorder's count_records for one record, in a commit of
  one and in commits of 50.

`--baseline REV` runs the same under Sora's code at git revision REV (bench/common.py
export_revision), so a change is measured before and after. Run with

    .venv/bin/python bench/metrics_instructions.py [--baseline main] [--n1 200] [--n2 1200]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

OPERATIONS = ("gateway-off", "gateway-on", "recorder-1", "recorder-50")
RECORD = ("r", "hello", "$LATEST", "http", 0.0, 1.2, "ok", None, 0, None, None, None)


class AnsweringClient:
    """A control plane that answers every call at once (what the gateway's own work costs)."""

    async def invoke(self, function, request_id, payload, timeout, meta=None):
        from sora import protocol as p
        return [p.OK, b'{"statusCode": 200, "body": "hi"}']

    async def status(self, request_id, timeout=3.0):
        return json.dumps({"status": "ok", "functions": {}}).encode()

    def add_members_listener(self, listener):
        pass

    async def members_known(self, timeout=2.0):
        return True


def gateway(tmp: Path, n: int, counted: bool) -> None:
    from sora.config import load_host_config
    from sora.gateway.app import create_app

    fn = tmp / "hello"
    fn.mkdir()
    (fn / "index.js").write_text("exports.handler = async () => 1;\n")
    (fn / "sora.yaml").write_text("name: hello\nlanguage: nodejs\nhandler: index.handler\n"
                                  "trigger: http\nauth: none\n")
    config_path = tmp / "host-config.yaml"
    config_path.write_text(json.dumps({"functionPaths": [str(fn)], "stateDir": str(tmp / "s"),
                                       "server": {"httpPort": 1, "bind": "127.0.0.1"}}))
    config = load_host_config(str(config_path))
    app = create_app(config, AnsweringClient())
    if counted:
        from sora.gateway.metrics_route import CountedApp
        from sora.metrics import registry
        app = CountedApp(app, registry.start(str(tmp / "s"), "gateway-http"))
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
             "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/functions/hello", "raw_path": b"/functions/hello", "query_string": b"",
             "root_path": "", "headers": [(b"host", b"127.0.0.1")],
             "client": ("127.0.0.1", 4000), "server": ("127.0.0.1", 8080)}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    async def run():
        for _ in range(n):
            await app(scope, receive, send)
    asyncio.run(run())
    if counted:
        app.flush()   # what its timer does once a second: part of the cost


def recorder(tmp: Path, n: int, batch: int) -> None:
    from sora.metrics import registry
    metrics = registry.start(str(tmp / "s"), "recorder")
    records = [RECORD] * batch
    for _ in range(n // batch):
        metrics.count_records(records)


def inner(operation: str, n: int) -> None:
    from sora.hotpath import quiet_gc
    quiet_gc()   # as the gateway's workers and the recorder run: collections are rarer
    with tempfile.TemporaryDirectory(prefix="sora-bench-ir-") as tmp:
        if operation.startswith("gateway"):
            gateway(Path(tmp), n, operation == "gateway-on")
        else:
            recorder(Path(tmp), n, int(operation.split("-")[1]))


def instructions(python: str, operation: str, n: int) -> int:
    with tempfile.TemporaryDirectory(prefix="sora-bench-cg-") as out:
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.out", python,
             __file__, "--inner", operation, str(n)],
            capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED="0"))
    found = re.search(r"Collected\s*:\s*(\d+)", done.stderr)
    if done.returncode != 0 or not found:
        raise SystemExit(f"{operation} under valgrind failed:\n{done.stderr[-3000:]}")
    return int(found.group(1))


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--inner":
        inner(sys.argv[2], int(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("--n1", type=int, default=200)
    parser.add_argument("--n2", type=int, default=1200)
    parser.add_argument("--baseline", metavar="REV")
    parser.add_argument("--operations", default=",".join(OPERATIONS))
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is needed: apt-get install valgrind")
    sys.path.insert(0, str(Path(__file__).parent))
    from common import export_revision
    with tempfile.TemporaryDirectory(prefix="sora-bench-rev-") as tmp:
        pythons = {"this tree": sys.executable}
        if args.baseline:
            pythons[args.baseline] = export_revision(args.baseline, Path(tmp))
        figures: dict[str, dict[str, float]] = {}
        for label, python in pythons.items():
            for operation in args.operations.split(","):
                low, high = (instructions(python, operation, n) for n in (args.n1, args.n2))
                figures.setdefault(operation, {})[label] = (high - low) / (args.n2 - args.n1)
                print(f"{label:<10} {operation:<12} {figures[operation][label]:>10.0f} "
                      f"instructions per operation", flush=True)
    print(f"\n{'instructions per op':<20}" + "".join(f" {label:>12}" for label in pythons))
    for operation, row in figures.items():
        print(f"{operation:<20}" + "".join(f" {row[label]:>12.0f}" for label in pythons))
    for label in pythons:
        if "gateway-on" in figures and "gateway-off" in figures:
            on, off = figures["gateway-on"][label], figures["gateway-off"][label]
            print(f"{label}: counting adds {on - off:.0f} instructions per request to the "
                  f"gateway app's {off:.0f} ({(on - off) / off * 100:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
