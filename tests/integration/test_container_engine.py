"""Engine handling for `isolation: container` (issue 20, point 4), against a real engine:
a function whose engine does not answer, or whose image is missing, is reported broken with
the reason while the others serve; containers Sora's workers and hosts leave (a worker or the
whole host killed -9) are removed by label, and none of a host's remain after it stops; no
function or setup ever reaches the engine's socket."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import docker
import pytest

from sora.containers import engine
from tests.integration import functions as F
from tests.support import SoraHost, wait_for, write_function

pytestmark = pytest.mark.integration

SYSTEM_SOCKET = "/var/run/docker.sock"
ABSENT_IMAGE = "sora-test/absent-image:0"
# A shell and a few tools from the host, for leftovers that sleep and setups that probe.
SH_TOOLS = ("/bin/sh", "/usr/bin/sh", "/usr/bin/dash", "/bin/sleep", "/bin/cat", "/bin/ls", "/usr/bin/id")


@pytest.fixture(scope="module")
def docker_engine():
    """The engine at /var/run/docker.sock (D's session fixture `docker_engine` replaces this
    module's once it lands)."""
    client = docker.DockerClient(base_url=f"unix://{SYSTEM_SOCKET}", timeout=300)
    assert client.ping(), f"no Docker engine answers at {SYSTEM_SOCKET}"
    yield SimpleNamespace(socket=SYSTEM_SOCKET, client=client)
    client.close()


def _libraries(path: str) -> list[str]:
    out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    return [part for line in out.splitlines() for part in line.split()
            if part.startswith("/")]


@pytest.fixture(scope="module")
def sh_image(docker_engine):
    """`sora-test/engine-sh:<hash>`: the host's dash, sleep, cat, ls and id with their
    libraries, imported as an image (removed at the module's end)."""
    files = {os.path.realpath(p) for tool in SH_TOOLS if os.path.exists(tool)
             for p in (tool, *_libraries(os.path.realpath(tool)))}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(files):
            tar.add(path, arcname=path.lstrip("/"))
        # The names as the host has them: /bin, /lib... links into /usr (merged /usr), and
        # the tools that are links to others (/bin/sh -> dash).
        for link in ("/bin", "/lib", "/lib64", "/sbin", *SH_TOOLS):
            if os.path.islink(link) and not any(
                    link.startswith(top + "/") for top in ("/bin", "/lib") if os.path.islink(top)):
                info = tarfile.TarInfo(link.lstrip("/"))
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(link)
                tar.addfile(info)
        for folder in ("tmp", "var/run", "run", "home"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
    data = buffer.getvalue()
    tag = hashlib.sha256(data).hexdigest()[:12]
    name = f"sora-test/engine-sh:{tag}"
    docker_engine.client.api.import_image_from_data(
        data, repository="sora-test/engine-sh", tag=tag,
        changes=['ENV PATH=/usr/bin:/bin', 'CMD ["/bin/sh"]'])
    yield name
    try:
        docker_engine.client.images.remove(name, force=True)
    except docker.errors.APIError:
        pass


def host_containers(client, state_dir) -> list:
    return client.containers.list(all=True, filters={
        "label": f"sora.host={engine.host_id(str(state_dir))}"})


def leftover(client, image, state_dir, worker_pid, role="instance", host_id=None):
    """A container as a worker of the host at `state_dir` would have made it, left running."""
    return client.containers.run(
        image, ["/bin/sleep", "600"], detach=True, network_mode="none",
        name=f"sora-test-leftover-{os.getpid()}-{time.monotonic_ns()}",
        labels=engine.labels(host_id or engine.host_id(str(state_dir)), "boxed", worker_pid,
                             role))


def gone(client, container) -> bool:
    try:
        client.containers.get(container.id)
    except docker.errors.NotFound:
        return True
    return False


def wait_fatal(host, name, timeout=60.0) -> str:
    state = wait_for(lambda: (s := host.function_state(name))["state"] == "FATAL" and s,
                     timeout=timeout, what=f"{name} to be FATAL")
    return state["reason"]


def boxed(base, image, **extra):
    """A Node.js function in a container."""
    return write_function(base, "boxed", {"index.js": F.ECHO}, name="boxed",
                          isolation="container", image=image, **extra)


def plain(base):
    return write_function(base, "plain", {"index.js": F.ECHO}, name="plain")


def test_no_engine_at_the_socket_breaks_only_that_function(tmp_path):
    socket = tmp_path / "nothing" / "docker.sock"
    host = SoraHost(tmp_path, [boxed(tmp_path, "sora-test/node20:1"), plain(tmp_path)],
                    https=False, server={"docker": {"socket": str(socket)}})
    host.start(wait_functions=["plain"])
    try:
        reason = wait_fatal(host, "boxed")
        assert f"no Docker engine answers at {socket}: nothing at that path" in reason
        assert host.invoke("plain").status_code == 200
        assert host.invoke("boxed").status_code != 200
        assert host.health()["status"] == "degraded"
    finally:
        assert host.stop() == 0
    # The sweeps found no engine either: said once each, and the host stopped cleanly.
    assert "containers left by an earlier run of this host not swept" in host.log(whole=True)


def test_a_socket_nobody_listens_on(tmp_path):
    socket_path = tmp_path / "engine.sock"
    import socket
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(socket_path))
    host = SoraHost(tmp_path, [boxed(tmp_path, "sora-test/node20:1"), plain(tmp_path)],
                    https=False, server={"docker": {"socket": str(socket_path)}})
    host.start(wait_functions=["plain"])
    try:
        reason = wait_fatal(host, "boxed")
        assert f"no Docker engine answers at {socket_path}: connection refused" in reason
    finally:
        assert host.stop() == 0
        dead.close()


def test_a_missing_image_is_named(tmp_path, docker_engine):
    host = SoraHost(tmp_path, [boxed(tmp_path, ABSENT_IMAGE), plain(tmp_path)], https=False,
                    server={"docker": {"socket": docker_engine.socket}})
    host.start(wait_functions=["plain"])
    try:
        reason = wait_fatal(host, "boxed")
        assert f"image: image '{ABSENT_IMAGE}' is not in the local Docker engine" in reason
        assert str(tmp_path / "boxed" / "sora.yaml") in reason
        assert host.invoke("plain").status_code == 200
    finally:
        assert host.stop() == 0


def test_a_host_without_containers_never_asks_an_engine(tmp_path):
    socket = tmp_path / "nothing.sock"
    host = SoraHost(tmp_path, [plain(tmp_path)], https=False,
                    server={"docker": {"socket": str(socket)}})
    host.start()
    try:
        assert host.invoke("plain").status_code == 200
    finally:
        assert host.stop() == 0
    assert "not swept" not in host.log(whole=True)


@pytest.fixture
def sweeping_host(tmp_path, docker_engine):
    """A host that runs containers (its `boxed` function's image is missing, so it is FATAL,
    which changes nothing for the sweeps) and a `plain` function whose worker serves."""
    host = SoraHost(tmp_path, [boxed(tmp_path, ABSENT_IMAGE), plain(tmp_path)], https=False,
                    server={"docker": {"socket": docker_engine.socket}})
    made = []
    yield host, made
    host.stop()
    for container in made:   # what a failed test left: never another test's
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass


def test_start_removes_what_a_crashed_host_left_and_only_that(sweeping_host, sh_image,
                                                              docker_engine, tmp_path):
    host, made = sweeping_host
    client = docker_engine.client
    state = tmp_path / "state"
    state.mkdir()
    mine = leftover(client, sh_image, state, 4194300)
    setup = leftover(client, sh_image, state, 4194301, role="setup")
    other_host = leftover(client, sh_image, state, 4194300,
                          host_id=engine.host_id(str(tmp_path / "another-state")))
    made += [mine, setup, other_host]
    host.start(wait_functions=["plain"])
    assert gone(client, mine) and gone(client, setup)
    assert not gone(client, other_host)   # another host's (another stateDir): untouched
    assert "removed 2 container(s) left by an earlier run of this host" in host.log()


def test_a_worker_killed_9_leaves_no_container(sweeping_host, sh_image, docker_engine,
                                               tmp_path):
    host, made = sweeping_host
    client = docker_engine.client
    host.start(wait_functions=["plain"])
    worker = host.function_state("plain")["pid"]
    theirs = leftover(client, sh_image, tmp_path / "state", worker)
    other_worker = leftover(client, sh_image, tmp_path / "state", worker + 1)
    made += [theirs, other_worker]
    state = host.kill_worker("plain")
    assert state["pid"] != worker
    wait_for(lambda: gone(client, theirs), timeout=20, what="the killed worker's container")
    assert not gone(client, other_worker)   # only the exited worker's
    assert host.invoke("plain").status_code == 200


def test_a_host_killed_9_then_started_leaves_none_of_its_containers(sweeping_host, sh_image,
                                                                    docker_engine, tmp_path):
    host, made = sweeping_host
    client = docker_engine.client
    host.start(wait_functions=["plain"])
    worker = host.function_state("plain")["pid"]
    made += [leftover(client, sh_image, tmp_path / "state", worker) for _ in range(2)]
    host.kill9()
    assert len(host_containers(client, tmp_path / "state")) == 2   # left running
    again = host.restarted()
    again.start(wait_functions=["plain"])
    try:
        assert host_containers(client, tmp_path / "state") == []
        assert again.invoke("plain").status_code == 200
    finally:
        assert again.stop() == 0


def test_a_clean_stop_leaves_no_container_of_the_host(sweeping_host, sh_image, docker_engine,
                                                      tmp_path):
    host, made = sweeping_host
    client = docker_engine.client
    host.start(wait_functions=["plain"])
    worker = host.function_state("plain")["pid"]
    made.append(leftover(client, sh_image, tmp_path / "state", worker))
    assert host.stop() == 0
    assert host_containers(client, tmp_path / "state") == []
