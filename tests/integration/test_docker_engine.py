"""The container tests' engine (tests/docker_engine.py) and base images (tests/images/build.py):
a dockerd of the session's own starts on a private socket with no network of its own and
stops leaving no process, mount or fd; the base images run their interpreter as a non-root
user on a read-only root with no network, from nothing but the host's own files."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests import docker_engine as engines
from tests.images.build import NODE20, PYTHON3, ensure_image

pytestmark = pytest.mark.integration
LABELS = {"sora-test": "docker-engine"}   # what this file's containers are, for a person


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_own_dockerd_has_no_network_and_leaves_nothing(tmp_path):
    fds_before = _fds()
    daemon = engines.OwnDaemon()
    try:
        daemon.start()
        assert daemon.socket != engines.SYSTEM_SOCKET and os.path.exists(daemon.socket)
        client = engines.connect(daemon.socket)
        try:
            # --bridge=none: no bridge network (so no private address range taken), only the
            # built-in none and host networks.
            assert sorted(n.name for n in client.networks.list()) == ["host", "none"]
            info = client.info()
            assert info["DockerRootDir"] == str(daemon.data_root)
            assert str(daemon.data_root).startswith(str(engines.CACHE))
            ref = ensure_image(client, NODE20)
            out = client.containers.run(ref, ["node", "-e", "console.log(6 * 7)"],
                                        remove=True, network_mode="none", labels=LABELS)
            assert out.strip() == b"42"
        finally:
            client.close()
        family = [daemon.process.pid] + [p.pid for p in
                                         psutil.Process(daemon.process.pid).children(True)]
        assert len(family) > 1   # its containerd
    finally:
        daemon.stop()
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                   for pid in family), family
    assert engines._mounts_under((str(daemon.run_dir), str(daemon.data_root))) == []
    assert not daemon.run_dir.exists()
    assert _fds() == fds_before
    # The data root outlives the daemon (images built once per machine), and is free again.
    assert daemon.data_root.is_dir()
    again, fd = engines._take_data_root()
    os.close(fd)
    assert again == daemon.data_root


def test_session_engine_answers(docker_engine):
    assert docker_engine.client.ping()
    assert os.path.exists(docker_engine.socket)


@pytest.mark.parametrize("name, argv, expected", [
    (NODE20, ["node", "-e", "console.log(process.version.split('.')[0])"], b"v20"),
    (PYTHON3, ["python3", "-c", "import ssl, sqlite3, ctypes, decimal, json; print('ok')"],
     b"ok"),
    (NODE20, ["/bin/sh", "-c", "echo $PATH; id -u; cat /dev/null 2>/dev/null > /x || echo read-only"],
     b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n4242\nread-only"),
])
def test_base_image_runs_as_non_root_on_read_only_root(docker_engine, name, argv, expected):
    ref = ensure_image(docker_engine.client, name)
    assert ref.startswith(f"{name}:") and len(ref.split(":")[1]) == 16
    out = docker_engine.client.containers.run(
        ref, argv, remove=True, network_mode="none", read_only=True, user="4242:4242",
        cap_drop=["ALL"], security_opt=["no-new-privileges"],
        tmpfs={"/tmp": "size=16m,mode=1777"}, labels=LABELS)
    assert out.strip() == expected


def test_base_images_are_the_hosts_interpreters(docker_engine):
    host_node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout
    ref = ensure_image(docker_engine.client, NODE20)
    assert docker_engine.client.containers.run(
        ref, ["node", "--version"], remove=True, network_mode="none", labels=LABELS).decode() == host_node
    ref = ensure_image(docker_engine.client, PYTHON3)
    out = docker_engine.client.containers.run(
        ref, ["python3", "-c", "import sys; print(sys.executable, sys.prefix)"], remove=True,
        network_mode="none", labels=LABELS).decode().split()
    # Debian's python3.11 (not the virtualenv's, not pyenv's), its library where it expects it
    assert out == ["/usr/bin/python3", "/usr"]


CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from tests import docker_engine as engines
daemon = engines.OwnDaemon()
daemon.start()
print(daemon.process.pid, daemon.run_dir, flush=True)
time.sleep(600)
"""


def test_own_dockerd_stops_when_the_test_session_is_killed():
    """kill -9 of the session that started a dockerd: the daemon is told to stop (parent-death
    signal) and stops with its containerd; no daemon is left running."""
    root = str(Path(__file__).resolve().parents[2])
    session = subprocess.Popen([sys.executable, "-c", CHILD.format(root=root)],
                               stdout=subprocess.PIPE, text=True)
    try:
        pid, run_dir = session.stdout.readline().split()
        family = [psutil.Process(int(pid)), *psutil.Process(int(pid)).children(recursive=True)]
    finally:
        session.kill()
        session.wait()
        session.stdout.close()
    _gone, alive = psutil.wait_procs(family, timeout=engines.STOP_TIMEOUT + 10)
    assert alive == [], alive
    for mount in reversed(engines._mounts_under((run_dir,))):
        engines._detach(mount)
    shutil.rmtree(run_dir, ignore_errors=True)
    daemon = engines.OwnDaemon()   # its data root is free again: the next start works
    try:
        daemon.start()
    finally:
        daemon.stop()
