"""Engine handling for `isolation: container` (issue 20, point 4), against a real engine
(the `docker_engine` fixture, tests/docker_engine.py): a function whose engine does not
answer, or whose image is missing, is reported broken with the reason while the others serve;
containers Sora's workers and hosts leave (a worker or the whole host killed -9) are removed
by label, and none of a host's remain after it stops; setup runs in a container of the image;
no function or setup ever reaches the engine's socket."""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import time

import docker
import pytest

from sora.containers import engine
from tests.images.build import ensure_image
from tests.integration import functions as F
from tests.support import SoraHost, json_of, wait_for, write_function

pytestmark = pytest.mark.integration

ABSENT_IMAGE = "sora-test/absent-image:0"
# A shell and a few tools from the host, for leftovers that sleep and setups that probe.
SH_TOOLS = ("/bin/sh", "/usr/bin/sh", "/usr/bin/dash", "/bin/sleep", "/bin/cat", "/bin/ls", "/usr/bin/id")


def _libraries(path: str) -> list[str]:
    out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    return [part for line in out.splitlines() for part in line.split()
            if part.startswith("/")]


@pytest.fixture(scope="module")
def sh_images(docker_engine):
    """The tags this module made, untagged at its end."""
    made: set[str] = set()
    yield made
    for name in made:
        try:
            docker_engine.client.images.remove(name)
        except docker.errors.APIError:
            pass


@pytest.fixture
def sh_image(docker_engine, sh_images):
    """`sora-test/engine-sh:<hash>-<pid>` (this session's own tag, so another session's end
    never untags it under this one), made again if something removed it since."""
    name = build_sh_image(docker_engine.client)
    sh_images.add(name)
    return name


def build_sh_image(client) -> str:
    """The host's dash, sleep, cat, ls and id with their libraries, imported as an image."""
    buffer = io.BytesIO()
    added: set[str] = set()

    def add(tar, path: str) -> None:
        # By its name with the folders' links resolved (merged /usr: /lib64 -> usr/lib64),
        # a link kept as a link and its target added too (/lib64/ld-linux... -> ../lib/...).
        name = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        if name in added:
            return
        added.add(name)
        if os.path.islink(name):
            info = tarfile.TarInfo(name.lstrip("/"))
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(name)
            tar.addfile(info)
            add(tar, os.path.join(os.path.dirname(name), os.readlink(name)))
        else:
            tar.add(name, arcname=name.lstrip("/"))

    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for top in ("/bin", "/lib", "/lib64", "/sbin"):   # merged /usr: links into it
            if os.path.islink(top):
                info = tarfile.TarInfo(top.lstrip("/"))
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(top)
                tar.addfile(info)
        for tool in SH_TOOLS:
            if os.path.exists(tool):
                add(tar, tool)
                for library in _libraries(os.path.realpath(tool)):
                    add(tar, library)
        for folder in ("tmp", "var/run", "run", "home"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
    data = buffer.getvalue()
    tag = f"{hashlib.sha256(data).hexdigest()[:12]}-{os.getpid()}"
    name = f"sora-test/engine-sh:{tag}"
    try:
        client.images.get(name)
        return name
    except docker.errors.ImageNotFound:
        pass
    client.api.import_image_from_data(
        data, repository="sora-test/engine-sh", tag=tag,
        changes=['ENV PATH=/usr/bin:/bin', 'CMD ["/bin/sh"]'])
    return name


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


SETUP_PROBE = [
    'echo "uid=$(id -u) gid=$(id -g) home=$HOME pwd=$(pwd)" > made.txt',
    # The attacker's setup: the engine's socket by its usual paths and variables.
    'for p in /var/run/docker.sock /run/docker.sock /var/run/docker /run/docker '
    '/run/containerd/containerd.sock /var/run/sora; do [ -e "$p" ] && echo "found $p"; done'
    ' > probe.txt; [ -n "$DOCKER_HOST" ] && echo "DOCKER_HOST=$DOCKER_HOST" >> probe.txt;'
    ' echo root > /root-file 2>/dev/null && echo "root file system writable" >> probe.txt;'
    ' echo tmp > /tmp/t && echo "tmp writable" >> probe.txt; export -p > env.txt;'
    ' cat /proc/self/mountinfo > mounts.txt; true',
]


def test_setup_runs_in_a_container_of_the_image(tmp_path, docker_engine, sh_image):
    folder = boxed(tmp_path, sh_image, setup=SETUP_PROBE, minInstances=0,
                   env={"GREETING": "hi"})
    host = SoraHost(tmp_path, [folder, plain(tmp_path)], https=False,
                    server={"docker": {"socket": docker_engine.socket}},
                    env={"SORA_TEST_HIDDEN": "host-only", "npm_config_registry":
                         "http://127.0.0.1:9/"})
    host.start(wait_functions=["plain"])
    try:
        wait_for(lambda: (folder / "mounts.txt").exists(), timeout=60,
                 what="setup's files synced back into the folder")
        made = (folder / "made.txt").read_text().split()
        owner = os.stat(folder).st_uid
        assert made[0] != "uid=0" and made[0] == f"uid={host_uid(tmp_path)}"
        assert made[2:] == ["home=/home/sora", "pwd=/var/task"]
        assert os.stat(folder / "made.txt").st_uid == owner   # synced back as the owner's
        assert (folder / "probe.txt").read_text() == "tmp writable\n"
        env = (folder / "env.txt").read_text()
        assert "GREETING='hi'" in env and "npm_config_registry=" in env
        assert "SORA_TEST_HIDDEN" not in env and "SORA_RUN_ONCE_SPEC" not in env
        mounts = (folder / "mounts.txt").read_text()
        assert f"{tmp_path}/state/setup/boxed.folder /var/task " in mounts
        assert f" {folder} " not in mounts and f"{folder}/" not in mounts
        assert host_containers(docker_engine.client, tmp_path / "state") == []
    finally:
        assert host.stop() == 0
    log = (tmp_path / "state" / "setup" / "boxed.log").read_text()
    assert "$ (sora) copy the folder for the setup container" in log
    assert "$ (sora) sync what setup made back into the folder" in log


def host_uid(base) -> int:
    """The uid the host gives `boxed` (its sandbox uid, one of its own)."""
    from sora.config import load_host_config
    return load_host_config(str(base / "host-config.yaml")).function("boxed").sandboxUid


def test_setup_timeout_kills_its_container(tmp_path, docker_engine, sh_image):
    folder = boxed(tmp_path, sh_image, setup=["echo started; sleep 120"], setupTimeout=3,
                   minInstances=0)
    host = SoraHost(tmp_path, [folder, plain(tmp_path)], https=False,
                    server={"docker": {"socket": docker_engine.socket}})
    host.start(wait_functions=["plain"])
    try:
        reason = wait_fatal(host, "boxed")
        assert "setup command 'echo started; sleep 120' timed out after 3s" in reason
        assert host_containers(docker_engine.client, tmp_path / "state") == []
        assert "started" in (tmp_path / "state" / "setup" / "boxed.log").read_text()
    finally:
        assert host.stop() == 0


def test_a_failed_setup_command_fails_the_function(tmp_path, docker_engine, sh_image):
    folder = boxed(tmp_path, sh_image, setup=["echo to the log; exit 3"], minInstances=0)
    host = SoraHost(tmp_path, [folder, plain(tmp_path)], https=False,
                    server={"docker": {"socket": docker_engine.socket}})
    host.start(wait_functions=["plain"])
    try:
        reason = wait_fatal(host, "boxed")
        assert "setup command 'echo to the log; exit 3' failed with exit status 3" in reason
        assert "to the log" in (tmp_path / "state" / "setup" / "boxed.log").read_text()
        assert host_containers(docker_engine.client, tmp_path / "state") == []
    finally:
        assert host.stop() == 0


# --- with real instances (sora.containers: B's instances, D's images) ---------------------------

ATTACK = r"""
const fs = require('fs');
const net = require('net');
const tryConnect = (path) => new Promise((resolve) => {
  const s = net.connect({ path });
  s.setTimeout(2000, () => { s.destroy(); resolve('TIMEOUT'); });
  s.on('connect', () => { s.destroy(); resolve('CONNECTED'); });
  s.on('error', (err) => resolve(err.code));
});
exports.handler = async (event) => {
  const paths = (event.queryStringParameters || {}).paths.split(',');
  const found = {};
  for (const path of paths) found[path] = await tryConnect(path);
  let mounts = '';
  try { mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8'); } catch (err) { mounts = err.code; }
  return {
    found,
    env: Object.entries(process.env).filter(([k, v]) => /docker|containerd/i.test(k + v)),
    mountsNamingTheEngine: mounts.split('\n').filter((l) => /docker\.sock|containerd/.test(l)),
  };
};
"""


def instance_host(base, docker_engine, **extra):
    image = ensure_image(docker_engine.client, "sora-test/node20")
    dirs = [write_function(base, "cnode", {"index.js": ATTACK}, name="cnode",
                           isolation="container", image=image, minInstances=2, **extra),
            plain(base)]
    return SoraHost(base, dirs, https=False, server={"docker": {"socket": docker_engine.socket}})


def of_worker(client, state_dir, pid, all=True) -> list:
    return client.containers.list(all=all, filters={"label": [
        f"sora.host={engine.host_id(str(state_dir))}", f"sora.worker={pid}"]})


def test_instances_of_a_worker_killed_9_are_removed_and_replaced(tmp_path, docker_engine):
    host = instance_host(tmp_path, docker_engine)
    client = docker_engine.client
    host.start()
    try:
        assert host.invoke("cnode", params={"paths": "/tmp"}).status_code == 200
        old = host.function_state("cnode")["pid"]
        before = of_worker(client, tmp_path / "state", old)
        assert len(before) >= 2   # its two instances (and any pre-started spare)
        new = host.kill_worker("cnode")["pid"]
        wait_for(lambda: of_worker(client, tmp_path / "state", old) == [], timeout=30,
                 what="the killed worker's containers removed")
        assert host.invoke("cnode", params={"paths": "/tmp"}).status_code == 200
        # The first call needs one instance; the second of minInstances may still be starting.
        wait_for(lambda: len(of_worker(client, tmp_path / "state", new, all=False)) >= 2,
                 timeout=30, what="the new worker's two instances running")
    finally:
        assert host.stop() == 0
    assert host_containers(client, tmp_path / "state") == []


def test_a_function_never_reaches_the_engine(tmp_path, docker_engine):
    """The attacker's function: the engine's socket by every usual path, through the
    container's root and pid 1's, by variables, and in its mounts."""
    host = instance_host(tmp_path, docker_engine)
    host.start()
    paths = ["/var/run/docker.sock", "/run/docker.sock", "/var/run/docker/docker.sock",
             "/run/containerd/containerd.sock", "/var/run/containerd/containerd.sock",
             "/proc/1/root/var/run/docker.sock", "/proc/self/root/run/docker.sock",
             docker_engine.socket, "/run/sora/docker.sock", "/tmp/docker.sock"]
    try:
        body = json_of(host.invoke("cnode", params={"paths": ",".join(paths)}))
        assert set(body["found"].values()) <= {"ENOENT", "EACCES"}, body["found"]
        assert body["env"] == [] and body["mountsNamingTheEngine"] == []
    finally:
        assert host.stop() == 0


def test_a_host_killed_9_with_running_instances_then_started_leaves_none(tmp_path,
                                                                         docker_engine):
    host = instance_host(tmp_path, docker_engine)
    client = docker_engine.client
    host.start()
    old = host.function_state("cnode")["pid"]
    assert len(of_worker(client, tmp_path / "state", old, all=False)) >= 2
    host.kill9()
    # The engine's, not the host's: they outlive it.
    assert of_worker(client, tmp_path / "state", old) != []
    again = host.restarted()
    again.start()
    try:
        assert of_worker(client, tmp_path / "state", old) == []
        assert again.invoke("cnode", params={"paths": "/tmp"}).status_code == 200
        assert "container(s) left by an earlier run of this host" in again.log()
    finally:
        assert again.stop() == 0
    assert host_containers(client, tmp_path / "state") == []


def test_setup_without_an_engine_says_so(tmp_path):
    socket = tmp_path / "nothing.sock"
    folder = boxed(tmp_path, "sora-test/node20:1", setup=["echo never"], minInstances=0)
    host = SoraHost(tmp_path, [folder, plain(tmp_path)], https=False,
                    server={"docker": {"socket": str(socket)}})
    host.start(wait_functions=["plain"])
    try:
        reason = wait_fatal(host, "boxed")
        assert f"setup command 'echo never' could not run in a container: no Docker engine " \
               f"answers at {socket}: nothing at that path" in reason
    finally:
        assert host.stop() == 0


def test_setup_with_a_missing_image_names_it(tmp_path, docker_engine):
    folder = boxed(tmp_path, ABSENT_IMAGE, setup=["echo never"], minInstances=0)
    host = SoraHost(tmp_path, [folder, plain(tmp_path)], https=False,
                    server={"docker": {"socket": docker_engine.socket}})
    host.start(wait_functions=["plain"])
    try:
        reason = wait_fatal(host, "boxed")
        assert f"could not run in a container: image '{ABSENT_IMAGE}' is not in the local " \
               f"Docker engine" in reason
    finally:
        assert host.stop() == 0
