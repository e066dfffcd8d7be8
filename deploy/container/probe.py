"""Liveness and readiness of a joined host (`sora-supervisor join`), which serves no HTTP and so
no /healthz: ask its control plane for its status over <stateDir>/run/control.sock, as
/healthz does on a main host. Exit 0 when it answers within the timeout (and, with --ready,
when at least one function is RUNNING), 1 otherwise, with the reason on stderr.

    python probe.py [--state-dir /var/lib/sora/state] [--timeout 3] [--ready]

The control plane is a thread of the supervisor and touches no database, so a store that is
down does not fail this probe (the host recovers by itself: Kubernetes must not restart it).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from sora.messaging.client import InvocationClient
from sora.protocol import control_endpoint


async def ask(state_dir: str, timeout: float) -> dict:
    client = InvocationClient(control_endpoint(state_dir))
    try:
        body = await asyncio.wait_for(client.status(f"probe-{os.getpid()}".encode(), timeout),
                                      timeout + 1)
        return json.loads(body)
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", default=os.environ.get("SORA_STATE_DIR",
                                                              "/var/lib/sora/state"))
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--ready", action="store_true",
                        help="also require a function in state RUNNING")
    args = parser.parse_args()
    try:
        health = asyncio.run(ask(args.state_dir, args.timeout))
    except Exception as exc:   # noqa: BLE001 - any failure is a failed probe, said why
        print(f"probe: the control plane in {args.state_dir} did not answer: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.ready:
        running = [name for name, fn in (health.get("functions") or {}).items()
                   if isinstance(fn, dict) and fn.get("state") == "RUNNING"]
        if not running:
            print("probe: no function RUNNING yet", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
