"""Who the `provided` adapter counts as its instance's (issue 14 point 3): a connection is served
only if the socket at its other end is open in one of the adapter's descendants (outside a
sandbox). Real sockets and processes, no Sora host."""
import os
import socket
import subprocess
import sys

import pytest

from sora.runtimes.provided.peers import OwnPeers, socket_owner

CONNECT = ("import socket, sys; s = socket.create_connection(('127.0.0.1', int(sys.argv[1]))); "
           "sys.stdin.read()")


@pytest.fixture
def listener():
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.settimeout(10)
        yield sock


def accept_from(listener, argv):
    """Start `argv` (it connects, then waits for its stdin to close); the accepted socket."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE)
    try:
        sock, _ = listener.accept()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, sock


def finish(proc, sock):
    sock.close()
    proc.stdin.close()
    proc.wait(10)


def test_a_child_and_a_grandchild_are_the_instances(listener):
    peers = OwnPeers(sandboxed=False)
    port = str(listener.getsockname()[1])
    for argv in ([sys.executable, "-c", CONNECT, port],
                 ["/bin/sh", "-c", '"$0" -c "$1" "$2"; true', sys.executable, CONNECT, port]):
        proc, sock = accept_from(listener, argv)
        try:
            assert peers.is_own(sock), argv
        finally:
            finish(proc, sock)


def test_a_process_outside_the_tree_is_not(listener):
    """Connected from a process that double-forked out of the tree (reparented to init), and
    from the checking process itself: neither is a descendant."""
    peers = OwnPeers(sandboxed=False)
    port = listener.getsockname()[1]
    read_end, write_end = os.pipe()
    # The grandchild connects, then waits for the pipe to close; its parent exits at once.
    subprocess.run([sys.executable, "-c", "import subprocess, sys; subprocess.Popen(sys.argv[1:])",
                    sys.executable, "-c", CONNECT, str(port)], stdin=read_end, check=True)
    os.close(read_end)
    sock, _ = listener.accept()
    try:
        assert not peers.is_own(sock)
    finally:
        sock.close()
        os.close(write_end)
    mine = socket.create_connection(("127.0.0.1", port))
    sock, _ = listener.accept()
    try:
        assert not peers.is_own(sock)
    finally:
        sock.close()
        mine.close()


def test_socket_owner_finds_the_connecting_socket(listener):
    with OwnPeers(sandboxed=False).netlink as netlink:
        client = socket.create_connection(listener.getsockname())
        sock, _ = listener.accept()
        with client, sock:
            uid, inode = socket_owner(netlink, 1, sock.getpeername(), sock.getsockname())
            assert (uid, inode) == (os.geteuid(), os.fstat(client.fileno()).st_ino)
            client_port = client.getsockname()[1]
        # Once it has closed, there is no such socket to find (or one in TIME_WAIT, inode 0).
        gone = socket_owner(netlink, 2, ("127.0.0.1", client_port), listener.getsockname())
        assert gone is None or gone[1] == 0


def test_sandboxed_is_taken_only_in_a_pid_namespace_of_its_own():
    # Here the parent is pytest's, not pid 1: the check stays on this process's descendants.
    peers = OwnPeers(sandboxed=True)
    assert peers.root == os.getpid() and peers.uid is None
