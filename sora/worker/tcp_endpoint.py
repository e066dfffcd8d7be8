"""A worker's data endpoint on tcp, for the clients of other hosts (a host with
`cluster.advertise`: docs/architecture.md, "Several hosts").

The ROUTER is a CURVE server with this host's key pair; the allow-list of the keys folder
decides which hosts' clients may connect (one ZAP authenticator on the worker's context logs
each refusal with the peer's address). It binds an ephemeral port on the advertised address,
and the endpoint announced is that address with the port the kernel chose.
"""
from __future__ import annotations

import ipaddress
import socket

import zmq

from ..cluster.keys import KeyRing, server_socket, start_authenticator


def bind_address(advertise: str) -> tuple[str, bool]:
    """(what to bind, is it IPv6) for an advertised host name or address: a name is
    resolved, since ZeroMQ binds addresses and interfaces, not names."""
    bare = advertise.strip("[]")
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        address = ipaddress.ip_address(socket.getaddrinfo(bare, None)[0][4][0])
    return (f"[{address}]", True) if address.version == 6 else (str(address), False)


def endpoint_text(advertise: str, port: int) -> str:
    bare = advertise.strip("[]")
    host = f"[{bare}]" if ":" in bare else bare
    return f"tcp://{host}:{port}"


def max_request_bytes(max_body_bytes: int) -> int:
    """The largest message the endpoint takes, for calls of bodies up to `max_body_bytes`
    (server.maxBodyBytes): the event carries the body base64-encoded (4/3) with the request's
    headers and context (within 1 MiB). A larger message closes its connection."""
    return 2 * max_body_bytes + (1 << 20)


def bind_tcp(ctx: zmq.Context, ring: KeyRing, advertise: str,
             max_message: int = max_request_bytes(6 << 20)):
    """(ROUTER bound as a CURVE server, the endpoint to announce, its authenticator: stop it
    before the context is terminated)."""
    auth = start_authenticator(ctx, ring)
    sock = server_socket(ctx, zmq.ROUTER, ring, max_message=max_message)
    try:
        address, ipv6 = bind_address(advertise)
        if ipv6:
            sock.setsockopt(zmq.IPV6, 1)
        sock.bind(f"tcp://{address}:0")
    except (OSError, zmq.ZMQError):
        sock.close(0)
        auth.stop()
        raise
    port = int(sock.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1])
    return sock, endpoint_text(advertise, port), auth
