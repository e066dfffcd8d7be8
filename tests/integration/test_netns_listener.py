"""netns_listener: a socket made in a container's network namespace serves that container only.

Real containers (the `docker` package against the session's engine, tests/docker_engine.py), with
network none, as a non-root user with every capability dropped."""
from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

from sora.containers import netns_listener
from tests import host_usr_image

CLIENT = r"""
import socket, sys, time
deadline = time.monotonic() + 20
while True:
    try:
        s = socket.create_connection(("127.0.0.1", 9001), timeout=5)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.02)
s.sendall(b"hello from inside\n")
print(s.makefile("rb").readline().decode().strip(), flush=True)
"""


@pytest.fixture(scope="module")
def engine(docker_engine):
    client = docker_engine.client
    host_usr_image.ensure(client)
    yield client


@pytest.fixture
def container(engine):
    made = []

    def start(command):
        c = engine.containers.create(
            host_usr_image.IMAGE, command, name=f"sora-test-netns-{uuid.uuid4().hex[:12]}",
            network_mode="none", user="65534:65534", cap_drop=["ALL"], read_only=True,
            security_opt=["no-new-privileges"], volumes=host_usr_image.binds(),
            labels={"sora-test": "netns_listener"})
        made.append(c)
        c.start()
        c.reload()
        return c
    yield start
    for c in made:
        c.remove(force=True)


def thread_namespace() -> str:
    return os.readlink("/proc/thread-self/ns/net")


def test_client_inside_connects(container):
    c = container(["/usr/bin/python3", "-c", CLIENT])
    pid = c.attrs["State"]["Pid"]
    before = thread_namespace()
    listener = netns_listener.listen_in(pid)
    try:
        # The calling thread (and so the worker's loop) never left its own namespace.
        assert thread_namespace() == before
        assert os.readlink(f"/proc/{pid}/ns/net") != before
        listener.settimeout(20)
        conn, peer = listener.accept()
        with conn:
            assert peer[0] == "127.0.0.1"
            assert conn.makefile("rb").readline() == b"hello from inside\n"
            conn.sendall(b"hello from the host\n")
        assert c.wait(timeout=20)["StatusCode"] == 0
        assert b"hello from the host" in c.logs()
    finally:
        listener.close()


def test_not_reachable_from_the_host(container):
    """The port is in the container's loopback, not the host's: a host connection to it finds
    nothing (or whatever else the host has there, never this listener)."""
    c = container(["/usr/bin/sleep", "30"])
    listener = netns_listener.listen_in(c.attrs["State"]["Pid"], port=9001)
    try:
        listener.setblocking(False)
        import socket
        try:
            socket.create_connection(("127.0.0.1", 9001), timeout=1).close()
        except OSError:
            pass
        time.sleep(0.2)
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_exited_container_is_an_error(container):
    """A pidfd of an exited container's init: the namespace is gone, and the pidfd never names
    another process (its pid may be reused meanwhile)."""
    c = container(["/usr/bin/sleep", "30"])
    pid = c.attrs["State"]["Pid"]
    pidfd = os.pidfd_open(pid)
    try:
        c.kill()
        c.wait(timeout=20)
        with pytest.raises(netns_listener.NamespaceError):
            netns_listener.listen_in(pid, pidfd=pidfd)
    finally:
        os.close(pidfd)
    with pytest.raises(netns_listener.NamespaceError):
        netns_listener.listen_in(pid)


def test_other_threads_stay_home(container):
    """While the listener's thread is in the container's namespace, other threads are not."""
    c = container(["/usr/bin/sleep", "30"])
    seen, stop = set(), threading.Event()

    def watch():
        while not stop.is_set():
            seen.add(thread_namespace())
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(20):
            netns_listener.listen_in(c.attrs["State"]["Pid"], port=9001).close()
    finally:
        stop.set()
        watcher.join()
    assert seen == {thread_namespace()}
