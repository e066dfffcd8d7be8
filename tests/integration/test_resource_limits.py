"""cgroup limits per instance: memory (Sora.OutOfMemory, told by the cgroup's OOM counter) and
pids (a fork bomb is contained); the host and the other functions are unaffected."""
from __future__ import annotations

import pytest

from sora.isolation import cgroups
from tests.integration import functions as F
from tests.support import json_of, served, write_function

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(cgroups.detect() is None, reason="no writable cgroup "
                                 "hierarchy with a memory controller on this machine")]

HOG = """
const { spawn } = require('child_process');
const held = [];
exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  if (q.mb) {
    for (let i = 0; i < Number(q.mb); i++) held.push(Buffer.alloc(1 << 20, 1));
    return { held: held.length };
  }
  if (q.fork) {
    let started = 0, refused = 0;
    for (let i = 0; i < Number(q.fork); i++) {
      try {
        const child = spawn('sleep', ['30']);
        await new Promise((resolve) => {
          child.once('spawn', () => { started++; resolve(); });
          child.once('error', () => { refused++; resolve(); });
        });
      } catch (err) { refused++; }
    }
    return { started, refused };
  }
  return { instance: process.env.AWS_LAMBDA_LOG_STREAM_NAME };
};
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("limits")
    fns = base / "fns"
    dirs = [write_function(fns, "hog", {"index.js": HOG}, name="hog", memory=128, instances=1,
                           timeout=60),
            write_function(fns, "forker", {"index.js": HOG}, name="forker", memory=2048,
                           instances=1, timeout=60),
            write_function(fns, "calm", {"index.js": F.ECHO}, name="calm")]
    yield from served(base, dirs, https=False)


def test_health_says_which_cgroups_are_in_force(host):
    assert host.health()["cgroups"] == cgroups.detect()


def test_memory_past_the_limit_is_out_of_memory_and_the_next_call_gets_a_fresh_instance(host):
    first = json_of(host.invoke("hog"))["instance"]
    assert json_of(host.invoke("hog", params={"mb": "32"}))["held"] == 32   # within 128 MB
    r = host.invoke("hog", params={"mb": "400"})
    assert r.status_code == 502, r.text
    body = json_of(r)
    assert body["errorType"] == "Sora.OutOfMemory" and "128 MB" in body["errorMessage"]
    record = host.record(r.headers["X-Sora-Request-Id"])
    assert record["status"] == "crashed" and record["errorType"] == "Sora.OutOfMemory"
    after = host.invoke("hog")
    assert after.status_code == 200 and json_of(after)["instance"] != first
    assert host.invoke("calm").status_code == 200


def test_a_fork_bomb_is_contained(host):
    r = host.invoke("forker", params={"fork": "700"})
    assert r.status_code == 200, r.text
    body = json_of(r)
    assert body["refused"] > 0 and body["started"] < cgroups.PIDS_MAX, body
    assert host.invoke("calm").status_code == 200
