"""The wiring of several hosts (sora/supervisor/hosts.py, the control plane's local members
and hosts status, `sora-supervisor join`'s config errors): real ZeroMQ and CURVE on 127.0.0.1,
no supervisor processes."""
import dataclasses
import json
import os
import socket
import time

import pytest

from sora import protocol as p
from sora.cluster import keys as k
from sora.cluster.link import Uplink
from sora.config import ClusterConfig, FunctionConfig, load_function_config
from sora.control.plane import ControlPlane
from sora.supervisor import cli
from sora.supervisor.hosts import JoinedHosts, checked_members

KEY = "K" * 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


@pytest.fixture
def fn_config(tmp_path) -> dict:
    folder = tmp_path / "hello"
    folder.mkdir()
    (folder / "sora.yaml").write_text("name: hello\nlanguage: python\nhandler: main.handler\n")
    (folder / "main.py").write_text("def handler(event, context):\n    return 1\n")
    return dataclasses.asdict(load_function_config(str(folder)))


def remote_entry(config=None, endpoint="tcp://10.0.0.2:7001", **extra):
    entry = {"available": True, "reason": "", "maxQueued": 7, "maxWait": 2.0,
             "state": "RUNNING", "instances": 2, "inFlight": 1,
             "workers": [{"id": "hello/9", "endpoint": endpoint, "host": "h2",
                          "serverKey": None}], **extra}
    if config is not None:
        entry["config"] = config
    return entry


# --- checked_members: what a joined host cannot decide ------------------------------------------

def test_host_and_server_key_come_from_the_link_not_the_json(fn_config):
    said = remote_entry(fn_config)
    said["workers"][0].update(host="main", serverKey="X" * 40)
    checked = checked_members("h2", {"hello": said}, KEY)
    assert checked["hello"]["workers"] == [{"id": "hello/9", "endpoint": "tcp://10.0.0.2:7001",
                                            "host": "h2", "serverKey": KEY}]
    assert checked["hello"]["config"] == fn_config
    assert checked["hello"]["available"] is True


def test_only_tcp_endpoints_and_function_names_are_kept(fn_config):
    checked = checked_members("h2", {
        "hello": remote_entry(fn_config, endpoint="ipc:///srv/sora/run/control.sock"),
        "Bad Name": remote_entry(),
        "other": {"workers": [{"id": "hello/3", "endpoint": "tcp://10.0.0.2:1"}]}}, KEY)
    assert checked["hello"]["workers"] == []
    assert "Bad Name" not in checked
    assert checked["other"]["workers"] == []   # an id of another function


def test_a_config_with_fields_this_version_does_not_know_is_kept(fn_config):
    newer = {**fn_config, "someNewSetting": 3}
    checked = checked_members("h2", {"hello": remote_entry(newer)}, KEY)
    assert checked["hello"]["available"] is True and checked["hello"]["config"] == newer


def test_a_config_that_is_not_one_makes_the_function_unavailable(fn_config):
    checked = checked_members("h2", {"hello": remote_entry({"name": "hello", "x": 1}),
                                     "named": remote_entry(fn_config)}, KEY)
    assert checked["hello"]["available"] is False
    assert "from host h2 cannot be used" in checked["hello"]["reason"]
    assert "config" not in checked["hello"]
    assert checked["named"]["available"] is False   # its config names "hello"


def test_a_config_with_fields_of_the_wrong_type_makes_the_function_unavailable(fn_config):
    # Attack (issue 16): a joined host's config is its operator's, but the main host's gateways
    # compute with it (timeout * 2 + 10 s) and redact its folder from error messages.
    for field, value in (("timeout", "x"), ("memory", -1), ("maxInstances", True),
                         ("timeout", float("inf")), ("auth", 3), ("directory", "/"),
                         ("directory", "relative")):
        checked = checked_members("h2", {"hello": remote_entry({**fn_config, field: value})}, KEY)
        assert checked["hello"]["available"] is False, (field, value)
        assert field in checked["hello"]["reason"], checked["hello"]["reason"]
    assert checked_members("h2", {"hello": remote_entry(fn_config)}, KEY)["hello"]["available"]


# --- the control plane: local members (a joined host) and remote ones (the main host) ---------

@pytest.fixture
def plane(tmp_path, monkeypatch):
    monkeypatch.setattr(p, "HEARTBEAT_INTERVAL", 0.05)
    told = []
    c = ControlPlane(f"ipc://{tmp_path}/control.sock", host="h1", server_key=KEY,
                     on_local=told.append)
    yield c, told
    c.close()


def test_local_members_carry_config_load_and_server_key_of_tcp_workers(plane, fn_config):
    c, told = plane
    c.set_functions({"hello": {"maxQueued": 3, "maxWait": 4.0, "available": True,
                               "config": fn_config}})
    c.status_snapshot = {"functions": {"hello": {"state": "RUNNING"}}}
    c.register(b"hello/5", "hello", "tcp://10.0.0.1:4000", 2, time.monotonic())
    c.register(b"hello/6", "hello", "ipc:///x/w-6.sock", 1, time.monotonic())
    c.workers[b"hello/5"].held = 4
    c.publish_members()
    local = told[-1]["hello"]
    assert local["config"] == fn_config
    assert (local["state"], local["instances"], local["inFlight"]) == ("RUNNING", 3, 4)
    assert local["workers"][0] == {"id": "hello/5", "endpoint": "tcp://10.0.0.1:4000",
                                   "host": "h1", "serverKey": KEY}
    assert local["workers"][1]["serverKey"] is None   # ipc: no CURVE
    # Clients of this host are told each function's config, this host's own too (issue 17:
    # a reload's changes reach gateways and the dispatcher through MEMBERS).
    assert c.members()["functions"]["hello"]["config"] == fn_config
    assert c.members()["functions"]["hello"]["local"] is True
    # The load changing is told on the next beat; nothing changing is told once.
    count = len(told)
    c.beat(time.monotonic())
    assert len(told) == count
    c.workers[b"hello/5"].held = 0
    c.beat(time.monotonic())
    assert told[-1]["hello"]["inFlight"] == 0


def test_a_function_only_on_a_joined_host_comes_with_its_config(plane, fn_config):
    c, _ = plane
    c.set_functions({"local": {"maxQueued": 3, "maxWait": 4.0, "available": True,
                               "config": {"name": "local"}}})
    c.set_remote("h2", checked_members("h2", {"hello": remote_entry(fn_config),
                                              "local": remote_entry(fn_config)}, KEY),
                 address="10.0.0.2")
    functions = c.members()["functions"]
    assert functions["hello"]["config"] == fn_config
    assert functions["hello"]["maxQueued"] == 7
    assert functions["hello"]["workers"][0]["serverKey"] == KEY
    # The main host's own config wins.
    assert functions["local"]["config"] == {"name": "local"}
    status = json.loads(c.status_body())
    h2 = status["hosts"]["h2"]
    assert (h2["address"], h2["state"]) == ("10.0.0.2", "joined")
    assert h2["functions"]["hello"] == {"workers": 1, "instances": 2, "inFlight": 1}
    assert status["functions"]["hello"]["hosts"] == ["h2"]
    assert status["functions"]["hello"]["language"] == "python"
    assert status["hosts"]["h1"]["local"] is True
    c.drop_remote("h2")
    assert "hello" not in c.members()["functions"]
    assert json.loads(c.status_body())["hosts"]["h2"]["state"] == "lost"
    c.set_remote("h2", {}, address="10.0.0.2")   # it came back
    assert json.loads(c.status_body())["hosts"]["h2"]["state"] == "joined"


def test_a_function_unavailable_here_serves_on_the_host_that_has_workers(plane, fn_config):
    c, _ = plane
    c.set_functions({"hello": {"maxQueued": 3, "maxWait": 4.0, "available": False,
                               "reason": "setup failed"}})
    assert c.members()["functions"]["hello"]["available"] is False
    c.set_remote("h2", checked_members("h2", {"hello": remote_entry(fn_config)}, KEY))
    hello = c.members()["functions"]["hello"]
    assert hello["available"] is True and hello["maxQueued"] == 3 and "config" not in hello


# --- the main host's listener feeds the plane with the authenticated key --------------------

def test_joined_host_members_reach_the_plane_with_the_key_it_authenticated_with(
        tmp_path, fn_config):
    main = k.init_keys(str(tmp_path / "main"))
    joined = k.init_keys(str(tmp_path / "joined"))
    k.add_allowed(main.directory, os.path.join(joined.directory, k.HOST_CERT), "joined")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    hosts = JoinedHosts(ClusterConfig(name="main", keys=main.directory, listen=endpoint),
                        wake=lambda: None)
    c = ControlPlane(f"ipc://{tmp_path}/control.sock", host="main", heard=hosts.heard)
    said = remote_entry(fn_config, endpoint="tcp://127.0.0.1:4001")
    said["workers"][0]["serverKey"] = main.public_text   # a lie: not its key
    uplink = Uplink(endpoint, joined, main.public, "h2", {"hello": said})
    hosts.start()
    uplink.start()
    try:
        wait_for(lambda: (hosts.forward(c.control), c.handle_control(),
                          "hello" in c.members()["functions"])[-1])
        worker = c.members()["functions"]["hello"]["workers"][0]
        assert worker["serverKey"] == joined.public_text
        assert worker["host"] == "h2"
        assert json.loads(c.status_body())["hosts"]["h2"]["address"] == "127.0.0.1"
        uplink.stop()   # it leaves: dropped at once
        wait_for(lambda: (hosts.forward(c.control), c.handle_control(),
                          "hello" not in c.members()["functions"])[-1])
    finally:
        uplink.stop()
        hosts.stop()
        c.control.close()
        c.close()


# --- sora-supervisor join / start and cluster.controlPlane --------------------------------------

def host_config(tmp_path, cluster: str) -> str:
    folder = tmp_path / "hello"
    folder.mkdir(exist_ok=True)
    (folder / "sora.yaml").write_text("name: hello\nlanguage: python\nhandler: main.handler\n")
    (folder / "main.py").write_text("def handler(event, context):\n    return 1\n")
    path = tmp_path / "host-config.yaml"
    path.write_text(f"functionPaths: [hello]\nstateDir: {tmp_path}/state\n"
                    f"server: {{httpPort: {free_port()}}}\n{cluster}")
    return str(path)


def test_join_without_control_plane_is_a_config_error(tmp_path, capsys):
    assert cli.main(["join", "--config", host_config(tmp_path, "")]) == cli.EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert "configuration error" in err and "cluster.controlPlane: required by " \
        "`sora-supervisor join`" in err


def test_start_with_control_plane_is_a_config_error(tmp_path, capsys):
    k.init_keys(str(tmp_path / "keys"))
    main = k.init_keys(str(tmp_path / "main"))
    k.add_allowed(str(tmp_path / "keys"), os.path.join(main.directory, k.HOST_CERT), "main")
    path = host_config(tmp_path, "cluster:\n  controlPlane: tcp://127.0.0.1:7100\n"
                                 "  advertise: 127.0.0.1\n  keys: keys\n")
    assert cli.main(["start", "--config", path]) == cli.EXIT_CONFIG_ERROR
    assert "run it with `sora-supervisor join`" in capsys.readouterr().err


def test_fn_config_roundtrip(fn_config):
    from sora.config_snapshot import function_from_entry
    assert isinstance(function_from_entry(fn_config), FunctionConfig)


# --- what a joined host's arbiter tells its workers ---------------------------------------------

def test_a_joined_hosts_workers_get_tcp_and_records_arguments_they_can_parse(tmp_path):
    from sora.config import load_host_config
    from sora.supervisor.arbiter import Arbiter
    from sora.worker.main import parser
    k.init_keys(str(tmp_path / "keys"))
    main = k.init_keys(str(tmp_path / "main"))
    k.add_allowed(str(tmp_path / "keys"), os.path.join(main.directory, k.HOST_CERT), "main")
    config = load_host_config(host_config(tmp_path, "cluster:\n  controlPlane: "
                                          "tcp://10.0.0.1:7100\n  advertise: 10.0.0.2\n"
                                          "  keys: keys\n"))
    # A z85 key may begin with "-": it must not be taken for an option.
    key = b"-" + main.public[1:]
    config = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster,
                                                                     controlPlaneKey=key))
    arbiter = Arbiter(config, joining=True)
    argv = arbiter.worker_launch(config.functions[0]).argv
    args = parser().parse_args(argv[argv.index("sora.worker") + 1:])
    assert (args.advertise, args.keys) == ("10.0.0.2", str(tmp_path / "keys"))
    assert args.records_endpoint == "tcp://10.0.0.1:7101"
    assert args.records_server_key == key.decode()
    # It bounds what its tcp endpoint takes by the larger of a call's body and an event.
    assert args.max_body_bytes == max(config.server.maxBodyBytes, config.server.maxEventBytes)
    assert arbiter.services() == []   # no recorder, no dispatcher on a joined host


def test_a_joined_hosts_config_may_leave_server_out(tmp_path):
    from sora.config import ConfigError, load_host_config
    k.init_keys(str(tmp_path / "keys"))
    main = k.init_keys(str(tmp_path / "main"))
    k.add_allowed(str(tmp_path / "keys"), os.path.join(main.directory, k.HOST_CERT), "main")
    host_config(tmp_path, "")
    path = tmp_path / "joined.yaml"
    path.write_text("functionPaths: [hello]\ncluster:\n  controlPlane: tcp://10.0.0.1:7100\n"
                    "  advertise: 10.0.0.2\n  keys: keys\n")
    config = load_host_config(str(path))
    assert config.server.httpPort is None and config.server.httpsPort is None
    assert config.server.gracefulTimeout > 0
    path.write_text("functionPaths: [hello]\n")   # a main host still needs it
    with pytest.raises(ConfigError, match="server: "):
        load_host_config(str(path))
