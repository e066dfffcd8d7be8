"""The host's TCP listeners (HTTP, HTTPS), bound by the supervisor before anything starts.

The supervisor binds every port itself, before any setup runs, and hands each socket to its
gunicorn master as an inherited file descriptor (gunicorn's `fd://N` bind). So:

- a port that is taken fails the start at once, naming the port and the process holding it
  (before, gunicorn retried its bind for 5 s per start, the arbiter restarted it 3 times, and a
  readiness probe that connected to the *other* process's port had already announced "serving"
  and RUNNING: the host failed ~20 s after it said it was up);
- a gateway that restarts gets the same socket back: nothing else can take the port meanwhile,
  and connections made while it restarts wait in the backlog instead of being refused.

These are the only ports Sora binds on a single host: the control plane, workers, recorder and
dispatcher talk over Unix sockets in the state dir (a cluster adds `cluster.listen`, its port + 1
and joined hosts' workers' ports, sora/cluster), and a `provided` runtime's Runtime API listens on an ephemeral
loopback port (port 0) that cannot be taken.
"""
from __future__ import annotations

import errno
import socket
import time

import psutil

from ..config import HostConfig

# gunicorn's own default listen backlog (`backlog` in gunicorn_conf is the same).
BACKLOG = 2048
# A taken port is tried again for this long: a host restarted right after a `kill -9` finds
# its old gateways still holding it for the moment they take to die with it (PDEATHSIG).
BUSY_GRACE = 1.0


class ListenerUnavailable(Exception):
    """A listener's port cannot be bound; the message names the setting, the port and why."""


def ports(config: HostConfig) -> dict[str, int]:
    """Each listener's port, by its name ("http", "https")."""
    server = config.server
    out = {}
    if server.httpPort is not None:
        out["http"] = server.httpPort
    if server.httpsPort is not None:
        out["https"] = server.httpsPort
    return out


def bind_all(config: HostConfig) -> dict[str, socket.socket]:
    """A listening socket for every listener, or ListenerUnavailable for the first that cannot
    be bound (the ones already bound are closed)."""
    bound: dict[str, socket.socket] = {}
    try:
        for name, port in ports(config).items():
            bound[name] = bind_one(config, name, port)
    except ListenerUnavailable:
        close_all(bound)
        raise
    return bound


def bind_one(config: HostConfig, name: str, port: int) -> socket.socket:
    host = config.server.bind
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + BUSY_GRACE
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # As gunicorn sets it: a port whose last connections are in TIME_WAIT (a restart
            # of the host) can be bound again at once.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(BACKLOG)
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                raise _unavailable(config, name, host, port, exc) from None
        time.sleep(0.1)


def _unavailable(config: HostConfig, name: str, host: str, port: int,
                 exc: OSError) -> ListenerUnavailable:
    setting = f"{config.path}: server.{name}Port"
    if exc.errno == errno.EADDRINUSE:
        return ListenerUnavailable(f"{setting}: expected a free port, but {host}:{port} is "
                                   f"already in use by {holder_of(port)}")
    return ListenerUnavailable(f"{setting}: cannot listen on {host}:{port} "
                               f"({exc.strerror or exc})")


def holder_of(port: int) -> str:
    """Who listens on TCP `port`: "pid N (name)", or what can be said when it is not visible
    (another network namespace, or not root)."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return "another process (cannot list sockets to tell which)"
    pids = sorted({c.pid for c in connections if c.laddr and c.laddr.port == port
                   and c.status == psutil.CONN_LISTEN and c.pid is not None})
    if not pids:
        return "another process (not visible from here)"
    return ", ".join(f"pid {pid} ({_name_of(pid)})" for pid in pids)


def _name_of(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "?"


def close_all(sockets: dict[str, socket.socket]) -> None:
    for sock in sockets.values():
        sock.close()
    sockets.clear()
