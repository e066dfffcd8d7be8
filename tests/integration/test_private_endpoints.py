"""The ipc endpoints of the data path and the control plane (issue 16 point 4): they live in
<stateDir>/run, mode 0700, which no sandbox binds, so a sandboxed function can neither open
nor connect to the control plane's control.sock or a worker's w-<pid>.sock (and so cannot
send invocations, announce a worker or subscribe to the membership). An unsandboxed function,
run as Sora's own user, can: that is what shows the probe reaches the sockets at all."""
from __future__ import annotations

import json
import os
import stat

import pytest

from sora import protocol as p
from sora.isolation import sandbox
from tests.support import json_of, served, write_function

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not sandbox.available(), reason="bubblewrap is not installed")]

PROBE = r"""
const fs = require('fs');
const net = require('net');
const tryOpen = (p) => { try { fs.closeSync(fs.openSync(p, 'r')); return 'opened'; }
                         catch (e) { return e.code; } };
const tryConnect = (p) => new Promise((resolve) => {
  const s = net.connect({ path: p });
  s.once('connect', () => { s.destroy(); resolve('connected'); });
  s.once('error', (e) => resolve(e.code));
});
exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  if (q.paths) {   // every socket of the run folder, and the state dir's files
    const out = {};
    for (const p of JSON.parse(q.paths)) {
      out[p] = { open: tryOpen(p), connect: await tryConnect(p) };
    }
    return out;
  }
  return { open: { control: tryOpen(q.control), worker: tryOpen(q.worker) },
           connect: { control: await tryConnect(q.control), worker: await tryConnect(q.worker) },
           run: fs.existsSync(q.run) };
};
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("private")
    fns = base / "fns"
    dirs = [write_function(fns, "boxed", {"index.js": PROBE}, name="boxed",
                           isolation="sandbox"),
            write_function(fns, "open", {"index.js": PROBE}, name="open", isolation="none")]
    yield from served(base, dirs, https=False)


def probe(host, name):
    state_dir = str(host.base / "state")
    worker_pid = host.function_state(name)["pid"]
    paths = {"control": p.ipc_path(p.control_endpoint(state_dir)),
             "worker": p.ipc_path(p.worker_data_endpoint(state_dir, worker_pid)),
             "run": p.run_dir(state_dir)}
    for path in (paths["control"], paths["worker"]):
        assert stat.S_ISSOCK(os.stat(path).st_mode), path   # they exist, on the host
    r = host.invoke(name, params=paths)
    assert r.status_code == 200, r.text
    return json_of(r)


def test_the_run_folder_is_private(host):
    run = host.base / "state" / "run"
    assert stat.S_IMODE(os.stat(run).st_mode) == 0o700


def test_a_sandboxed_function_cannot_reach_the_control_plane_or_a_worker(host):
    got = probe(host, "boxed")
    assert got["run"] is False   # no sandbox binds the state dir's run folder
    for what in ("control", "worker"):
        assert got["open"][what] in ("ENOENT", "EACCES"), got
        assert got["connect"][what] in ("ENOENT", "EACCES"), got


def test_an_unsandboxed_function_can_which_shows_the_probe_works(host):
    got = probe(host, "open")
    assert got["connect"] == {"control": "connected", "worker": "connected"}, got


def test_a_killed_workers_socket_file_is_removed_when_it_is_reaped(host):
    state_dir = str(host.base / "state")
    old = host.function_state("open")["pid"]
    old_path = p.ipc_path(p.worker_data_endpoint(state_dir, old))
    assert os.path.exists(old_path)
    new = host.kill_worker("open")["pid"]
    assert not os.path.exists(old_path)
    assert os.path.exists(p.ipc_path(p.worker_data_endpoint(state_dir, new)))
    # The new worker serves (its clients learned its endpoint from MEMBERS).
    assert probe(host, "open")["connect"]["worker"] == "connected"


def test_no_socket_of_the_run_folder_nor_the_store_is_reachable_from_a_sandbox(host):
    """records.sock, events.sock, runtimes.sock beside control.sock and the workers', and
    the state dir's files (the store, the queue, functions.json)."""
    state = host.base / "state"
    run = state / "run"
    paths = sorted(str(path) for path in run.iterdir() if stat.S_ISSOCK(os.stat(path).st_mode))
    names = {os.path.basename(path) for path in paths}
    assert {"control.sock", "records.sock", "events.sock", "runtimes.sock"} <= names, names
    paths += [str(state / "sora.db"), str(state / "queue.db"), str(run / "functions.json")]
    r = host.invoke("boxed", params={"paths": json.dumps(paths)})
    assert r.status_code == 200, r.text
    got = json_of(r)
    for path in paths:
        assert got[path]["open"] in ("ENOENT", "EACCES"), (path, got[path])
        assert got[path]["connect"] in ("ENOENT", "EACCES"), (path, got[path])
    # The unsandboxed function (documented as unconfined) reaches them: the probe works.
    r = host.invoke("open", params={"paths": json.dumps(paths)})
    assert json_of(r)[str(run / "records.sock")]["connect"] == "connected"
