"""The floor of the invocation path's shape on this machine: what gunicorn + Falcon, ZeroMQ to
a Python worker (directly, or through a ROUTER broker) and a Node runtime behind a pipe cost
with no Sora logic at all.

Issue 5's warm-path targets (throughput at c=64 >= 15 % of plain Node's; p50 overhead at c=1
<= 0.35 ms) are set against the same handler in a plain Node `http` server. The shape itself
(fixed by the project: HTTP -> gunicorn/Falcon -> ZeroMQ -> broker -> ZeroMQ -> Python worker
-> Node) has a cost of its own before any of Sora's work is done. This measures it, side by
side with plain Node and Sora in one run, in alternating rounds (medians):

  plain node      bench/plain_node_server.js, the baseline
  falcon only     the same gunicorn `asgi` worker and Falcon, answering at once
  + direct        the Falcon app sends each request with Sora's invocation client straight to
                  a minimal Python worker's ROUTER, which answers it (the shape of issue 16:
                  a minimal control plane tells the client where the worker is)
  + direct node   as above, and the worker hands each request to Node over a pipe, where the
                  hello handler answers it: the whole direct shape, with nothing else
  + broker        the old shape: each request goes through a minimal ROUTER/ROUTER broker to
                  a minimal Python worker that answers it
  + broker node   as above, with Node behind the worker: the whole old shape
  sora            Sora itself (sandboxed, records, the Lambda event and context, ...)

Run with `make bench-floor`, or:

    .venv/bin/python bench/floor.py [--rounds 3] [--duration 5]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import zmq

from common import (ROOT, copy_function, free_port, HELLO, median, run_rounds, start_host,
                    start_node)

sys.path.insert(0, str(ROOT))
from sora import protocol as p  # noqa: E402
from sora.config import default_gateway_workers  # noqa: E402
from sora.hotpath import recv_ready, send_frames  # noqa: E402

BODY = b'{"message":"Hello, world!"}'


# --- the minimal broker and workers (each its own process: `floor.py broker|worker ...`) -----
def run_broker(frontend_endpoint: str, backend_endpoint: str) -> None:
    """Route each request to the worker of its function, and each reply back: the least a
    ROUTER/ROUTER broker does (no queues, credits, heartbeats or records)."""
    ctx = zmq.Context()
    frontend, backend = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    frontend.bind(frontend_endpoint)
    backend.bind(backend_endpoint)
    workers: dict[bytes, bytes] = {}
    poller = zmq.Poller()
    poller.register(frontend, zmq.POLLIN)
    poller.register(backend, zmq.POLLIN)
    while True:
        events = dict(poller.poll())
        if backend in events:
            for frames in recv_ready(backend):
                if frames[1] == p.READY:
                    workers[frames[2]] = frames[0]
                else:   # [worker, REPLY, client, request id, status, body]
                    send_frames(frontend, [frames[2], p.REPLY, *frames[3:]])
        if frontend in events:
            for client, _, request_id, name, payload in recv_ready(frontend):
                if name in workers:
                    send_frames(backend, [workers[name], p.REQUEST, client, request_id,
                                          payload])
                else:   # not announced yet
                    send_frames(frontend, [client, p.REPLY, request_id, p.UNAVAILABLE, b""])


def start_runtime(poller: zmq.Poller) -> subprocess.Popen:
    """Node behind a pipe (bench/floor_runtime.js), its stdout registered with `poller`."""
    node = subprocess.Popen(["node", str(ROOT / "bench" / "floor_runtime.js")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    os.set_blocking(node.stdout.fileno(), False)
    poller.register(node.stdout.fileno(), zmq.POLLIN)
    return node


def run_worker(backend_endpoint: str, function: str) -> None:
    """Answer each request at once (`echo`), or through Node over a pipe (`node`)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(backend_endpoint)
    send_frames(sock, [p.READY, function.encode()])
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    node = start_runtime(poller) if function == "node" else None
    waiting: dict[bytes, bytes] = {}
    buffer = b""
    while True:
        events = dict(poller.poll())
        if sock in events:
            for _, client, request_id, payload in recv_ready(sock):
                if node is None:
                    send_frames(sock, [p.REPLY, client, request_id, p.OK, BODY])
                else:
                    waiting[request_id] = client
                    os.write(node.stdin.fileno(),
                             b'{"id":"%s","event":%s}\n' % (request_id, payload))
        if node is not None and node.stdout.fileno() in events:
            buffer += os.read(node.stdout.fileno(), 1 << 16)
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                request_id, _, result = line.partition(b" ")
                send_frames(sock, [p.REPLY, waiting.pop(request_id), request_id, p.OK,
                                   result])


def run_control(endpoint: str, workers: list[str]) -> None:
    """The least a control plane does for the floor: tell each subscriber where the workers
    are (`function=endpoint` each), once."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(endpoint)
    functions = {}
    for spec in workers:
        name, _, worker_endpoint = spec.partition("=")
        functions[name] = {"available": True, "reason": "", "maxQueued": 1000, "maxWait": 10.0,
                           "workers": [{"id": f"{name}/1", "endpoint": worker_endpoint,
                                        "host": "floor", "serverKey": None}]}
    members = json.dumps({"version": 1, "functions": functions}).encode()
    while True:
        client, cmd, *_ = sock.recv_multipart()
        if cmd == p.SUBSCRIBE:
            sock.send_multipart([client, p.MEMBERS, members])


def run_direct_worker(endpoint: str, function: str) -> None:
    """A worker's own ROUTER: a window for each client that says HELLO, then answer each
    request at once (`echo`) or through Node over a pipe (`node`)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(endpoint)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    node = start_runtime(poller) if function == "node" else None
    waiting: dict[bytes, bytes] = {}
    buffer = b""
    while True:
        events = dict(poller.poll())
        if sock in events:
            for frames in recv_ready(sock):
                client, cmd = frames[0], frames[1]
                if cmd == p.HELLO:
                    send_frames(sock, [client, p.CREDIT, b"1000"])
                elif cmd != p.REQUEST:
                    continue
                elif node is None:
                    send_frames(sock, [client, p.REPLY, frames[2], p.OK, BODY])
                else:
                    waiting[frames[2]] = client
                    os.write(node.stdin.fileno(),
                             b'{"id":"%s","event":%s}\n' % (frames[2], frames[3]))
        if node is not None and node.stdout.fileno() in events:
            buffer += os.read(node.stdout.fileno(), 1 << 16)
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                request_id, _, result = line.partition(b" ")
                send_frames(sock, [waiting.pop(request_id), p.REPLY, request_id, p.OK, result])


# --- the run ---------------------------------------------------------------------------------
def start(tmp: Path) -> tuple[dict[str, str], list[subprocess.Popen]]:
    frontend = f"ipc://{tmp}/floor-frontend.sock"
    backend = f"ipc://{tmp}/floor-backend.sock"
    control = f"ipc://{tmp}/floor-control.sock"
    echo_endpoint = f"ipc://{tmp}/floor-w-echo.sock"
    node_endpoint = f"ipc://{tmp}/floor-w-node.sock"
    me = [sys.executable, str(Path(__file__).resolve())]
    detached = {"start_new_session": True}
    node_port, floor_port, sora_port = free_port(), free_port(), free_port()
    procs = [start_node(node_port),
             subprocess.Popen([*me, "broker", frontend, backend], **detached),
             subprocess.Popen([*me, "worker", backend, "echo"], **detached),
             subprocess.Popen([*me, "worker", backend, "node"], **detached),
             subprocess.Popen([*me, "control", control, f"echo={echo_endpoint}",
                               f"node={node_endpoint}"], **detached),
             subprocess.Popen([*me, "direct-worker", echo_endpoint, "echo"], **detached),
             subprocess.Popen([*me, "direct-worker", node_endpoint, "node"], **detached),
             subprocess.Popen([sys.executable, "-m", "gunicorn", "-k", "asgi", "-w",
                               str(default_gateway_workers()), "-b", f"127.0.0.1:{floor_port}",
                               "--log-level", "warning", "floor_app:create_app()"],
                              cwd=ROOT / "bench",
                              env=dict(os.environ, FLOOR_BROKER=frontend, FLOOR_CONTROL=control,
                                       PYTHONPATH=str(ROOT)), **detached),
             start_host(tmp, sora_port, default_gateway_workers(),
                        [copy_function(HELLO, tmp, instances=1)])]
    floor = f"http://127.0.0.1:{floor_port}"
    urls = {"plain node": f"http://127.0.0.1:{node_port}/", "falcon only": f"{floor}/http",
            "+ direct": f"{floor}/echo", "+ direct node": f"{floor}/node",
            "+ broker": f"{floor}/broker-echo", "+ broker node": f"{floor}/broker-node",
            "sora": f"http://127.0.0.1:{sora_port}/functions/hello"}
    return urls, procs


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    args = parser.parse_args()
    print(f"the shape's floor: hello-world, {args.duration}s per point, {os.cpu_count()} cores",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="sora-bench-floor-") as tmp:
        urls, procs = start(Path(tmp))
        rounds = run_rounds(urls, procs, args.rounds, args.duration, ready_timeout=120)
    rows = {name: median(name, results) for name, results in rounds.items()}
    node = rows["plain node"]
    print(f"\nmedians over {args.rounds} round(s):\n")
    print("| target | req/s (c=64) | % of plain Node | p50 (c=1) | p50 overhead |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['rps_c64']:,.0f} | {row['rps_c64'] / node['rps_c64']:.1%} | "
              f"{row['p50_ms']:.3f} ms | {row['p50_ms'] - node['p50_ms']:+.3f} ms |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "broker":
        run_broker(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "worker":
        run_worker(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "control":
        run_control(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) > 1 and sys.argv[1] == "direct-worker":
        run_direct_worker(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())
