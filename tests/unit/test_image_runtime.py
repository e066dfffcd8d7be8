"""ImageRuntime: what a Lambda image's container runs, where, and with which environment."""
from __future__ import annotations

from types import SimpleNamespace

from sora.runtimes import runtime_for
from sora.runtimes.image import ImageRuntime

IMAGE = {"Entrypoint": ["/usr/bin/python3", "-m", "awslambdaric"], "Cmd": ["app.handler"],
         "Env": ["PATH=/opt/bin:/usr/bin", "LANG=en_US.UTF-8", "A=image", "B=image",
                 "AWS_LAMBDA_FUNCTION_NAME=spoofed", "EQUALS=a=b"],
         "WorkingDir": "/srv/app"}


def fn(**fields):
    values = dict(name="img", version="$LATEST", memory=512, env={}, handler="", network=False,
                  taskRoot="/var/task", entrypoint="", directory="/fns/img",
                  isolation="container", containerized=True)
    values.update(fields)
    return SimpleNamespace(**values)


def test_registered_as_the_image_language():
    assert isinstance(runtime_for("image"), ImageRuntime)


def test_command_is_entrypoint_and_cmd_or_the_handler():
    assert ImageRuntime.container_command(fn(), IMAGE) == [
        "/usr/bin/python3", "-m", "awslambdaric", "app.handler"]
    assert ImageRuntime.container_command(fn(handler="app.other"), IMAGE) == [
        "/usr/bin/python3", "-m", "awslambdaric", "app.other"]
    # An image with no ENTRYPOINT: the handler is the whole command, as on Lambda.
    assert ImageRuntime.container_command(fn(), {"Cmd": ["/bootstrap", "x"]}) == [
        "/bootstrap", "x"]


def test_working_dir_is_the_images_else_the_task_root():
    assert ImageRuntime.working_dir(fn(), IMAGE) == "/srv/app"
    assert ImageRuntime.working_dir(fn(taskRoot="/code"), {"WorkingDir": ""}) == "/code"


def test_environment_tiers():
    env = ImageRuntime().container_environment(
        fn(env={"B": "function", "LAMBDA_TASK_ROOT": "/elsewhere"}), IMAGE, "127.0.0.1:9001",
        log_stream="2026/12/07/[$LATEST]abc")
    assert env["PATH"] == "/opt/bin:/usr/bin"                # the image's
    assert env["LANG"] == "en_US.UTF-8"                      # the image's over Sora's default
    assert env["A"] == "image" and env["B"] == "function"     # the function's over the image's
    assert env["EQUALS"] == "a=b"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "img"          # reserved: neither may change it
    assert env["LAMBDA_TASK_ROOT"] == "/var/task"
    assert env["LAMBDA_RUNTIME_DIR"] == "/var/runtime"
    assert env["AWS_LAMBDA_RUNTIME_API"] == "127.0.0.1:9001"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "512"
    assert env["AWS_LAMBDA_LOG_STREAM_NAME"] == "2026/12/07/[$LATEST]abc"
    assert env["_HANDLER"] == "app.handler"
    assert env["TZ"] == ":UTC" and env["AWS_REGION"] == "us-east-1"
    assert "HOME" not in env and not [k for k in env if k.startswith("SORA_")]
    assert ImageRuntime().container_environment(fn(handler="app.other"), IMAGE,
                                                "x:1")["_HANDLER"] == "app.other"


def test_runtime_api_address_by_network():
    assert ImageRuntime.api_listener_before(fn()) is None
    sock = ImageRuntime.api_listener_before(fn(network=True))
    try:
        address = ImageRuntime.runtime_api_address(sock)
        assert address.startswith("127.0.0.1:") and address != "127.0.0.1:9001"
    finally:
        sock.close()
    assert ImageRuntime.runtime_api_address(None) == "127.0.0.1:9001"


def test_adapter_environment_names_the_container():
    env = ImageRuntime().environment(fn())
    assert env["SORA_CONTAINER_NETWORK"] == "none"
    assert ImageRuntime().environment(fn(network=True))["SORA_CONTAINER_NETWORK"] == "host"
    assert ImageRuntime.adapter_environment(5, 1234, 6, 7, 8) == {
        "SORA_API_LISTEN_FD": "5", "SORA_CONTAINER_PID": "1234", "SORA_CONTAINER_PIDFD": "6",
        "SORA_CONTAINER_STDOUT_FD": "7", "SORA_CONTAINER_STDERR_FD": "8"}


def test_a_working_dir_under_proc_or_not_plain_is_the_task_root():
    """The image is not trusted: /proc/self/fd/N as WORKDIR is runc's CVE-2024-21626 shape."""
    for bad in ("/proc/self/fd/7", "/sys/x", "/dev/shm", "relative", "/a/../proc", "/a//b"):
        assert ImageRuntime.working_dir(fn(), {"WorkingDir": bad}) == "/var/task", bad
    for good in ("/srv/app", "/", "/srv/app/"):
        assert ImageRuntime.working_dir(fn(), {"WorkingDir": good}) == good
