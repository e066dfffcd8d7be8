"""The gateway's connection to the broker: one DEALER per gateway process, many requests in
flight, matched to their callers by request id.

The ZeroMQ socket's file descriptor is watched by the event loop directly and every ready reply
is drained per wake-up; there is one future per request and nothing else on the hot path
(deadlines are checked by one sweep every half second, not a timer per request). ZeroMQ's fd is
edge-triggered, so once per loop turn after sends the socket is checked for replies that
arrived meanwhile.

When the connection to the broker drops (the supervisor died or is restarting), every caller
still waiting is answered at once with `BrokerUnavailable`, and so is every new call until the
connection is back: a ZeroMQ socket monitor reports the drop, at no cost per request. Before,
callers hung until their deadline (5-11 s were seen, after a kill -9 of the supervisor).
"""
from __future__ import annotations

import asyncio
import os
import struct

import zmq

from .. import protocol as p
from ..hotpath import recv_ready, send_frames
from ..config import HostConfig


_SWEEP_INTERVAL = 0.5
# How long past the function's own timeout the gateway waits for the broker: the invocation may
# first queue for up to the timeout, then run for up to the timeout.
BROKER_SLACK = 10.0


def broker_waits(config: HostConfig) -> dict[str, float]:
    """Per function, how long a caller waits for the broker's answer."""
    return {fn.name: fn.timeout * 2 + BROKER_SLACK for fn in config.functions}


class BrokerTimeout(Exception):
    pass


class BrokerUnavailable(BrokerTimeout):
    """No broker is connected: the call was not sent, or its answer can no longer come."""


class BrokerClient:
    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self._pid = -1
        self._sock: zmq.Socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[bytes, asyncio.Future] = {}
        self._deadlines: dict[bytes, float] = {}
        self._sweeping = False
        self._check_scheduled = False
        self._outbox: list[list[bytes]] = []
        self._monitor: zmq.Socket | None = None
        self._broker_gone = False   # connected once, and not since the last disconnect

    def _connect(self) -> None:
        # After a fork (gunicorn workers) the parent's context must not be used: make our own.
        self._pid = os.getpid()
        self._loop = asyncio.get_running_loop()
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.connect(self.endpoint)
        self._sock = sock
        self._loop.add_reader(sock.getsockopt(zmq.FD), self._drain)
        self._broker_gone = False
        self._monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self._loop.add_reader(self._monitor.getsockopt(zmq.FD), self._watch)
        self._watch()   # takes the commands already queued: the fd signals only new ones

    def close(self) -> None:
        """Close the socket and its context (a context with an open socket cannot end)."""
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.getsockopt(zmq.FD))
                self._loop.remove_reader(self._monitor.getsockopt(zmq.FD))
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
            ctx = self._sock.context
            self._sock.close(linger=0)
            ctx.term()
            self._sock = None
            self._pid = -1

    def _drain(self) -> None:
        sock = self._sock
        pending = self._pending
        for frames in recv_ready(sock):
            if len(frames) >= 4 and frames[0] == p.REPLY:
                fut = pending.pop(frames[1], None)
                if fut is not None and not fut.done():
                    fut.set_result(frames[2:])

    def _watch(self) -> None:
        """The socket monitor's events: a dropped broker connection fails every caller."""
        for frames in recv_ready(self._monitor):
            event = struct.unpack("=hi", frames[0][:6])[0]
            if event == zmq.EVENT_CONNECTED:
                self._broker_gone = False
            elif event == zmq.EVENT_DISCONNECTED:
                self._broker_gone = True
                pending, self._pending = self._pending, {}
                for fut in pending.values():
                    if not fut.done():
                        fut.set_exception(BrokerUnavailable())

    def _check(self) -> None:
        """Once per loop turn: send the requests of the turn, then look for replies (ZeroMQ's
        fd is edge-triggered, and a send may consume the readiness of a reply that arrived
        meanwhile). Sending them back to back wakes ZeroMQ's I/O thread once for the lot,
        where a send from each request's task would wake it for each (a system call and a
        context switch, the largest part of the gateway's ZeroMQ cost)."""
        self._check_scheduled = False
        outbox, self._outbox = self._outbox, []
        if self._broker_gone:
            return   # their callers were answered: sent now, they would run for no one
        sock = self._sock
        for frames in outbox:
            try:
                send_frames(sock, frames)
            except zmq.ZMQError as exc:   # the caller gets the error its send met
                fut = self._pending.get(frames[1])
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
        self._drain()

    async def _call(self, frames: list[bytes], request_id: bytes, timeout: float):
        if self._pid != os.getpid():
            self._connect()
        if self._broker_gone:
            raise BrokerUnavailable()
        loop = self._loop
        fut = loop.create_future()
        self._pending[request_id] = fut
        self._deadlines[request_id] = loop.time() + timeout
        self._outbox.append(frames)
        if not self._check_scheduled:
            self._check_scheduled = True
            loop.call_soon(self._check)
        if not self._sweeping:
            self._sweeping = True
            loop.call_later(_SWEEP_INTERVAL, self._sweep)
        try:
            return await fut
        finally:
            self._pending.pop(request_id, None)
            self._deadlines.pop(request_id, None)

    def _sweep(self) -> None:
        """Fail the requests whose deadline has passed; run again while any are pending."""
        now = self._loop.time()
        for request_id, deadline in list(self._deadlines.items()):
            if deadline <= now:
                del self._deadlines[request_id]
                fut = self._pending.pop(request_id, None)
                if fut is not None and not fut.done():
                    fut.set_exception(BrokerTimeout())
        if self._deadlines:
            self._loop.call_later(_SWEEP_INTERVAL, self._sweep)
        else:
            self._sweeping = False

    async def invoke(self, function: str, request_id: bytes, payload: bytes,
                     timeout: float, meta: bytes = p.TRIGGER_HTTP) -> list[bytes]:
        """Send one invocation; return the reply's frames: status and body (protocol.py),
        then the base64 tail of its log when `meta` asked for it (`p.meta(..., tail=True)`)."""
        frames = [p.REQUEST, request_id, function.encode(), payload]
        if meta != p.TRIGGER_HTTP:
            frames.append(meta)
        return await self._call(frames, request_id, timeout)

    async def status(self, request_id: bytes, timeout: float = 3.0) -> bytes:
        _, body, *_ = await self._call([p.STATUS, request_id], request_id, timeout)
        return body
