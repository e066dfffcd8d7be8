"""The Runtime API adapter with AWS's runtime interface clients, unchanged, below the worker.

D's images (tests/images): `sora-test/node-ric` (aws-lambda-ric 3.3.0, CMD index.handler) and
`sora-test/python-ric` (awslambdaric, CMD app.handler), and one more built here FROM the Python
one as a user builds a Lambda image (a module of its own, an ENV of its own). Each instance is
started as the worker starts it (tests/container_adapter.py): its container with no network
and no capability, the Runtime API adapter (`runtime_api.py` in container mode) on the host.
"""
from __future__ import annotations

import json
import os
import socket
import time

import pytest

from tests.container_adapter import AdapterInstance, Fn
from tests.images.build import NODE_RIC, PYTHON_RIC, build_from_texts, ensure_image

# A user's image FROM the Python RIC image: its own module and ENV, the CMD unchanged.
USER_DOCKERFILE = """\
ARG BASE
FROM ${BASE}
ENV IMAGE_VAR=from-image SHARED_VAR=from-image
COPY probe.py ./
"""
PROBE = r'''
import os, socket
def env(event, context):
    return dict(os.environ)
def engine(event, context):
    """What an attacker's handler would try: the engine's socket, and the host's ports."""
    found = [p for p in ("/var/run/docker.sock", "/run/docker.sock") if os.path.exists(p)]
    reached = []
    for port in event.get("ports", []):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            reached.append(port)
        except OSError:
            pass
    return {"sockets": found, "reached": reached}
'''


@pytest.fixture(scope="module")
def images(docker_engine):
    client = docker_engine.client
    refs = {"node": ensure_image(client, NODE_RIC), "python": ensure_image(client, PYTHON_RIC)}
    user_ref = build_from_texts(client, f"sora-test/c-user-image:{os.getpid()}",
                                {"Dockerfile": USER_DOCKERFILE, "probe.py": PROBE},
                                {"BASE": refs["python"]})
    refs["user"] = user_ref
    yield refs
    client.images.remove(user_ref, force=True)


@pytest.fixture
def instance(docker_engine, images):
    made = []

    def start(kind, **fields):
        made.append(AdapterInstance(docker_engine.client, images[kind], Fn(**fields)))
        return made[-1]
    yield start
    for one in made:
        one.close()


def answer(line: bytes) -> tuple[str, str, object]:
    kind, request_id, body = line.split(b" ", 2)
    return kind.decode(), request_id.decode(), json.loads(body)


RICS = {"node": ("index", "hello from aws-lambda-ric"),
        "python": ("app", "hello from awslambdaric")}


@pytest.mark.parametrize("kind", ["node", "python"])
def test_handler_from_cmd(instance, kind):
    module, message = RICS[kind]
    one = instance(kind, name=f"ric-{kind}")
    started = time.monotonic()
    assert one.control_line(30) == b"READY"
    cold = time.monotonic() - started
    kind_, request_id, body = answer(one.invoke({"n": 1}, "req-cmd-1"))
    assert (kind_, request_id) == ("R", "req-cmd-1")
    assert body["message"] == message
    assert body["handler"] == f"{module}.handler"
    assert body["requestId"] == "req-cmd-1"
    assert body["functionName"] == f"ric-{kind}"
    assert int(body["memoryLimitInMB"]) == 256
    assert 0 < body["remainingMs"] <= 10000
    assert body["taskRoot"] == "/var/task"
    assert body["uid"] == 65534
    assert body["event"] == {"n": 1}
    # Warm: the same container, its RIC already connected.
    started = time.monotonic()
    assert answer(one.invoke({"n": 2}))[2]["event"] == {"n": 2}
    warm = time.monotonic() - started
    print(f"{kind}: READY {cold * 1000:.0f} ms after start, warm call {warm * 1000:.1f} ms")


@pytest.mark.parametrize("kind", ["node", "python"])
def test_handler_from_sora_yaml(instance, kind):
    module, _ = RICS[kind]
    one = instance(kind, handler=f"{module}.other")
    assert one.control_line(30) == b"READY"
    assert answer(one.invoke({"x": 1}))[2] == {"message": "the other handler", "event": {"x": 1}}


@pytest.mark.parametrize("kind", ["node", "python"])
def test_error_typed_as_lambda_types_it(instance, kind):
    module, _ = RICS[kind]
    one = instance(kind, handler=f"{module}.fails")
    one.control_line(30)
    kind_, _, error = answer(one.invoke({}))
    assert kind_ == "E"
    assert error["errorType"] == "CustomError"
    assert error["errorMessage"] == "it failed on purpose"
    assert isinstance(error["stackTrace"], list)


@pytest.mark.parametrize("kind", ["node", "python"])
def test_logs_before_their_end_marker(instance, kind):
    module, _ = RICS[kind]
    one = instance(kind, handler=f"{module}.logs")
    one.control_line(30)
    assert answer(one.invoke({}, "req-logs"))[:2] == ("R", "req-logs")
    out = one.output("stdout", b"\0SORA-END req-logs\n")
    err = one.output("stderr", b"\0SORA-END req-logs\n")
    out, err = out.split(b"\0SORA-END")[0], err.split(b"\0SORA-END")[0]
    assert b"a line on stdout" in out
    if kind == "node":
        # aws-lambda-ric writes every console method to stdout, in Lambda's log format
        # (time, request id, level, message), as it does on Lambda.
        assert b"\tERROR\ta line on stderr" in out
        assert b"\treq-logs\tINFO\ta line on stdout" in out
    else:
        assert b"a line on stderr" in err


@pytest.mark.parametrize("kind", ["node", "python"])
def test_crash_of_the_ric_ends_the_instance(instance, kind):
    module, _ = RICS[kind]
    one = instance(kind, handler=f"{module}.crashes")
    one.control_line(30)
    assert one.invoke({}) is None          # control closed without an answer: a crash (502)
    assert one.adapter.wait(10) == 1
    assert one.container.wait(timeout=10)["StatusCode"] == 3


def test_lambda_environment_and_the_image_env(instance):
    one = instance("user", name="imgenv", handler="probe.env",
                   env={"SHARED_VAR": "from-sora-yaml", "LAMBDA_TASK_ROOT": "/elsewhere"})
    one.control_line(30)
    env = answer(one.invoke({}))[2]
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "imgenv"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/imgenv"
    assert env["AWS_LAMBDA_RUNTIME_API"] == "127.0.0.1:9001"
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["LAMBDA_TASK_ROOT"] == "/var/task"
    assert env["LAMBDA_RUNTIME_DIR"] == "/var/runtime"
    assert env["_HANDLER"] == "probe.env"
    assert env["TZ"] == ":UTC"
    assert env["IMAGE_VAR"] == "from-image"                # the image's ENV is kept...
    assert env["SHARED_VAR"] == "from-sora-yaml"           # ...unless the function's env says
    assert env["PATH"].startswith("/usr/local/sbin")       # the image's PATH, not the host's
    assert not [k for k in env if k.startswith("SORA_")]


def test_attacker_reaches_neither_the_engine_nor_other_instances(instance):
    """A handler that looks for the engine's socket and for the Runtime API of another instance
    (each instance's is 127.0.0.1:9001 of its own container) and for the host's ports: none
    is there. Its container has no network: its loopback is its own."""
    victim = instance("python")
    attacker = instance("user", handler="probe.engine")
    victim.control_line(30), attacker.control_line(30)
    with socket.create_server(("127.0.0.1", 0)) as host_port:
        found = answer(attacker.invoke({"ports": [host_port.getsockname()[1], 2375, 2376]}))[2]
    assert found == {"sockets": [], "reached": []}
    assert os.readlink(f"/proc/{victim.init_pid}/ns/net") != \
        os.readlink(f"/proc/{attacker.init_pid}/ns/net")
    # The victim is untouched.
    assert answer(victim.invoke({"v": 1}))[2]["event"] == {"v": 1}
