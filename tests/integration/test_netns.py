"""The several-hosts harness itself (tests/netns.py): real traffic crosses the namespaces the
test makes, a cut link stops it, kill9 ends a host's processes, teardown leaves nothing, and a
real Sora supervisor serves from inside a host."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import psutil
import pytest
import requests
import zmq

from tests import netns
from tests.integration import functions as F
from tests.support import wait_for, write_function

pytestmark = pytest.mark.integration

PORT = 7000

TCP_ECHO = textwrap.dedent(f"""
    import socket
    server = socket.create_server(("0.0.0.0", {PORT}))
    print("ready", flush=True)
    while True:
        conn, peer = server.accept()
        data = conn.recv(100)
        conn.sendall(data + b" from " + peer[0].encode())
        conn.close()
""")

ZMQ_ROUTER = textwrap.dedent(f"""
    import zmq
    router = zmq.Context().socket(zmq.ROUTER)
    router.bind("tcp://0.0.0.0:{PORT + 1}")
    print("ready", flush=True)
    while True:
        identity, body = router.recv_multipart()
        router.send_multipart([identity, b"pong " + body])
""")


def zmq_dealer_code(address: str, timeout_ms: int = 3000) -> str:
    return textwrap.dedent(f"""
        import zmq
        dealer = zmq.Context().socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect("tcp://{address}:{PORT + 1}")
        dealer.send(b"ping")
        print(dealer.recv().decode() if dealer.poll({timeout_ms}) else "no answer", flush=True)
    """)


def tcp_client_code(address: str) -> str:
    return textwrap.dedent(f"""
        import socket
        with socket.create_connection(("{address}", {PORT}), timeout=3) as conn:
            conn.sendall(b"hello")
            print(conn.recv(100).decode(), flush=True)
    """)


def serve(host, code: str) -> subprocess.Popen:
    server = host.python(code)
    assert server.stdout.readline().strip() == "ready", server.stderr.read()
    return server


def stop(server: subprocess.Popen) -> None:
    server.kill()
    server.communicate()


def tcp_call(address: str, timeout: float = 3.0) -> str:
    with socket.create_connection((address, PORT), timeout=timeout) as conn:
        conn.sendall(b"hello")
        return conn.recv(100).decode()


def test_tcp_reaches_a_host_from_the_root_namespace_and_from_another_host(hosts):
    net = hosts(2)
    server = serve(net[0], TCP_ECHO)
    try:
        # From the root namespace the peer is the root's address on the bridge...
        assert tcp_call(net[0].address) == f"hello from {net.root_address}"
        # ...from host 1 it is host 1's own address: traffic crossed the bridge.
        out = net[1].run(sys.executable, "-c", tcp_client_code(net[0].address))
        assert out.stdout.strip() == f"hello from {net[1].address}", out.stderr
        # Host 0's port is its own: nothing listens on it in the root namespace or host 1.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", PORT), timeout=1)
        out = net[1].run(sys.executable, "-c", tcp_client_code("127.0.0.1"))
        assert "ConnectionRefusedError" in out.stderr
    finally:
        stop(server)
    # A host reaches the root namespace (where the main host's supervisor runs) at its address.
    with socket.create_server((net.root_address, PORT)) as listener:
        client = net[1].python(tcp_client_code(net.root_address))
        listener.settimeout(5)
        conn, peer = listener.accept()
        with conn:
            assert conn.recv(100) == b"hello" and peer[0] == net[1].address
            conn.sendall(b"hi root")
        assert client.communicate(timeout=10)[0].strip() == "hi root"


def test_a_zeromq_dealer_router_round_trip_from_the_root_and_between_hosts(hosts):
    net = hosts(2)
    server = serve(net[0], ZMQ_ROUTER)
    try:
        out = subprocess.run([sys.executable, "-c", zmq_dealer_code(net[0].address)],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "pong ping", out.stderr
        out = net[1].run(sys.executable, "-c", zmq_dealer_code(net[0].address))
        assert out.stdout.strip() == "pong ping", out.stderr
    finally:
        stop(server)


@pytest.mark.parametrize("keep_carrier", [False, True], ids=["link-down", "port-disabled"])
def test_cutting_a_host_stops_its_traffic_and_restoring_brings_it_back(hosts, keep_carrier):
    net = hosts(2)
    server, router = serve(net[0], TCP_ECHO), serve(net[0], ZMQ_ROUTER)
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect(f"tcp://{net[0].address}:{PORT + 1}")
        dealer.send(b"before")
        assert dealer.poll(3000) and dealer.recv() == b"pong before"

        net[0].cut(keep_carrier=keep_carrier)
        carrier = net[0].run("cat", "/sys/class/net/eth0/carrier").stdout
        host_link = netns.ip("-o", "link", "show", "eth0", netns=net[0].name).stdout
        assert ("NO-CARRIER" not in host_link) == keep_carrier, (host_link, carrier)
        # Silence, as with a pulled cable: no refusal, no answer, from the root or a host.
        with pytest.raises((socket.timeout, TimeoutError)):
            tcp_call(net[0].address, timeout=1)
        out = net[1].run(sys.executable, "-c", tcp_client_code(net[0].address))
        # Host 1 never spoke to host 0, so its ARP query may fail first (after ~3 s).
        assert "timed out" in out.stderr or "No route to host" in out.stderr, \
            (out.stdout, out.stderr)
        dealer.send(b"during")
        assert not dealer.poll(1500), "a cut host answered"
        # The other host is not affected.
        other = serve(net[1], TCP_ECHO)
        try:
            assert tcp_call(net[1].address) == f"hello from {net.root_address}"
        finally:
            stop(other)

        net[0].restore()
        assert wait_for(lambda: tcp_call(net[0].address, timeout=1), timeout=10,
                        what="the restored host to answer") == f"hello from {net.root_address}"
        # The connection open across the cut carries on: TCP retransmits what was sent.
        assert dealer.poll(15000) and dealer.recv() == b"pong during"
        out = net[1].run(sys.executable, "-c", zmq_dealer_code(net[0].address))
        assert out.stdout.strip() == "pong ping", out.stderr
    finally:
        dealer.close()
        context.term()
        stop(server)
        stop(router)


def test_netem_loss_drops_a_hosts_traffic_until_cleared(hosts):
    net = hosts(1)
    server = serve(net[0], TCP_ECHO)
    try:
        try:
            net[0].netem("loss 100%")
        except netns.NetemUnavailable as exc:
            pytest.skip(f"the kernel has no netem: {exc}")
        with pytest.raises((socket.timeout, TimeoutError)):
            tcp_call(net[0].address, timeout=1)
        net[0].netem(None)
        assert wait_for(lambda: tcp_call(net[0].address, timeout=1), timeout=10,
                        what="traffic after netem is cleared")
    finally:
        stop(server)


def test_teardown_leaves_no_namespace_veth_or_bridge_and_the_next_run_sweeps_a_killed_one():
    netns.check_available()
    net = netns.Network(3)
    made = netns.leftovers(pid=None)
    names = {h.name for h in net} | {net.bridge}
    assert names <= {m.split()[1] for m in made if m.startswith("netns")}
    assert f"link {net.root_link}" in made
    bridge_links = netns.ip("-o", "link", "show", netns=net.bridge).stdout
    assert "br0" in bridge_links and all(f"h{i}@" in bridge_links for i in range(3))
    server = serve(net[2], TCP_ECHO)   # a process still running in a host at teardown

    assert net.teardown() == []
    server.communicate(timeout=10)     # killed by the teardown
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "link"], capture_output=True, text=True).stdout
    assert not any(name in namespaces for name in names), namespaces
    assert net.root_link not in links, links
    assert net.root_address not in subprocess.run(["ip", "-4", "addr"], capture_output=True,
                                                  text=True).stdout

    # What a run killed before its teardown left, named with a pid no longer alive, is swept;
    # a live run's (ours, made just now) is not.
    dead = psutil.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = f"{netns.PREFIX}{dead.pid}-0"
    netns.ip("netns", "add", orphan)
    netns.ip("link", "add", f"st{dead.pid}-0", "type", "veth", "peer", "name", "x")
    mine = netns.Network(1)
    try:
        swept = netns.sweep_dead_runs()
        assert orphan in swept and f"st{dead.pid}-0" in swept
        assert netns.leftovers(pid=dead.pid) == []
        assert mine[0].name in netns.namespaces()
    finally:
        assert mine.teardown() == []


def test_kill9_ends_every_process_of_a_host(hosts, tmp_path):
    net = hosts(2)
    fn = write_function(tmp_path / "fns", "echo", {"index.js": F.ECHO}, name="echo")
    sora = net[0].sora(tmp_path / "h0", [fn]).start()
    bystander = serve(net[1], TCP_ECHO)
    try:
        tree = [sora.proc.pid, *(p.pid for p in sora.descendants())]
        assert len(tree) >= 3      # supervisor, gateway, worker at least
        net[0].kill9()
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status()
                       != psutil.STATUS_ZOMBIE for pid in tree)
        assert net[0].pids() == []
        assert not sora.leftover_processes(), sora.leftover_processes()
        # The other host's processes live on.
        assert bystander.poll() is None and tcp_call(net[1].address).startswith("hello")
    finally:
        stop(bystander)


def test_a_supervisor_in_a_host_serves_a_function_on_its_address_and_stops_cleanly(hosts,
                                                                                   tmp_path):
    net = hosts(1)
    fn = write_function(tmp_path / "fns", "echo", {"index.js": F.ECHO}, name="echo")
    sora = net[0].sora(tmp_path / "h0", [fn])
    assert sora.url == f"http://{net[0].address}:{sora.http_port}"
    sora.start()
    try:
        # Reached from the root namespace, on the host's address.
        r = sora.invoke("echo", params={"x": "1"})
        assert r.status_code == 200, r.text
        assert r.json()["event"]["queryStringParameters"] == {"x": "1"}
        assert sora.health()["functions"]["echo"]["state"] == "RUNNING"
        # Its gateway is in the host: nothing answers on that port in the root namespace.
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{sora.http_port}/healthz", timeout=2)
        # Its supervisor is in the host's network namespace, and no process of its tree is
        # in the root's (a sandboxed function may be in a namespace of its own).
        host_ns = f"net:[{os.stat(f'/run/netns/{net[0].name}').st_ino}]"
        assert _netns_of(sora.proc.pid) == host_ns
        tree = [p.pid for p in sora.descendants()]
        assert tree and not [pid for pid in tree if _netns_of(pid) == _netns_of(os.getpid())]
    finally:
        assert sora.stop() == 0
    assert not sora.leftovers(), sora.leftovers()
    assert net[0].pids() == []


def _netns_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def test_two_networks_at_once_take_distinct_subnets_and_stay_apart(hosts):
    a, b = hosts(1), hosts(1)
    assert a.subnet != b.subnet and not a.subnet.overlaps(b.subnet)
    assert len({h.name for h in (*a, *b)}) == 2
    server = serve(b[0], TCP_ECHO)
    try:
        assert tcp_call(b[0].address) == f"hello from {b.root_address}"
        # a's host has no route to b's subnet: the networks do not leak into each other.
        out = a[0].run(sys.executable, "-c", tcp_client_code(b[0].address))
        assert "unreachable" in out.stderr, (out.stdout, out.stderr)
    finally:
        stop(server)


def test_a_host_started_with_a_readiness_check_of_its_own(hosts, tmp_path):
    """How a joined host (no gateway of its own, perhaps) is started: ready() decides."""
    net = hosts(1)
    fn = write_function(tmp_path / "fns", "echo", {"index.js": F.ECHO}, name="echo")
    sora = net[0].sora(tmp_path / "h0", [fn])
    seen = []
    sora.start(ready=lambda: seen.append(1) or len(seen) >= 3)
    try:
        assert len(seen) == 3 and sora.proc.poll() is None
    finally:
        sora.kill9()
    failing = net[0].sora(tmp_path / "h1", [fn], command="no-such-command")
    with pytest.raises(AssertionError, match="exited early"):
        failing.start(ready=lambda: False, timeout=20)
