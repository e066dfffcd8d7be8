"""A test image that is almost nothing: the host's /usr is bound read-only into its containers.

For tests of the pieces around a container (the Runtime API listener, the adapter) that need a
real container with a shell and a Python, without building a root file system: the image holds
only the merged-/usr links (bin -> usr/bin, lib -> usr/lib, ...) and empty mount points, and
every container of it binds the host's /usr. The images with their own root file system and the
runtime interface clients are tests/images (built by `ensure_image`).
"""
from __future__ import annotations

import io
import tarfile

IMAGE = "sora-test/host-usr:1"
LINKS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
FOLDERS = ("usr", "tmp", "etc", "proc", "sys", "dev", "run", "var/task")


def _tar() -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for name in FOLDERS:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        for name, target in LINKS.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return data.getvalue()


def ensure(client) -> str:
    """The image's name, imported into the engine if it is not there yet."""
    import docker
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        repository, tag = IMAGE.split(":")
        client.api.import_image_from_data(_tar(), repository=repository, tag=tag)
    return IMAGE


RIC_IMAGE = "sora-test/host-usr-ric:2"
# A runtime interface client in a few lines of Python's standard library, as a stand-in for
# awslambdaric where that image is not built: it speaks the Runtime API as the real ones do
# (a kept-alive connection, the error type in Lambda-Runtime-Function-Error-Type).
FAKE_RIC = r'''
import http.client, importlib, json, os, sys, traceback
sys.path.insert(0, os.environ.get("LAMBDA_TASK_ROOT", "/var/task"))
module, _, name = sys.argv[1].rpartition(".")
handler = getattr(importlib.import_module(module), name)
host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
api = http.client.HTTPConnection(host, int(port))
base = "/2018-06-01/runtime/invocation/"
while True:
    api.request("GET", base + "next")
    answer = api.getresponse()
    event = json.loads(answer.read())
    request_id = answer.getheader("Lambda-Runtime-Aws-Request-Id")
    try:
        body, kind, headers = json.dumps(handler(event, None)), "response", {}
    except Exception as exc:
        body = json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc),
                           "stackTrace": traceback.format_exc().splitlines()})
        kind, headers = "error", {"Lambda-Runtime-Function-Error-Type": "Unhandled"}
    sys.stdout.flush()
    api.request("POST", base + request_id + "/" + kind, body, headers)
    api.getresponse().read()
'''
FAKE_APP = r'''
import os, socket, sys, time
def handler(event, context):
    print("hello from", event.get("who"), flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    return {"handler": "handler", "event": event}
def other(event, context):
    return {"handler": "other"}
def fails(event, context):
    raise ValueError("bad input")
def crash(event, context):
    os._exit(3)
def sleeps(event, context):
    time.sleep(event["seconds"])
    return "slept"
def env(event, context):
    return dict(os.environ)
def connect(event, context):
    try:
        s = socket.create_connection(("127.0.0.1", event["port"]), timeout=5)
    except OSError as exc:
        return type(exc).__name__
    s.sendall(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n")
    return s.recv(4096).decode(errors="replace").split("\r\n")[0]
def engine(event, context):
    return [p for p in ("/var/run/docker.sock", "/run/docker.sock") if os.path.exists(p)]
'''


def _ric_tar() -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for name, text in (("var/runtime/ric.py", FAKE_RIC), ("var/task/app.py", FAKE_APP)):
            raw = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(raw), 0o644
            tar.addfile(info, io.BytesIO(raw))
    return data.getvalue()


def ensure_ric(client) -> str:
    """An image FROM the host-/usr one with the stand-in RIC as ENTRYPOINT, `app.handler` as
    CMD, an ENV of its own, as a Lambda container image is built."""
    import docker
    ensure(client)
    try:
        client.images.get(RIC_IMAGE)
    except docker.errors.ImageNotFound:
        repository, tag = RIC_IMAGE.split(":")
        # One layer holding both (docker import's `changes` set the image's config).
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            for blob in (_tar(), _ric_tar()):
                with tarfile.open(fileobj=io.BytesIO(blob)) as part:
                    for member in part.getmembers():
                        tar.addfile(member, part.extractfile(member) if member.isfile()
                                    else None)
        client.api.import_image_from_data(data.getvalue(), repository=repository, tag=tag,
                                          changes=[
            'ENTRYPOINT ["/usr/bin/python3", "/var/runtime/ric.py"]',
            'CMD ["app.handler"]',
            "ENV IMAGE_VAR=from-image LANG=en_US.UTF-8 PATH=/usr/bin:/bin",
            "WORKDIR /var/task"])
    return RIC_IMAGE


def binds() -> dict:
    """The `volumes` argument of containers.create/run: the host's /usr, read-only."""
    return {"/usr": {"bind": "/usr", "mode": "ro"}}
