"""The Lambda container images the tests build (tests/images/build.py): `sora-test/node-ric`
and `sora-test/python-ric`, `FROM` the bases made on this machine with AWS's runtime interface
clients as ENTRYPOINT and the handler as CMD. Each is run here against a minimal Runtime API of
the test's own (not Sora's: that is the image tests' job), so these tests say the images are
real Lambda images whatever Sora does with them."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.images.build import NODE_RIC, PYTHON_RIC, ensure_image

pytestmark = pytest.mark.integration
LABELS = {"sora-test": "ric-images"}
REQUEST_ID = "8476a536-e9f4-11e8-9739-2dfe598c3fcd"
CLIENTS = {
    NODE_RIC: (["/usr/bin/node", "/var/runtime/node_modules/aws-lambda-ric/bin/index.mjs"],
               ["index.handler"]),
    PYTHON_RIC: (["/usr/bin/python3", "-m", "awslambdaric"], ["app.handler"]),
}


@pytest.mark.parametrize("name", [NODE_RIC, PYTHON_RIC])
def test_image_is_a_lambda_container_image(docker_engine, name):
    ref = ensure_image(docker_engine.client, name)
    config = docker_engine.client.images.get(ref).attrs["Config"]
    entrypoint, cmd = CLIENTS[name]
    assert (config["Entrypoint"], config["Cmd"]) == (entrypoint, cmd)
    assert config["WorkingDir"] == "/var/task"


@pytest.mark.parametrize("name, says", [
    # The Node.js client, given no Runtime API, fails at its first call to it.
    (NODE_RIC, "Executing 'index.handler' in function directory '/var/task'"),
    # The Python client reads AWS_LAMBDA_RUNTIME_API first thing.
    (PYTHON_RIC, "AWS_LAMBDA_RUNTIME_API"),
])
def test_client_starts_and_wants_a_runtime_api(docker_engine, name, says):
    ref = ensure_image(docker_engine.client, name)
    container = docker_engine.client.containers.run(
        ref, detach=True, network_mode="none", read_only=True, user="4242:4242",
        labels=LABELS)
    try:
        status = container.wait(timeout=60)
        output = container.logs(stdout=True, stderr=True).decode(errors="replace")
    finally:
        container.remove(force=True)
    assert status["StatusCode"] != 0, output
    assert says in output, output


class RuntimeApi:
    """A Runtime API that hands out one invocation and keeps what the client answers; the
    client's next `next` waits until the test ends (as Lambda's does between calls)."""

    def __init__(self, event: dict):
        self.event = json.dumps(event).encode()
        self.answered = threading.Event()
        self.answer: tuple[str, bytes] | None = None
        self.done = threading.Event()
        self.handed = False
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if not self.path.endswith("/runtime/invocation/next"):
                    return self._reply(404, b"{}")
                if api.handed:
                    api.done.wait(60)
                    return self._reply(500, b"{}")
                api.handed = True
                self.send_response(200)
                deadline = int(time.time() * 1000) + 30_000
                for header, value in (
                        ("Lambda-Runtime-Aws-Request-Id", REQUEST_ID),
                        ("Lambda-Runtime-Deadline-Ms", str(deadline)),
                        ("Lambda-Runtime-Invoked-Function-Arn",
                         "arn:aws:lambda:us-east-1:000000000000:function:ric"),
                        ("Lambda-Runtime-Trace-Id", "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700"),
                        ("Content-Type", "application/json"),
                        ("Content-Length", str(len(api.event)))):
                    self.send_header(header, value)
                self.end_headers()
                self.wfile.write(api.event)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                api.answer = (self.path, body)
                api.answered.set()
                self._reply(202, b'{"status":"OK"}')

            def _reply(self, status, body):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.done.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("name, handler, expected", [
    (NODE_RIC, None, {"message": "hello from aws-lambda-ric", "handler": "index.handler",
                      "requestId": REQUEST_ID, "taskRoot": "/var/task", "uid": 4242}),
    (NODE_RIC, "index.other", {"message": "the other handler"}),
    (PYTHON_RIC, None, {"message": "hello from awslambdaric", "handler": "app.handler",
                        "requestId": REQUEST_ID, "taskRoot": "/var/task", "uid": 4242}),
    (PYTHON_RIC, "app.other", {"message": "the other handler"}),
])
def test_client_serves_an_invocation(docker_engine, name, handler, expected):
    """The image's ENTRYPOINT + CMD (or a handler given as the command, as `handler:` in
    sora.yaml does) answer an invocation through the Runtime API."""
    ref = ensure_image(docker_engine.client, name)
    api = RuntimeApi({"hello": "image"})
    container = None
    try:
        container = docker_engine.client.containers.run(
            ref, [handler] if handler else None, detach=True,
            # The host's network, only so the client reaches the test's loopback server.
            network_mode="host", read_only=True, user="4242:4242", cap_drop=["ALL"],
            security_opt=["no-new-privileges"], tmpfs={"/tmp": "size=16m,mode=1777"},
            environment={"AWS_LAMBDA_RUNTIME_API": api.address, "LAMBDA_TASK_ROOT": "/var/task",
                         "_HANDLER": handler or CLIENTS[name][1][0],
                         "AWS_LAMBDA_FUNCTION_NAME": "ric", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                         "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128"},
            labels=LABELS)
        if not api.answered.wait(60):
            pytest.fail(f"no answer; the container said:\n{container.logs().decode()}")
        path, body = api.answer
        assert path == f"/2018-06-01/runtime/invocation/{REQUEST_ID}/response", body
        result = json.loads(body)
        assert {k: result.get(k) for k in expected} == expected
        assert result.get("event", {"hello": "image"}) == {"hello": "image"}
    finally:
        api.close()
        if container is not None:
            container.remove(force=True)
