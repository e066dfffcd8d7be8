"""A worker's tcp data endpoint (sora/worker/tcp_endpoint.py): a CURVE server on the advertised
address at a port the kernel picks; clients of allowed hosts get through, others are refused
and logged with their address."""
import logging
import os
import time

import pytest
import zmq

from sora.cluster import keys as k
from sora.worker.tcp_endpoint import bind_address, bind_tcp, endpoint_text


@pytest.fixture
def rings(tmp_path):
    worker_host = k.init_keys(str(tmp_path / "joined"))
    main = k.init_keys(str(tmp_path / "main"))
    stranger = k.init_keys(str(tmp_path / "stranger"))
    k.add_allowed(worker_host.directory, os.path.join(main.directory, k.HOST_CERT), "main")
    return worker_host, main, stranger


def test_addresses_and_endpoints():
    assert bind_address("127.0.0.1") == ("127.0.0.1", False)
    assert bind_address("localhost")[0] in ("127.0.0.1", "[::1]")
    assert bind_address("[::1]") == ("[::1]", True)
    assert endpoint_text("::1", 7) == "tcp://[::1]:7"
    assert endpoint_text("node2.example", 7) == "tcp://node2.example:7"


def test_allowed_clients_reach_it_and_others_are_refused_with_their_address(rings, caplog):
    worker_host, main, stranger = rings
    ctx = zmq.Context()
    router, endpoint, auth = bind_tcp(ctx, worker_host, "127.0.0.1")
    clients = []
    try:
        assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith(":0")
        for ring in (main, stranger):
            sock = k.client_socket(ctx, zmq.DEALER, ring, worker_host.public)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            sock.send(ring.public)   # queued until the handshake succeeds, if it does
            clients.append(sock)
        with caplog.at_level(logging.WARNING, logger="sora.cluster.keys"):
            assert router.poll(5000)
            identity, said = router.recv_multipart()
            assert said == main.public
            deadline = time.monotonic() + 5
            while "refused a connection from 127.0.0.1" not in caplog.text:
                assert time.monotonic() < deadline, caplog.text
                time.sleep(0.02)
        assert not router.poll(300)   # the stranger's message never arrives
        router.send_multipart([identity, b"hello"])
        assert clients[0].poll(5000) and clients[0].recv() == b"hello"
    finally:
        for sock in (*clients, router):
            sock.close(0)
        auth.stop()
        ctx.term()
