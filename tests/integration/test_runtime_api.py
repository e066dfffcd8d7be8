"""Issue 14 point 3: a `provided` instance's Runtime API serves that instance only.

The adapter listens on 127.0.0.1, which every function with `network: true` shares with the
host. An attacker function is handed the victim adapter's port (found from the host, as the
attacker could from /proc/net/tcp) and tries what a hijack needs: park a GET .../next to be given
the victim's next invocation (its event, with its caller's headers), and POST a result for the
invocation the victim is working on. Both must be refused, and the victim must answer every
sync call and async event itself. A second concurrent GET .../next from the instance itself is
refused too, and the one already waiting keeps its place.
"""
from __future__ import annotations

import json
import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration import functions as F
from tests.support import SoraHost, json_of, processes_in, wait_for, write_function

pytestmark = pytest.mark.integration

SECRET = "caller-secret-4c1d"

# Says which request id it saw (in its log) and answers as itself; `sleep=` in the query holds
# the invocation 2 s, the window in which an attacker would post a result for it.
VICTIM = F.PROVIDED_LOOP + r"""  echo "victim saw $ID"
  case "$EVENT" in *'"rawQueryString":"sleep='*) sleep 2 ;; esac
  curl -sS -o /dev/null "$API/invocation/$ID/response" -d "{\"by\": \"victim\", \"id\": \"$ID\"}"
done
"""

# For `ms` milliseconds: POST a result for invocation `id` of the Runtime API on `port`, and
# park a GET .../next; whatever it is given, it answers as itself.
ATTACKER = r"""
const http = require('http');
const API = '/2018-06-01/runtime/invocation/';
function send(port, method, path, body, timeoutMs) {
  return new Promise((resolve) => {
    const req = http.request({ host: '127.0.0.1', port, method, path, agent: false,
                               timeout: timeoutMs }, (res) => {
      let data = '';
      res.on('data', (c) => { data += c; });
      res.on('end', () => resolve({ status: res.statusCode, body: data,
                                    id: res.headers['lambda-runtime-aws-request-id'] }));
      res.on('error', (e) => resolve({ status: e.code }));
    });
    req.on('timeout', () => { req.destroy(); resolve({ status: 'timeout' }); });
    req.on('error', (e) => resolve({ status: e.code }));
    req.end(body);
  });
}
exports.handler = async (event) => {
  const { port, id, ms } = JSON.parse(event.body);
  const seen = { next: [], posts: [], stolen: [], refusals: [] };
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const posted = await send(port, 'POST', API + id + '/response', '{"by":"attacker"}', 500);
    seen.posts.push(posted.status);
    const next = await send(port, 'GET', API + 'next', undefined, 300);
    seen.next.push(next.status);
    if (next.body) seen.refusals.push(next.body);
    if (next.status === 200) {
      seen.stolen.push({ id: next.id, event: next.body });
      const answer = await send(port, 'POST', API + next.id + '/response', '{"by":"attacker"}', 500);
      seen.posts.push(answer.status);
    }
    await new Promise((r) => setTimeout(r, 30));
  }
  return seen;
};
"""

# Two GET .../next at once on two connections, at its first invocation: it answers with what
# each got (one must be refused, the other given the invocation), then serves normally.
DOUBLE_NEXT = r"""#!/usr/bin/python3
import http.client, json, os, threading
HOST, PORT = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
API = "/2018-06-01/runtime/invocation/"

def ask(results, i):
    conn = http.client.HTTPConnection(HOST, int(PORT), timeout=20)
    try:
        conn.request("GET", API + "next")
        res = conn.getresponse()
        results[i] = (res.status, res.getheader("Lambda-Runtime-Aws-Request-Id"), res.read().decode())
    except OSError as exc:
        results[i] = (type(exc).__name__, None, "")

def post(request_id, body):
    conn = http.client.HTTPConnection(HOST, int(PORT), timeout=20)
    conn.request("POST", API + request_id + "/response", json.dumps(body))
    conn.getresponse().read()

results, answered = [None, None], threading.Semaphore(0)

def ask_and_tell(i):
    ask(results, i)
    answered.release()

for i in (0, 1):
    threading.Thread(target=ask_and_tell, args=(i,), daemon=True).start()
answered.acquire()   # the refused one at once, or the waiting one with the test's first call
answered.acquire(timeout=3)
if not any(r and r[0] == 200 for r in results):
    answered.acquire()
given = [r for r in results if r and r[0] == 200]
post(given[0][1], {"statuses": sorted(str(r[0] if r else "still waiting") for r in results),
                   "refusal": [r[2] for r in results if r and r[0] != 200]})
while True:
    results = [None]
    ask(results, 0)
    post(results[0][1], {"served": True})
"""


def executable(directory, name):
    path = directory / name
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return directory


def provided(fns, folder, bootstrap, **config):
    d = executable(write_function(fns, folder, {"bootstrap": bootstrap}, name=folder,
                                  language="provided", **config), "bootstrap")
    spec = d / "sora.yaml"   # write_function's nodejs entrypoint does not apply
    spec.write_text(spec.read_text().replace("entrypoint: index.js\n", ""))
    return d


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("runtime-api")
    fns = base / "fns"
    dirs = [provided(fns, "victim", VICTIM, instances=1, timeout=10),
            provided(fns, "victim-none", VICTIM, instances=1, timeout=10, isolation="none"),
            provided(fns, "double-next", DOUBLE_NEXT, instances=1, timeout=10),
            write_function(fns, "attacker", {"index.js": ATTACKER}, name="attacker",
                           timeout=20, network=True)]
    h = SoraHost(base, dirs, https=False)
    h.start()
    yield h
    assert h.stop() == 0
    assert not h.leftovers(), h.leftovers()


def adapter_port(host, name) -> int:
    """The victim adapter's listening port, as the host (or any process reading
    /proc/net/tcp) sees it."""
    def listening():
        for proc in processes_in(host.base / "fns" / name):
            if any("runtime_api.py" in part for part in proc.cmdline()):
                ports = [c.laddr.port for c in proc.net_connections("tcp")
                         if c.status == "LISTEN"]
                if ports:
                    return ports[0]
        return None
    return wait_for(listening, timeout=30, what=f"{name}'s Runtime API to listen")


def victim_log(host, name) -> str:
    path = host.base / "state" / "logs" / f"{name}.log"
    return path.read_text() if path.exists() else ""


@pytest.mark.parametrize("victim", ["victim", "victim-none"])
def test_another_function_cannot_take_over_the_runtime_api(host, victim):
    assert json_of(host.invoke(victim))["by"] == "victim"
    port = adapter_port(host, victim)
    # An async event the victim holds for 2 s: the attacker posts a result for its id meanwhile.
    queued = host.invoke(victim, method="POST", params={"sleep": "1"}, data="held",
                         headers={"X-Sora-Invocation-Type": "Event"})
    assert queued.status_code == 202, queued.text
    held_id = queued.headers["X-Sora-Request-Id"]
    wait_for(lambda: f"victim saw {held_id}" in victim_log(host, victim), timeout=30,
             what="the victim to start on the held event")
    answers = []
    with ThreadPoolExecutor(1) as pool:
        attack = pool.submit(host.invoke, "attacker", method="POST",
                             json={"port": port, "id": held_id, "ms": 4000})
        # Sync calls while the attacker keeps trying: each must reach the victim.
        while not attack.done():
            r = host.invoke(victim, params={"n": str(len(answers))},
                            headers={"X-Caller-Token": SECRET})
            answers.append((r.status_code, r.headers.get("X-Sora-Request-Id"), r.text))
        report = json_of(attack.result())
    after = host.invoke(victim, method="POST", data="after",
                        headers={"X-Sora-Invocation-Type": "Event"})
    assert after.status_code == 202
    after_id = after.headers["X-Sora-Request-Id"]

    assert report["next"] and report["posts"], report
    assert report["stolen"] == [], report
    # Refused at once (403, or the connection closed on it), never parked (a timeout) nor
    # given work (200); its results never accepted (202).
    assert all(s in (403, "ECONNRESET", "EPIPE") for s in report["next"] + report["posts"]), \
        report
    assert all(json.loads(body)["errorType"] == "AccessDeniedException"
               for body in report["refusals"]), report
    assert SECRET not in json.dumps(report)
    assert answers
    for status, request_id, text in answers:
        assert status == 200, text
        assert json.loads(text) == {"by": "victim", "id": request_id}
    # Both events ran in the victim (the held one's result could only be the victim's).
    wait_for(lambda: f"victim saw {after_id}" in victim_log(host, victim), timeout=30,
             what="the victim to run the event sent after the attack")
    assert host.record(held_id, timeout=30)["status"] == "ok"
    assert host.invoke(victim).status_code == 200


def test_a_second_concurrent_next_is_refused_and_the_first_keeps_its_place(host):
    r = host.invoke("double-next")
    assert r.status_code == 200, r.text
    body = json_of(r)
    # One was given this invocation; the other was refused at once (not left waiting forever,
    # nor given the invocation in place of the one parked first).
    assert body["statuses"] == ["200", "409"], body
    refusal = json.loads(body["refusal"][0])
    assert refusal["errorType"] == "Runtime.ConcurrentNext", refusal
    # And it goes on serving.
    assert json_of(host.invoke("double-next")) == {"served": True}
