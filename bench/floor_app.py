"""The floor's gateway: a Falcon ASGI app under gunicorn's `asgi` worker, as Sora's is, with
nothing else. /http answers at once (the HTTP layer alone); /echo and /node go over ZeroMQ
through a broker to a worker (bench/floor.py), using Sora's own broker client, so they are the
fixed shape (gateway -> ZeroMQ ROUTER broker -> worker [-> Node]) with no Sora logic at all."""
import os

import falcon.asgi

from sora import protocol as p
from sora.messaging.client import BrokerClient

BODY = b'{"message":"Hello, world!"}'


class Direct:
    async def on_get(self, req, resp):
        resp.data = BODY


class ThroughBroker:
    def __init__(self, client: BrokerClient, function: str):
        self.client, self.function = client, function
        self.n = 0

    async def on_get(self, req, resp):
        self.n += 1
        rid = b"%d-%d" % (os.getpid(), self.n)
        status, body = await self.client.invoke(self.function, rid, b'{"rawPath":"/"}', 10.0)
        if status != p.OK:
            raise falcon.HTTPServiceUnavailable()
        resp.data = body


def create_app() -> falcon.asgi.App:
    client = BrokerClient(os.environ["FLOOR_BROKER"])
    app = falcon.asgi.App()
    app.add_route("/http", Direct())
    app.add_route("/echo", ThroughBroker(client, "echo"))
    app.add_route("/node", ThroughBroker(client, "node"))
    return app
