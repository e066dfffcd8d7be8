"""The Runtime API adapter in container mode, with a real container (below the worker).

A Lambda container image whose ENTRYPOINT is a runtime interface client (here a stand-in in a
few lines of Python, tests/host_usr_image.py) runs unchanged against `runtime_api.py`: the
container is started by hand as the worker starts it (tests/container_adapter.py)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from sora.containers import run_once
from tests import host_usr_image
from tests.container_adapter import AdapterInstance, Fn


@pytest.fixture(scope="module")
def engine(docker_engine):
    client = docker_engine.client
    host_usr_image.ensure_ric(client)
    yield client


@pytest.fixture
def instance(engine):
    made = []

    def start(**fields):
        made.append(AdapterInstance(engine, host_usr_image.RIC_IMAGE, Fn(**fields),
                                    volumes=host_usr_image.binds()))
        return made[-1]
    yield start
    for one in made:
        one.close()


def answer(line: bytes) -> tuple[str, str, dict]:
    kind, request_id, body = line.split(b" ", 2)
    return kind.decode(), request_id.decode(), json.loads(body)


@pytest.mark.parametrize("network", [False, True])
def test_answers_with_the_handler_from_cmd(instance, network):
    one = instance(network=network)
    assert one.control_line() == b"READY"
    kind, request_id, body = answer(one.invoke({"who": "test"}, "req-1"))
    assert (kind, request_id) == ("R", "req-1")
    assert body == {"handler": "handler", "event": {"who": "test"}}
    # The invocation's lines come before its end marker, on both streams.
    out = one.output("stdout", b"\0SORA-END req-1\n")
    assert out == b"hello from test\n\0SORA-END req-1\n"
    err = one.output("stderr", b"\0SORA-END req-1\n")
    assert err == b"to stderr\n\0SORA-END req-1\n"
    # Warm: the same container answers again.
    assert answer(one.invoke({"who": "again"}, "req-2"))[:2] == ("R", "req-2")


def test_handler_from_sora_yaml_replaces_cmd(instance):
    one = instance(handler="app.other")
    assert one.control_line() == b"READY"
    assert answer(one.invoke({}))[2] == {"handler": "other"}


def test_error_typed_as_the_runtime_reports_it(instance):
    one = instance(handler="app.fails")
    one.control_line()
    kind, _, error = answer(one.invoke({}))
    assert kind == "E"
    assert error["errorType"] == "ValueError"
    assert error["errorMessage"] == "bad input"


def test_crash_ends_the_adapter(instance):
    one = instance(handler="app.crash")
    one.control_line()
    assert one.invoke({}) is None        # the control pipe closed: the instance is gone
    assert one.adapter.wait(10) == 1


def test_lambda_environment_inside(instance):
    one = instance(handler="app.env", name="imgenv",
                   env={"IMAGE_VAR_2": "fn", "LANG": "C.UTF-8", "LAMBDA_TASK_ROOT": "/evil"})
    one.control_line()
    env = answer(one.invoke({}))[2]
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "imgenv"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert env["AWS_LAMBDA_RUNTIME_API"] == "127.0.0.1:9001"
    assert env["LAMBDA_TASK_ROOT"] == "/var/task"        # reserved: the function cannot move it
    assert env["LAMBDA_RUNTIME_DIR"] == "/var/runtime"
    assert env["_HANDLER"] == "app.env"
    assert env["AWS_REGION"] == "us-east-1"
    assert env["IMAGE_VAR"] == "from-image"               # the image's ENV is kept
    assert env["PATH"] == "/usr/bin:/bin"                 # the image's, not the host's
    assert env["LANG"] == "C.UTF-8"                       # the function's env overrides it
    assert env["IMAGE_VAR_2"] == "fn"
    assert not any(k.startswith("SORA_") for k in env)


def test_no_network_instances_cannot_reach_each_other(instance):
    """Each instance's Runtime API is in its own container's network namespace, and a container
    with no network reaches nothing of the host's loopback: not another instance's API (each
    has its own namespace), not a port of the host."""
    a = instance(handler="app.connect")
    b = instance()
    a.control_line(), b.control_line()
    assert os.readlink(f"/proc/{a.init_pid}/ns/net") != os.readlink(f"/proc/{b.init_pid}/ns/net")
    with socket.create_server(("127.0.0.1", 0)) as host_port:
        kind, _, outcome = answer(a.invoke({"port": host_port.getsockname()[1]}))
    assert (kind, outcome) == ("R", "ConnectionRefusedError")


def test_host_network_peer_check(instance):
    """On the host's network any process can reach the port: only the container's processes
    are served; another instance's (its handler connects) and the host's get 403."""
    a = instance(network=True, handler="app.connect")
    b = instance(network=True)
    a.control_line(), b.control_line()
    port_b = int(b.listener_address.split(":")[1])
    kind, _, status = answer(a.invoke({"port": port_b}))
    assert kind == "R" and " 403 " in status
    with socket.create_connection(("127.0.0.1", port_b), timeout=5) as s:
        s.sendall(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 403 " in s.recv(4096).split(b"\r\n")[0]
    # b still serves its own.
    assert answer(b.invoke({"who": "b"}))[0] == "R"


def test_engine_socket_not_in_the_container(instance):
    one = instance(handler="app.engine")
    one.control_line()
    assert answer(one.invoke({}))[2] == []


def test_worker_done_ends_the_container(instance):
    """The worker closes the adapter's stdin when it is done with the instance: the adapter
    kills the container through its init's pidfd, and exits once the init has."""
    one = instance()
    one.control_line()
    one.adapter.stdin.close()
    assert one.adapter.wait(10) == 1
    assert one.container.wait(timeout=10)["StatusCode"] == 137   # SIGKILL


def test_adapter_runs_as_the_containers_uid(instance):
    """The worker is root; the adapter, which parses HTTP from the function's code, is not."""
    import psutil
    for network in (False, True):
        one = instance(network=network)
        assert one.control_line() == b"READY"
        adapter = psutil.Process(one.adapter.pid)
        assert adapter.uids().real == adapter.uids().effective == 65534
        assert adapter.gids().effective == 65534
        # And it still serves (and, on the host's network, still tells its peers apart).
        assert answer(one.invoke({"who": "x"}))[0] == "R"



def test_a_setup_command_runs_itself_not_as_arguments_of_the_images_entrypoint(engine,
                                                                               docker_engine):
    """A Lambda image's ENTRYPOINT is its runtime interface client: a setup command in a
    container of it must run the command (entrypoint reset), within a memory limit."""
    spec = {"socket": docker_engine.socket, "image": host_usr_image.RIC_IMAGE,
            "command": ["/bin/sh", "-c", "echo ran-the-command; "
                        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
                        "/sys/fs/cgroup/memory.max 2>/dev/null; true"],
            "user": "65534:65534", "working_dir": "/tmp", "environment": {},
            "mounts": [{"source": "/usr", "target": "/usr", "read_only": True}],
            "tmpfs": {"/tmp": "size=16m,mode=1777"}, "network_mode": "none",
            "memory_mb": 300, "labels": {"sora.host": "test-run-once", "sora.role": "setup"}}
    out = subprocess.run([sys.executable, "-I", "-m", "sora.containers.run_once"],
                         env={"PATH": "/usr/bin:/bin", run_once.SPEC_ENV: json.dumps(spec)},
                         capture_output=True, timeout=120)
    text = out.stdout.decode()
    assert out.returncode == 0, text + out.stderr.decode()
    assert "ran-the-command" in text
    assert str(300 * 1024 * 1024) in text
    assert not engine.containers.list(all=True, filters={"label": "sora.host=test-run-once"})
