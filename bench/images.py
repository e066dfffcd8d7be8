"""Benchmark: Lambda container images (`package: image`) beside the same hello with `isolation:
sandbox` (bubblewrap) and `isolation: container` (issue 20, point 3), in one run on one host.

The image functions are D's test images, AWS's runtime interface clients unchanged:
`sora-test/node-ric` (aws-lambda-ric 3.3.0) and `sora-test/python-ric` (awslambdaric), each
with `handler: <module>.other` (a small answer, like hello's). Their warm path is the worker's
pipe to the Runtime API adapter and the adapter's loopback connection to the RIC.

Warm, in alternating rounds (medians), with wrk: p50 / p99 at concurrency 1, req/s at 16 (the
image functions have `maxInstances: 2`, see below).
Cold start (client-side, medians): a scaled-to-zero image function whose pre-started container
is taken (the adapter is forked beside it, the RIC starts and asks for its first event), and,
on a second host with `prestartedRuntimes: 0`, container create + start + first answer.

    .venv/bin/python bench/images.py [--rounds 3] [--duration 5] [--cold-samples 8]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from common import HELLO, ROOT, copy_function, free_port, start_host, stop, wait_http
from containers import cold_calls, server_settings, show, warm_rounds

sys.path.insert(0, str(ROOT))

from tests import docker_engine as engines  # noqa: E402
from tests.images.build import NODE20, NODE_RIC, PYTHON_RIC, ensure_image  # noqa: E402


def image_function(tmp: Path, name: str, image: str, handler: str, **more) -> Path:
    folder = tmp / name
    folder.mkdir()
    (folder / "sora.yaml").write_text(yaml.safe_dump({
        "name": name, "package": "image", "image": image, "handler": handler,
        "network": False, "trigger": "http", **more}))
    return folder


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold-samples", type=int, default=8)
    parser.add_argument("--gateway-workers", type=int, default=1)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    engine = engines.open_engine()
    try:
        images = {name: ensure_image(engine.client, name) for name in (NODE20, NODE_RIC,
                                                                          PYTHON_RIC)}
        print(f"{args.duration}s per point, {os.cpu_count()} cores, engine {engine.socket}",
              flush=True)
        run(args, engine.socket, images)
    finally:
        engines.close_engine(engine)
    return 0


def run(args, socket: str, images: dict[str, str]) -> None:
    cold = {"minInstances": 0, "idleTimeout": 0.5}
    with tempfile.TemporaryDirectory(prefix="sora-bench-images-") as tmp:
        tmp = Path(tmp)
        functions = [
            copy_function(HELLO, tmp, name="hello-sandbox", isolation="sandbox"),
            copy_function(HELLO, tmp, name="hello-container", isolation="container",
                          image=images[NODE20]),
            # At most 2 instances each: at c=16 they would scale out to 8 (each call costs
            # more than hello's), and 8 x 256 MB of each would reach the host's memory limit,
            # leaving the cold functions below no instance to start.
            image_function(tmp, "image-node", images[NODE_RIC], "index.other", maxInstances=2),
            image_function(tmp, "image-python", images[PYTHON_RIC], "app.other",
                           maxInstances=2),
            image_function(tmp, "image-node-cold", images[NODE_RIC], "index.other", **cold),
            image_function(tmp, "image-python-cold", images[PYTHON_RIC], "app.other", **cold)]
        port = free_port()
        (tmp / "a").mkdir()
        host = start_host(tmp / "a", port, args.gateway_workers, functions,
                          extra=server_settings(port, args, socket))
        try:
            base = f"http://127.0.0.1:{port}/functions/"
            warm_rounds({"sora, sandbox": base + "hello-sandbox",
                         "sora, container": base + "hello-container",
                         "image, node-ric": base + "image-node",
                         "image, python-ric": base + "image-python"}, args.rounds, args.duration)
            print("cold starts", flush=True)
            for name in ("image-node-cold", "image-python-cold"):
                show(f"{name}, a pre-started container taken",
                     cold_calls(port, name, args.cold_samples))
        except BaseException:
            print((tmp / "a" / "supervisor.log").read_text()[-6000:], flush=True)
            raise
        finally:
            stop(host)
        (tmp / "b").mkdir()
        port = free_port()
        host = start_host(tmp / "b", port, args.gateway_workers, functions[4:],
                          extra={**server_settings(port, args, socket),
                                 "prestartedRuntimes": 0})
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", timeout=120)
            for name in ("image-node-cold", "image-python-cold"):
                show(f"{name}, prestartedRuntimes 0 (create + start + first answer)",
                     cold_calls(port, name, args.cold_samples))
        finally:
            stop(host)


if __name__ == "__main__":
    sys.exit(main())
