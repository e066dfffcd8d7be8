"""Lambda container images (`package: image`, issue 20 point 2), end to end over HTTP.

D's images (tests/images) run unchanged: `sora-test/node-ric` (aws-lambda-ric 3.3.0 as
ENTRYPOINT, CMD index.handler) and `sora-test/python-ric` (awslambdaric, CMD app.handler), and
an image built here FROM the Python one as a user builds a Lambda image (a module and an ENV of
its own). The Runtime API each runtime talks to is Sora's (`runtime_api.py` in container mode,
beside the container); the containers have no network unless `network: true`.
"""
from __future__ import annotations

import json
import time

import psutil

import pytest

from tests.images.build import NODE_RIC, PYTHON_RIC, build_from_texts, ensure_image
from tests.support import json_of, served, wait_for, write_function

pytestmark = pytest.mark.integration

USER_DOCKERFILE = """\
ARG BASE
FROM ${BASE}
ENV IMAGE_VAR=from-image SHARED_VAR=from-image
COPY probe.py ./
CMD ["probe.handler"]
"""
# What a user's (or an attacker's) handler does, by the query string.
PROBE = r'''
import os, socket, time

def connect(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError as exc:
        return {"connected": False, "error": type(exc).__name__}
    s.sendall(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(2)
    try:
        status = s.recv(4096).split(b"\r\n")[0].decode()
    except OSError as exc:
        status = type(exc).__name__
    return {"connected": True, "status": status}

def handler(event, context):
    q = event.get("queryStringParameters") or {}
    if "sleep" in q:
        time.sleep(float(q["sleep"]))
    if "connect" in q:
        return connect(int(q["connect"]))
    if "exit" in q:
        os._exit(int(q["exit"]))
    if "mb" in q:
        held = [bytearray(1 << 20) for _ in range(int(q["mb"]))]
        for block in held:
            block[::4096] = b"x" * len(block[::4096])   # touched: really resident
        return {"held": len(held)}
    return {"env": dict(os.environ), "uid": os.getuid(), "cwd": os.getcwd(),
            "stream": context.log_stream_name,
            "engine": [p for p in ("/var/run/docker.sock", "/run/docker.sock")
                       if os.path.exists(p)]}
'''
NO_CODE = {"language": None, "entrypoint": None, "handler": None}


def build_user_image(client, base: str, tag: str) -> str:
    return build_from_texts(client, tag, {"Dockerfile": USER_DOCKERFILE, "probe.py": PROBE},
                            {"BASE": base})


@pytest.fixture(scope="module")
def host(tmp_path_factory, docker_engine):
    client = docker_engine.client
    node, python = ensure_image(client, NODE_RIC), ensure_image(client, PYTHON_RIC)
    base = tmp_path_factory.mktemp("images")
    user = build_user_image(client, python, f"sora-test/c-user-image:{base.name.lower()}")
    fns = base / "fns"

    def image_fn(name, image, **config):
        config = {**NO_CODE, "network": False, **config}
        return write_function(fns, name, {}, name=name, package="image", image=image, **config)
    dirs = [
        image_fn("inode", node),
        image_fn("ipy", python),
        image_fn("inode-other", node, handler="index.other"),
        image_fn("ipy-other", python, handler="app.other"),
        image_fn("inode-fails", node, handler="index.fails"),
        image_fn("ipy-fails", python, handler="app.fails"),
        image_fn("inode-crash", node, handler="index.crashes"),
        image_fn("iuser", user, timeout=2, env={"SHARED_VAR": "from-sora-yaml",
                                                  "LAMBDA_TASK_ROOT": "/elsewhere"}),
        image_fn("ihost-a", user, network=True),
        image_fn("ihost-b", user, network=True),
        image_fn("iidle", python, minInstances=0, idleTimeout=2),
        image_fn("ikill", node),
        image_fn("ioom", user, memory=96),
    ]
    server = {}
    if docker_engine.socket != "/var/run/docker.sock":
        server["docker"] = {"socket": docker_engine.socket}
    gen = served(base, dirs, https=False, server=server, extra={"prestartedRuntimes": 1})
    sora = next(gen)
    sora.engine = docker_engine
    yield sora
    next(gen, None)
    left = [c.name for c in client.containers.list(all=True, filters={"label": "sora.function"})
            if c.labels.get("sora.function", "").startswith("i")
            and c.image.tags and c.image.tags[0].split(":")[0] in (NODE_RIC, PYTHON_RIC)
            and c.labels.get("sora.function") in {d.name for d in dirs}]
    client.images.remove(user, force=True)
    assert left == [], f"containers left after the host stopped: {left}"


def call(host, name, **params):
    r = host.invoke(name, params=params)
    return r, json_of(r)


@pytest.mark.parametrize("name,message,handler", [
    ("inode", "hello from aws-lambda-ric", "index.handler"),
    ("ipy", "hello from awslambdaric", "app.handler")])
def test_answers_over_http_with_the_handler_from_cmd(host, name, message, handler):
    r, body = call(host, name, q="1")
    assert r.status_code == 200, r.text
    assert body["message"] == message and body["handler"] == handler
    assert body["functionName"] == name and body["taskRoot"] == "/var/task"
    assert body["uid"] != 0
    assert body["event"]["queryStringParameters"] == {"q": "1"}
    assert body["requestId"] == r.headers["X-Sora-Request-Id"]
    # Warm: the same container answers again, and the records say which call was cold.
    second = host.invoke(name)
    assert second.status_code == 200
    assert host.record(second.headers["X-Sora-Request-Id"])["cold"] is False
    # Its Runtime API adapter (on the host, reading the function's HTTP) is not root: it runs
    # as the container's own uid.
    adapters = adapters_of(name)
    assert adapters
    assert {psutil.Process(pid).uids().effective for pid in adapters} == {body["uid"]}


@pytest.mark.parametrize("name", ["inode-other", "ipy-other"])
def test_handler_in_sora_yaml_replaces_cmd(host, name):
    r, body = call(host, name)
    assert r.status_code == 200, r.text
    assert body["message"] == "the other handler"


@pytest.mark.parametrize("name", ["inode-fails", "ipy-fails"])
def test_a_thrown_error_comes_back_typed_as_lambda_types_it(host, name):
    r, body = call(host, name)
    assert r.status_code == 502, r.text
    assert body["errorType"] == "CustomError"
    assert body["errorMessage"] == "it failed on purpose"
    # The instance lives on: an error is an answer, not a crash.
    assert host.invoke(name).status_code == 502


def test_a_crash_of_the_ric_answers_502_and_is_replaced(host):
    r, body = call(host, "inode-crash")
    assert r.status_code == 502, r.text
    assert body["errorType"] == "Sora.RuntimeExited"
    assert "exit status 3" in body["errorMessage"]
    assert call(host, "inode-crash")[0].status_code == 502   # a new container, the same fate


def test_timeout_kills_and_replaces_the_container(host):
    before = call(host, "iuser")[1]["stream"]
    r, body = call(host, "iuser", sleep="10")
    assert r.status_code == 504, r.text
    assert body["errorType"] == "Sora.Timeout"
    r, after = call(host, "iuser")
    assert r.status_code == 200 and after["stream"] != before


def test_lambda_environment_inside_and_the_image_env_kept(host):
    r, body = call(host, "iuser")
    assert r.status_code == 200, r.text
    env = body["env"]
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "iuser"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/iuser"
    assert env["AWS_LAMBDA_LOG_STREAM_NAME"] == body["stream"]
    assert env["AWS_LAMBDA_RUNTIME_API"] == "127.0.0.1:9001"
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["LAMBDA_TASK_ROOT"] == "/var/task"        # not the function's env's
    assert env["LAMBDA_RUNTIME_DIR"] == "/var/runtime"
    assert env["_HANDLER"] == "probe.handler"
    assert env["IMAGE_VAR"] == "from-image"              # the image's ENV is kept...
    assert env["SHARED_VAR"] == "from-sora-yaml"         # ...unless the function's env says
    assert env["PATH"].startswith("/usr/local/sbin")     # the image's PATH, not the host's
    assert not [k for k in env if k.startswith("SORA_") or k == "DOCKER_HOST"]
    assert body["cwd"] == "/var/task"                    # the image's WorkingDir


def test_attacker_reaches_no_engine_no_gateway_no_other_runtime_api(host):
    """A handler looking for a way out: no engine socket in its container; with no network,
    nothing of the host's loopback (Sora's gateway port, the engine's TCP ports); with the
    host's network, another instance's Runtime API refuses it (403): only that instance's
    own processes are served."""
    body = call(host, "iuser")[1]
    assert body["engine"] == []
    gateway_port = int(host.url.rsplit(":", 1)[1].split("/")[0])
    for port in (gateway_port, 2375):
        assert call(host, "iuser", connect=str(port))[1] == {
            "connected": False, "error": "ConnectionRefusedError"}
    victim = call(host, "ihost-b")[1]["env"]["AWS_LAMBDA_RUNTIME_API"]
    port = int(victim.split(":")[1])
    assert port != 9001
    attempt = call(host, "ihost-a", connect=str(port))[1]
    assert attempt["connected"] is True and " 403 " in attempt["status"], attempt
    assert call(host, "ihost-b")[0].status_code == 200   # the victim is untouched


def test_no_container_left_after_instances_end(host):
    """Killed and crashed instances' containers are removed (by the worker's thread)."""
    def dead():
        return [c.name for c in host.engine.client.containers.list(
            all=True, filters={"label": "sora.function"})
            if c.labels["sora.function"] in ("inode-crash", "iuser") and c.status != "running"]
    wait_for(lambda: dead() == [], timeout=20, what="dead containers removed")


def test_cold_start_timing(host):
    """Not an assertion of speed: the figures, for the note (a cold call after the worker
    started its pre-started container, and warm calls)."""
    started = time.monotonic()
    r = host.invoke("ipy-other")
    first = time.monotonic() - started
    warm = []
    for _ in range(20):
        started = time.monotonic()
        assert host.invoke("ipy-other").status_code == 200
        warm.append(time.monotonic() - started)
    warm.sort()
    print(f"ipy-other: call {first * 1000:.1f} ms, warm p50 {warm[10] * 1000:.1f} ms "
          f"(record {json.dumps(host.record(r.headers['X-Sora-Request-Id']).get('cold'))})")


def adapters_of(function: str) -> list[int]:
    """The Runtime API adapters serving `function` (by their environment)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(a.endswith("runtime_api.py") for a in proc.info["cmdline"] or []) and \
                    proc.environ().get("AWS_LAMBDA_FUNCTION_NAME") == function:
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def running_containers(host, function: str) -> list[str]:
    return [c.name for c in host.engine.client.containers.list(
        filters={"label": f"sora.function={function}"})]


def test_scale_to_zero_then_a_cold_call_starts_one_again(host):
    assert host.invoke("iidle").status_code == 200
    wait_for(lambda: host.function_state("iidle")["instances"] == 0, timeout=20,
             what="iidle scaled to zero")
    # Its adapter is gone with its instance (the pre-started container waits, no adapter).
    wait_for(lambda: adapters_of("iidle") == [], timeout=10, what="no adapter left")
    r = host.invoke("iidle")
    assert r.status_code == 200, r.text
    record = host.record(r.headers["X-Sora-Request-Id"])
    assert record["cold"] is True


def test_kill9_of_the_worker_leaves_no_adapter_and_no_container(host):
    assert host.invoke("ikill").status_code == 200
    before = set(running_containers(host, "ikill"))
    old_adapters = adapters_of("ikill")
    assert before and old_adapters
    host.kill_worker("ikill")
    # The adapters die with the worker (their death signal); the engine's containers of the
    # dead worker are swept by the supervisor.
    wait_for(lambda: not set(old_adapters) & set(adapters_of("ikill")), timeout=10,
             what="the dead worker's adapters gone")
    wait_for(lambda: not before & set(running_containers(host, "ikill")), timeout=30,
             what="the dead worker's containers removed")
    assert host.invoke("ikill").status_code == 200


def test_memory_past_the_limit_is_out_of_memory_and_the_next_call_works(host):
    before = call(host, "ioom")[1]["stream"]
    r, body = call(host, "ioom", mb="200")
    assert r.status_code == 502, r.text
    assert body["errorType"] == "Sora.OutOfMemory" and "96 MB" in body["errorMessage"]
    r, after = call(host, "ioom")
    assert r.status_code == 200 and after["stream"] != before
