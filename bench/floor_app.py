"""The floor's gateway: a Falcon ASGI app under gunicorn's `asgi` worker, as Sora's is, with
nothing else. /http answers at once (the HTTP layer alone); the other routes go over ZeroMQ to a
minimal worker (bench/floor.py) with Sora's own invocation client, so they are the fixed shape
with no Sora logic at all:

  /echo, /node               the direct shape (issue 16): gateway DEALER -> worker ROUTER
                             [-> Node]; the client learns the workers from a minimal control
                             plane ($FLOOR_CONTROL)
  /broker-echo, /broker-node the old shape: gateway DEALER -> ROUTER/ROUTER broker -> worker
                             [-> Node] ($FLOOR_BROKER, a minimal broker client below)
"""
import asyncio
import os

import falcon.asgi
import zmq

from sora import protocol as p
from sora.hotpath import recv_ready, send_frames
from sora.messaging.client import InvocationClient

BODY = b'{"message":"Hello, world!"}'


class Direct:
    async def on_get(self, req, resp):
        resp.data = BODY


class BrokerShapeClient:
    """The old shape's client, as lean as the one Sora had: one DEALER to a broker, the turn's
    requests sent back to back, replies drained per wake-up."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.pid = -1
        self.pending: dict[bytes, asyncio.Future] = {}
        self.outbox: list[list[bytes]] = []
        self.scheduled = False

    def _connect(self):
        self.pid = os.getpid()
        self.loop = asyncio.get_running_loop()
        self.sock = zmq.Context().socket(zmq.DEALER)
        self.sock.connect(self.endpoint)
        self.loop.add_reader(self.sock.getsockopt(zmq.FD), self._drain)

    def _drain(self):
        for frames in recv_ready(self.sock):
            fut = self.pending.pop(frames[1], None)
            if fut is not None and not fut.done():
                fut.set_result(frames[2:])

    def _check(self):
        self.scheduled = False
        outbox, self.outbox = self.outbox, []
        for frames in outbox:
            send_frames(self.sock, frames)
        self._drain()

    async def invoke(self, function, request_id, payload, timeout):
        if self.pid != os.getpid():
            self._connect()
        fut = self.loop.create_future()
        self.pending[request_id] = fut
        self.outbox.append([p.REQUEST, request_id, function.encode(), payload])
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._check)
        return await fut


class Through:
    def __init__(self, client, function: str):
        self.client, self.function = client, function
        self.n = 0

    async def on_get(self, req, resp):
        self.n += 1
        rid = b"%d-%d" % (os.getpid(), self.n)
        status, body = await self.client.invoke(self.function, rid, b'{"rawPath":"/"}', 10.0)
        if status != p.OK:
            raise falcon.HTTPServiceUnavailable(description=body.decode())
        resp.data = body


def create_app() -> falcon.asgi.App:
    direct = InvocationClient(os.environ["FLOOR_CONTROL"])
    broker = BrokerShapeClient(os.environ["FLOOR_BROKER"])
    app = falcon.asgi.App()
    app.add_route("/http", Direct())
    app.add_route("/echo", Through(direct, "echo"))
    app.add_route("/node", Through(direct, "node"))
    app.add_route("/broker-echo", Through(broker, "echo"))
    app.add_route("/broker-node", Through(broker, "node"))
    return app
