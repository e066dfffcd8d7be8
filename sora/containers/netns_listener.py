"""A listening TCP socket made inside a container's network namespace.

A Lambda container image's runtime interface client talks to the Runtime API at
AWS_LAMBDA_RUNTIME_API (`host:port`, TCP). A container with `network: false` has a network
namespace of its own with nothing in it but its loopback, so the Runtime API must listen there:
the socket is made inside that namespace, and keeps serving it once made, whichever namespace
the process that holds it (the instance's adapter, on the host) is in. So the container reaches
the Runtime API without any network of the host, and nothing outside the container can reach it.

The network namespace is a property of each thread (setns(2) changes only the calling thread),
so the namespace is entered by a thread made for that alone: it enters, makes, binds and listens
on the socket, and ends. The worker's own threads never change namespace. Python 3.11 has no
os.setns, hence ctypes. The namespace is named by a pidfd of the container's init (setns(2)
takes one since Linux 5.8), not by /proc/<pid>/ns/net: a pid can be reused once its process has
exited, a pidfd cannot, so the socket is never made in some other process's namespace. Entering
another network namespace needs CAP_SYS_ADMIN: root only (the worker).
"""
from __future__ import annotations

import ctypes
import os
import socket
import threading

CLONE_NEWNET = 0x40000000
RUNTIME_API_PORT = 9001   # where Lambda's own Runtime API listens in its execution environment

_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceError(OSError):
    """The container's network namespace could not be entered (it exited, or no privilege)."""


def _setns(fd: int, nstype: int) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise NamespaceError(err, f"setns: {os.strerror(err)}")


def listen_in(pid: int, port: int = RUNTIME_API_PORT, host: str = "127.0.0.1",
              pidfd: int | None = None, backlog: int = 16) -> socket.socket:
    """A socket listening on host:port in the network namespace of process `pid` (a
    container's init, as the host sees it; or its `pidfd`, which is then used and not closed).
    Raises NamespaceError if the namespace cannot be entered, OSError if the port is taken."""
    own_pidfd = pidfd is None
    if own_pidfd:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            raise NamespaceError(exc.errno, f"container init {pid}: {exc.strerror}") from None
    outcome: dict[str, object] = {}

    def in_namespace() -> None:
        # This thread's own namespace, to go back to (it ends right after anyway: were the
        # way back to fail, no other code runs in the container's namespace).
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(pidfd, CLONE_NEWNET)
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind((host, port))
                    sock.listen(backlog)
                except BaseException:
                    sock.close()
                    raise
                outcome["socket"] = sock
            finally:
                _setns(home, CLONE_NEWNET)
        except BaseException as exc:   # handed to the caller's thread
            outcome["error"] = exc
        finally:
            os.close(home)

    try:
        thread = threading.Thread(target=in_namespace, name=f"netns-listen-{pid}", daemon=True)
        thread.start()
        thread.join()
    finally:
        if own_pidfd:
            os.close(pidfd)
    if "error" in outcome:
        raise outcome["error"]   # type: ignore[misc]
    return outcome["socket"]   # type: ignore[return-value]


def network_namespace(pid: int) -> str:
    """The link naming a process's network namespace (`net:[4026532...]`), to compare two."""
    return os.readlink(f"/proc/{pid}/ns/net")
