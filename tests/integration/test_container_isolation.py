"""`isolation: container` for Node.js and Python functions (issue 20, points 1 and 3), with a
real Docker engine (tests/docker_engine.py) and the test images built from the host's own
runtimes (tests/images/build.py).

Each instance runs in a container of the function's image, speaking the usual protocol
through the FIFOs of its channel folder; the attacker's side is checked from inside: no
root, no capability, no new privileges, a read-only root, no network with `network: false`,
no other function's folder, no engine socket."""
from __future__ import annotations

import time

import pytest

from sora.containers.spares import host_id
from tests.images.build import ensure_image
from tests.support import json_of, served, wait_for, write_function

pytestmark = pytest.mark.integration

PROBE = r"""
const fs = require('fs');
const net = require('net');
const held = [];
function status(key) {
  const line = fs.readFileSync('/proc/self/status', 'utf8').split('\n')
    .find((l) => l.startsWith(key + ':'));
  return line.split(':')[1].trim();
}
function attempt(fn) {
  try { return { ok: true, value: fn() }; } catch (err) { return { ok: false, code: err.code }; }
}
exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  if (q.write) return attempt(() => fs.writeFileSync(q.write, 'x'.repeat(Number(q.kb || 1) * 1024)));
  if (q.read) return attempt(() => fs.readFileSync(q.read, 'utf8').length);
  if (q.ls) return attempt(() => fs.readdirSync(q.ls));
  if (q.mb) { for (let i = 0; i < Number(q.mb); i++) held.push(Buffer.alloc(1 << 20, 1)); return { held: held.length }; }
  if (q.sleep) { await new Promise((r) => setTimeout(r, Number(q.sleep))); return { slept: true }; }
  if (q.exit) { console.log('exiting now'); process.exit(Number(q.exit)); }
  if (q.connect) {
    return await new Promise((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port: Number(q.connect) });
      s.setTimeout(2000, () => { s.destroy(); resolve({ ok: false, code: 'TIMEOUT' }); });
      s.on('connect', () => { s.destroy(); resolve({ ok: true }); });
      s.on('error', (err) => resolve({ ok: false, code: err.code }));
    });
  }
  console.log('probe ran');
  console.error('probe err');
  return {
    uid: process.getuid(), gid: process.getgid(), capEff: status('CapEff'),
    noNewPrivs: status('NoNewPrivs'), cwd: process.cwd(),
    taskRoot: process.env.LAMBDA_TASK_ROOT, stream: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
    dockerHost: process.env.DOCKER_HOST || null, node: process.version,
    env: Object.keys(process.env).filter((k) => k.startsWith('SORA')),
  };
};
"""

PY = """
import os, sys

def handler(event, context):
    print("python ran")
    return {"uid": os.getuid(), "cwd": os.getcwd(), "python": sys.version.split()[0],
            "stream": context.log_stream_name, "taskRoot": os.environ.get("LAMBDA_TASK_ROOT"),
            "secretFile": open(os.path.join(os.environ["SORA_SECRETS_DIR"], "TOKEN")).read(),
            "secretsDir": os.environ["SORA_SECRETS_DIR"]}
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory, docker_engine):
    node_image = ensure_image(docker_engine.client, "sora-test/node20")
    python_image = ensure_image(docker_engine.client, "sora-test/python3")
    base = tmp_path_factory.mktemp("containers")
    fns = base / "fns"
    (base / "token.txt").write_text("s3cret-value-42")
    dirs = [
        write_function(fns, "cnode", {"index.js": PROBE}, name="cnode", isolation="container",
                       image=node_image, memory=128, timeout=3, tmpSize=8, network=False),
        write_function(fns, "cpy", {"app.py": PY}, name="cpy", language="python",
                       entrypoint="app.py", isolation="container", image=python_image,
                       secrets={"TOKEN": {"file": str(base / "token.txt")}}),
        write_function(fns, "cidle", {"index.js": PROBE}, name="cidle", isolation="container",
                       image=node_image, minInstances=0, idleTimeout=2),
        write_function(fns, "plain", {"index.js": PROBE}, name="plain"),
        write_function(fns, "cfresh", {"index.js": PROBE}, name="cfresh", isolation="container",
                       image=node_image, coldStart="always"),
        write_function(fns, "cburst", {"index.js": PROBE}, name="cburst", isolation="container",
                       image=node_image, maxInstances=4, concurrency=4),
    ]
    server = {}
    if docker_engine.socket != "/var/run/docker.sock":
        server["docker"] = {"socket": docker_engine.socket}
    gen = served(base, dirs, https=False, server=server)
    sora = next(gen)
    sora.fns, sora.engine = fns, docker_engine
    sora.host_id = host_id(str(base / "state"))
    yield sora
    next(gen, None)
    # Stopped: not one container of this host is left.
    assert ours(sora, all=True) == []


FUNCTIONS = ("cnode", "cpy", "cidle", "cfresh", "cburst")


def probe(host, name="cnode", **params):
    r = host.invoke(name, params=params)
    assert r.status_code == 200, r.text
    return json_of(r)


def ours(host, all=False, **labels):
    """This host's containers (of the functions named by `labels`)."""
    wanted = [f"sora.host={host.host_id}", *(f"{k}={v}" for k, v in labels.items())]
    return host.engine.client.containers.list(all=all, filters={"label": wanted})


def containers_of(host, name):
    return ours(host, **{"sora.function": name})


def test_node_and_python_functions_answer_in_containers(host):
    body = probe(host)
    assert body["cwd"] == "/var/task" and body["taskRoot"] == "/var/task"
    assert body["node"].startswith("v")
    py = probe(host, "cpy")
    assert py["cwd"] == "/var/task" and py["python"].startswith("3.")
    # Secrets: the folder bound read-only, readable by the function's uid.
    assert py["secretFile"] == "s3cret-value-42" and py["secretsDir"] == "/run/sora-secrets"
    assert containers_of(host, "cnode") and containers_of(host, "cpy")


def test_runs_as_its_own_uid_with_no_capability_and_no_new_privileges(host):
    body = probe(host)
    assert body["uid"] != 0 and body["gid"] != 0
    assert body["capEff"] == "0000000000000000"
    assert body["noNewPrivs"] == "1"
    assert body["uid"] != probe(host, "cpy")["uid"]   # each function its own uid


def test_read_only_root_and_a_capped_tmp(host):
    assert probe(host, write="/x.txt") == {"ok": False, "code": "EROFS"}
    assert probe(host, write="/var/task/x.txt")["code"] in ("EROFS", "EACCES")
    assert probe(host, write="/run/sora/requests2")["code"] in ("EROFS", "EACCES")
    assert probe(host, write="/tmp/small", kb="64")["ok"] is True
    # tmpSize is 8 MB.
    assert probe(host, write="/tmp/big", kb=str(16 * 1024)) == {"ok": False, "code": "ENOSPC"}


def test_network_false_reaches_nothing_not_even_the_hosts_loopback(host):
    assert probe(host, connect=str(host.http_port))["ok"] is False


def test_cannot_see_other_functions_folders_nor_the_engine_socket(host):
    for path in (str(host.fns / "plain"), str(host.fns / "cpy"), str(host.base / "state")):
        assert probe(host, ls=path) == {"ok": False, "code": "ENOENT"}
    for path in ("/var/run/docker.sock", "/run/docker.sock", host.engine.socket):
        assert probe(host, read=path) == {"ok": False, "code": "ENOENT"}
    body = probe(host)
    assert body["dockerHost"] is None
    assert set(body["env"]) <= {"SORA_SECRETS_DIR"}   # the shim's own variables are gone
    # What the container sees of the host's processes: its own only.
    assert probe(host, ls="/proc")["ok"] is True


def test_cold_then_warm_records_with_init_duration_and_memory(host):
    first = host.invoke("cidle")
    second = host.invoke("cidle")
    assert first.status_code == second.status_code == 200
    cold = host.record(first.headers["X-Sora-Request-Id"])
    warm = host.record(second.headers["X-Sora-Request-Id"])
    assert cold["cold"] is True and cold["initDurationMs"] > 0
    assert warm["cold"] is False
    assert warm["maxMemoryUsedMB"] > 5   # the container's memory cgroup
    # Its log lines, tied to the request that printed them.
    lines = wait_for(lambda: [x["line"] for x in host.record(
        second.headers["X-Sora-Request-Id"])["logs"]], what="log lines")
    assert "probe ran" in lines and "probe err" in lines


def test_memory_past_the_limit_is_out_of_memory_and_the_next_call_works(host):
    before = probe(host)["stream"]
    r = host.invoke("cnode", params={"mb": "400"})
    assert r.status_code == 502, r.text
    body = json_of(r)
    assert body["errorType"] == "Sora.OutOfMemory" and "128 MB" in body["errorMessage"]
    assert host.record(r.headers["X-Sora-Request-Id"])["status"] == "crashed"
    assert probe(host)["stream"] != before


def test_timeout_kills_and_replaces_the_container(host):
    before = probe(host)["stream"]
    r = host.invoke("cnode", params={"sleep": "10000"})
    assert r.status_code == 504, r.text
    assert json_of(r)["errorType"] == "Sora.Timeout"
    after = probe(host)
    assert after["stream"] != before


def test_a_crash_is_runtime_exited_with_its_status(host):
    r = host.invoke("cnode", params={"exit": "3"})
    assert r.status_code == 502, r.text
    body = json_of(r)
    assert body["errorType"] == "Sora.RuntimeExited"
    assert "exit status 3" in body["errorMessage"]
    assert probe(host)["uid"] != 0


def test_scale_to_zero_then_a_call_starts_one_again(host):
    assert host.invoke("cidle").status_code == 200
    wait_for(lambda: host.function_state("cidle")["instances"] == 0, timeout=20,
             what="cidle scaled to zero")
    started = time.monotonic()
    r = host.invoke("cidle")
    assert r.status_code == 200
    assert host.record(r.headers["X-Sora-Request-Id"])["cold"] is True
    assert time.monotonic() - started < 5


def test_dead_containers_are_removed(host):
    wait_for(lambda: all(c.status == "running" for c in ours(host, all=True)),
             timeout=20, what="only running containers")


def test_cold_start_always_gets_a_fresh_container_each_call(host):
    streams = []
    for _ in range(3):
        r = host.invoke("cfresh")
        assert r.status_code == 200, r.text
        streams.append(json_of(r)["stream"])
        assert host.record(r.headers["X-Sora-Request-Id"])["cold"] is True
    assert len(set(streams)) == 3


def test_autoscaling_starts_more_containers_for_a_burst(host):
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: host.invoke("cburst", params={"sleep": "700"}),
                                range(8)))
    assert all(r.status_code == 200 for r in answers)
    assert host.function_state("cburst")["instances"] > 1


def test_the_channel_cannot_be_changed_from_inside(host):
    # Its FIFOs are the function's uid's, but the folder is bound read-only: no chmod, no
    # new name, no removal; the host's side of it is root's.
    assert probe(host, write="/run/sora/x")["code"] in ("EROFS", "EACCES")
    assert probe(host, ls="/run/sora") == {"ok": False, "code": "EACCES"}
    # What it writes on its own control FIFO is judged as any runtime's control line: text
    # that is no message replaces the instance (Sora.ProtocolError), as for the other kinds.
    r = host.invoke("cnode", params={"write": "/run/sora/control"})
    assert r.status_code == 502 and json_of(r)["errorType"] == "Sora.ProtocolError"
    assert probe(host)["uid"] != 0


def test_a_killed_workers_channels_are_removed_and_its_containers_end(host):
    assert probe(host, "cpy") is not None
    old = host.function_state("cpy")["pid"]
    folder = host.base / "state" / "run" / "containers"
    assert any(p.name.startswith(f"{old}-") for p in folder.iterdir())
    host.kill_worker("cpy")
    wait_for(lambda: not any(p.name.startswith(f"{old}-") for p in folder.iterdir()),
             timeout=10, what="the killed worker's channel folders removed")
    # Its runtimes read the end of their requests FIFO and exit: none keeps running (the
    # supervisor's sweep removes the containers themselves, sora.containers.engine).
    wait_for(lambda: not ours(host, **{"sora.worker": old}), timeout=20,
             what="the killed worker's containers ended")
    assert probe(host, "cpy")["uid"] != 0
    # Removing them is the supervisor's sweep (tests/integration/test_container_engine.py);
    # what is left here is removed, so the end of the module finds none of this host's.
    for container in ours(host, all=True, **{"sora.worker": old}):
        container.remove(force=True)
