"""The admin channel: operators' requests to the supervisor's arbiter, answered with JSON.

`sora-supervisor reload`, `POST /api/reload` (the gateway) and the other helpers' management
routes ask the running supervisor to do something (`reload`, `publish`, ...) through
`<stateDir>/run/admin.sock`, a ZeroMQ ROUTER served by the control plane thread and answered by
the arbiter's loop (`Arbiter.admin_ops`). The run folder is 0700 and no sandbox binds it, so
only Sora's own processes and the operator's user reach it: a function's code cannot trigger or
steer a reload.

    request:  [ADMIN, request_id, op, json args]     (DEALER -> ROUTER)
    answer:   [ADMIN, request_id, json answer]

Every error answer has the shape `{"error": {"type": ..., "message": ...}}` (an unknown op is
`InvalidParameterValueException`); this module raises nothing for them, the caller reads the
answer. A supervisor that does not answer within `timeout` (or is not running) raises
`AdminUnavailable`.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from dataclasses import dataclass

import zmq

from .. import protocol as p

# The op names the supervisor serves (Arbiter.admin_ops); others may add theirs.
OP_RELOAD = "reload"


class AdminUnavailable(Exception):
    """No supervisor answered on the state dir's admin socket in time."""


def error(error_type: str, message: str) -> dict:
    """The one shape of every error answer."""
    return {"error": {"type": error_type, "message": message}}


@dataclass(frozen=True)
class AdminRequest:
    """One request as the supervisor receives it (`peer` is the ROUTER's identity frame)."""
    peer: bytes
    request_id: bytes
    op: str
    args: dict

    @classmethod
    def decode(cls, frames: list[bytes]) -> "AdminRequest | None":
        """[peer, ADMIN, request_id, op, json] -> a request, or None if it is not one (a
        malformed message must not end the control plane's thread)."""
        if len(frames) != 5 or frames[1] != p.ADMIN:
            return None
        try:
            args = json.loads(frames[4]) if frames[4] else {}
            op = frames[3].decode()
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(args, dict):
            return None
        return cls(frames[0], frames[2], op, args)

    def answer_frames(self, answer: dict) -> list[bytes]:
        return [self.peer, p.ADMIN, self.request_id, json.dumps(answer, default=str).encode()]


def _socket(ctx: zmq.Context, state_dir: str) -> zmq.Socket:
    path = p.ipc_path(p.admin_endpoint(state_dir))
    if not os.path.exists(path):
        raise AdminUnavailable(f"no supervisor is running on {state_dir} (no {path})")
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(p.admin_endpoint(state_dir))
    return sock


def _frames(op: str, args: dict | None) -> tuple[bytes, list[bytes]]:
    request_id = uuid.uuid4().hex.encode()
    return request_id, [p.ADMIN, request_id, op.encode(), json.dumps(args or {}).encode()]


def _answer(frames: list[bytes], request_id: bytes) -> dict | None:
    if len(frames) == 3 and frames[0] == p.ADMIN and frames[1] == request_id:
        return json.loads(frames[2])
    return None   # an answer to an earlier request of this socket: not ours


def request(state_dir: str, op: str, args: dict | None = None, timeout: float = 60.0) -> dict:
    """Ask the supervisor using `state_dir` to do `op`; its JSON answer. Blocking (CLI,
    `sora-supervisor reload`, tests). Raises AdminUnavailable when no answer comes in time."""
    ctx = zmq.Context.instance()
    sock = _socket(ctx, state_dir)
    try:
        request_id, frames = _frames(op, args)
        sock.send_multipart(frames)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0 or not poller.poll(max(1, int(left * 1000))):
                raise AdminUnavailable(f"the supervisor on {state_dir} did not answer "
                                       f"{op!r} within {timeout:g}s")
            answer = _answer(sock.recv_multipart(), request_id)
            if answer is not None:
                return answer
    finally:
        sock.close(linger=0)


async def request_async(state_dir: str, op: str, args: dict | None = None,
                        timeout: float = 60.0) -> dict:
    """`request` for an event loop (the gateway): the wait runs on a thread of the loop's
    executor, so the loop goes on serving calls meanwhile."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, request, state_dir, op, args, timeout)
