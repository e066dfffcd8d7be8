"""The trigger service's control socket and its client.

A ROUTER at `ipc://<stateDir>/run/triggers.sock` (the run folder is 0700 and never mounted in a
sandbox: only the host's own processes reach it). A request is `[request_id, op, json]`, its
answer `[request_id, json]`. Ops (sora.triggers.service): `status {function?}` and
`fire {function, index, key?}`. An answer with `"error"` says why the op failed.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

import zmq
import zmq.asyncio

from .. import protocol as p


class TriggersUnavailable(Exception):
    """The trigger service is not running or did not answer in time."""


def endpoint(state_dir: str) -> str:
    return "ipc://" + os.path.join(p.run_dir(state_dir), "triggers.sock")


def socket_path(state_dir: str) -> str:
    """The service's socket file: it exists once the service listens."""
    return endpoint(state_dir)[len("ipc://"):]


def _frames(op: str, body: dict | None) -> tuple[bytes, list[bytes]]:
    request_id = uuid.uuid4().hex.encode()
    return request_id, [request_id, op.encode(), json.dumps(body or {}).encode()]


def _answer(request_id: bytes, frames: list[bytes]) -> dict | None:
    if len(frames) != 2 or frames[0] != request_id:
        return None   # a late answer to an earlier request on this socket: not ours
    return json.loads(frames[1])


def request(state_dir: str, op: str, body: dict | None = None, timeout: float = 5.0) -> dict:
    """Ask the trigger service; raises TriggersUnavailable if it does not answer."""
    if not os.path.exists(socket_path(state_dir)):
        raise TriggersUnavailable("the trigger service is not running")
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint(state_dir))
        request_id, frames = _frames(op, body)
        sock.send_multipart(frames)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not poller.poll(left * 1000):
                break
            answer = _answer(request_id, sock.recv_multipart())
            if answer is not None:
                return answer
        raise TriggersUnavailable(f"the trigger service did not answer within {timeout:.0f}s")
    finally:
        sock.close(linger=0)


async def request_async(state_dir: str, op: str, body: dict | None = None,
                        timeout: float = 5.0) -> dict:
    """request() for an asyncio caller (a gateway)."""
    if not os.path.exists(socket_path(state_dir)):
        raise TriggersUnavailable("the trigger service is not running")
    ctx = zmq.asyncio.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint(state_dir))
        request_id, frames = _frames(op, body)
        await sock.send_multipart(frames)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            try:
                frames = await asyncio.wait_for(sock.recv_multipart(), left)
            except asyncio.TimeoutError:
                break
            answer = _answer(request_id, frames)
            if answer is not None:
                return answer
        raise TriggersUnavailable(f"the trigger service did not answer within {timeout:.0f}s")
    finally:
        sock.close(linger=0)
