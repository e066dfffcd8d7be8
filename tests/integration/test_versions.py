"""Versions and aliases with real processes (issue 17, points 4 and 5): publish through the
admin channel, invoke versions and aliases on function URLs and the Invoke API, weighted
aliases, the version inside the function, pruning, a restart, and what a function or a caller
may try against them. The module's host runs on each store backend (SQLite, and PostgreSQL on
a database of the tests' server): its tests run once on each."""
from __future__ import annotations

import collections
import json
import os

import pytest

from sora.config import StoreConfig
from sora.control import admin
from sora.versions.api import VersionsApi
from sora.versions.store import VersionStore
from tests.support import SoraHost, wait_for, write_function

pytestmark = pytest.mark.integration

CODE = """
const fs = require('fs');
exports.handler = async (event, context) => {
  const out = { code: '%s', env: process.env.AWS_LAMBDA_FUNCTION_VERSION,
                ctx: context.functionVersion, arn: context.invokedFunctionArn };
  if ((event.queryStringParameters || {}).write) {
    for (const target of [__filename, __dirname + '/new.js']) {
      try { fs.writeFileSync(target, 'changed'); out.wrote = (out.wrote || []).concat(target); }
      catch (err) { out.refused = (out.refused || []).concat(err.code); }
    }
  }
  return out;
};
"""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def host(request, tmp_path_factory):
    store = database = None
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres_server")
        database = server.create_database()
        store = StoreConfig(kind="postgresql", url=server.url(database), poolSize=4)
    base = tmp_path_factory.mktemp("versions")
    fn_dir = write_function(base / "fns", "ver", {"index.js": CODE % "A"}, name="ver")
    host = SoraHost(base, [fn_dir], https=False, extra={"versions": {"keep": 3}}, store=store)
    host.fn_dir = fn_dir
    host.state_dir = str(base / "state")
    host.start()
    yield host
    assert host.stop() == 0
    if database:
        server.drop_database(database)


def publish(host, description=""):
    answer = admin.request(host.state_dir, "publish", {"function": "ver",
                                                       "description": description}, 120)
    assert "error" not in answer, answer
    return answer


def call(host, qualifier=None, **kwargs):
    name = f"ver:{qualifier}" if qualifier else "ver"
    r = host.invoke(name, **kwargs)
    assert r.status_code == 200, r.text
    return r.json(), r.headers


def test_versions_and_aliases(host):
    one = publish(host, "first")
    assert one["Version"] == "1" and one["Description"] == "first"
    assert one["FunctionArn"].endswith(":function:ver:1") and one["CodeSha256"]
    assert publish(host)["Version"] == "1"   # nothing changed: the same version

    (host.fn_dir / "index.js").write_text(CODE % "B")
    report = admin.request(host.state_dir, "reload", {"functions": ["ver"], "setup": "auto"},
                           120)
    assert report["functions"]["ver"]["action"] == "replaced", report
    assert publish(host)["Version"] == "2"

    body, headers = call(host, "1")
    assert body["code"] == "A" and body["env"] == "1" and body["ctx"] == "1"
    assert body["arn"].endswith(":function:ver:1")
    assert headers["X-Amz-Executed-Version"] == "1"
    record = host.record(headers["X-Sora-Request-Id"])
    assert record["version"] == "1" and record["function"] == "ver"
    body, headers = call(host, "2")
    assert body["code"] == "B" and body["ctx"] == "2" and headers["X-Amz-Executed-Version"] == "2"
    body, headers = call(host)
    assert body["code"] == "B" and body["ctx"] == "$LATEST" and body["env"] == "$LATEST"
    assert headers["X-Amz-Executed-Version"] == "$LATEST"

    # The Invoke API: Qualifier and name:qualifier.
    r = host.session.post(f"{host.url}/2015-03-31/functions/ver/invocations?Qualifier=1",
                          data=b"{}", timeout=30)
    assert r.status_code == 200 and r.json()["code"] == "A", r.text
    assert r.headers["X-Amz-Executed-Version"] == "1"
    r = host.session.post(f"{host.url}/2015-03-31/functions/ver:2/invocations", data=b"{}",
                          timeout=30)
    assert r.json()["code"] == "B" and r.headers["X-Amz-Executed-Version"] == "2"

    # An alias with weights: 1,000 calls within 5 % of the weight.
    api = VersionsApi(host.state_dir, store=host.store)
    live = api.create_alias("ver", "live", "1",
                            routing_config={"AdditionalVersionWeights": {"2": 0.3}})
    assert live["AliasArn"].endswith(":function:ver:live")
    counts = collections.Counter(call(host, "live")[1]["X-Amz-Executed-Version"]
                                 for _ in range(1000))
    assert set(counts) == {"1", "2"} and abs(counts["2"] / 1000 - 0.3) <= 0.05, counts
    # Moved: the next call runs the new version.
    api.update_alias("ver", "live", "2", routing_config={})
    body, headers = call(host, "live")
    assert body["code"] == "B" and headers["X-Amz-Executed-Version"] == "2"
    assert api.previous_version("ver", "live") == "1"


def test_a_version_cannot_change_its_own_code(host):
    wait_for(lambda: VersionStore(host.state_dir, host.store).exists("ver", "1"), 60)
    code = VersionStore(host.state_dir, host.store).config("ver", "1").directory
    before = open(os.path.join(code, "index.js")).read()
    body, _ = call(host, "1", params={"write": "1"})
    assert "wrote" not in body and body["refused"], body
    assert open(os.path.join(code, "index.js")).read() == before
    assert not os.path.exists(os.path.join(code, "new.js"))


@pytest.mark.parametrize("qualifier, status", [
    ("..%2Fx", 400), ("1%2F..%2F..%2F", 400), ("99999999999999999999", 400), ("%C3%BC", 400),
    ("0", 400), ("", 400), ("77", 404), ("nosuch", 404)])
def test_bad_qualifiers_are_refused(host, qualifier, status):
    r = host.session.post(
        f"{host.url}/2015-03-31/functions/ver/invocations?Qualifier={qualifier}", data=b"{}",
        timeout=30)
    assert r.status_code == status, r.text
    assert r.headers["x-amzn-ErrorType"] == ("InvalidParameterValueException" if status == 400
                                             else "ResourceNotFoundException")
    r = host.invoke(f"ver:{qualifier}")
    assert r.status_code in (status, 404), r.text   # (a %2F ends the name in the path)


def test_async_event_runs_on_its_version(host):
    r = host.session.post(f"{host.url}/2015-03-31/functions/ver/invocations?Qualifier=live",
                          data=json.dumps({}).encode(),
                          headers={"X-Amz-Invocation-Type": "Event"}, timeout=30)
    assert r.status_code == 202, r.text
    request_id = r.headers["X-Sora-Request-Id"]
    record = wait_for(lambda: (found := host.record(request_id)).get("version") and found, 60,
                      what="the event's run")
    assert record["version"] == "2" and record["function"] == "ver"
    assert record["status"] == "ok", record


def test_pruning_keeps_aliased_versions_and_a_restart_keeps_all(host):
    api = VersionsApi(host.state_dir, store=host.store)
    api.create_alias("ver", "old", "1")
    for code in "CDE":
        (host.fn_dir / "index.js").write_text(CODE % code)
        publish(host)
    store = VersionStore(host.state_dir, host.store)
    # keep 3: 3, 4 and 5 by number, 1 and 2 by their aliases.
    assert store.numbers("ver") == [1, 2, 3, 4, 5]
    api.delete_alias("ver", "old")
    (host.fn_dir / "index.js").write_text(CODE % "F")
    assert publish(host)["Version"] == "6"
    assert store.numbers("ver") == [2, 4, 5, 6]   # 1 and 3 pruned; 2 is live's
    assert host.session.post(f"{host.url}/2015-03-31/functions/ver/invocations?Qualifier=1",
                             data=b"{}", timeout=30).status_code == 404

    assert host.stop() == 0
    restarted = host.restarted()
    restarted.start()
    try:
        body, headers = call(restarted, "live")
        assert body["code"] == "B" and headers["X-Amz-Executed-Version"] == "2"
        body, _ = call(restarted, "6")
        assert body["code"] == "F" and body["ctx"] == "6"
        listed = [v["Version"] for v in VersionsApi(
            host.state_dir, store=host.store).list_versions(_latest(host))]
        assert listed == ["$LATEST", "2", "4", "5", "6"]
    finally:
        host.proc, host._log = restarted.proc, restarted._log   # the fixture stops it


def _latest(host):
    from sora.config import load_function_config
    return load_function_config(str(host.fn_dir))


PLANTER = """
const fs = require('fs');
exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  if (q.plant) {   // replace its own files with links to the host's secrets before a publish
    fs.unlinkSync(__dirname + '/data.txt');
    fs.symlinkSync(q.plant, __dirname + '/data.txt');
    fs.symlinkSync('/etc', __dirname + '/etc-link');
    return { planted: true };
  }
  try { return { data: fs.readFileSync(__dirname + '/data.txt', 'utf8') }; }
  catch (err) { return { error: err.code }; }
};
"""


def test_links_planted_before_publish_do_not_copy_host_secrets(tmp_path):
    secret = tmp_path / "host-secret"
    secret.write_text("TOP-SECRET")
    secret.chmod(0o600)
    fn_dir = write_function(tmp_path / "fns", "planter",
                            {"index.js": PLANTER, "data.txt": "plain"}, name="planter",
                            writableFolder=True)
    host = SoraHost(tmp_path, [fn_dir], https=False)
    host.start()
    try:
        r = host.invoke("planter", params={"plant": str(secret)})
        assert r.status_code == 200 and r.json() == {"planted": True}, r.text
        assert os.path.islink(fn_dir / "data.txt")
        answer = admin.request(str(tmp_path / "state"), "publish", {"function": "planter"}, 120)
        assert answer["Version"] == "1", answer
        code = VersionStore(str(tmp_path / "state")).config("planter", "1").directory
        assert os.path.islink(os.path.join(code, "data.txt"))   # a link, as it was
        assert os.readlink(os.path.join(code, "data.txt")) == str(secret)
        for root, _dirs, files in os.walk(code):
            for name in files:
                path = os.path.join(root, name)
                if not os.path.islink(path):
                    assert b"TOP-SECRET" not in open(path, "rb").read(), path
        r = host.invoke("planter:1")
        assert r.status_code == 200 and "TOP-SECRET" not in r.text, r.text
        # writableFolder is $LATEST's: the version's own copy is read-only to it.
        r = host.invoke("planter:1", params={"plant": "/etc/hostname"})
        assert r.status_code == 502 and ("EROFS" in r.text or "EACCES" in r.text), r.text
        assert os.readlink(os.path.join(code, "data.txt")) == str(secret)
    finally:
        assert host.stop() == 0


def test_an_idle_version_worker_exits_and_a_call_wakes_it(tmp_path):
    fn_dir = write_function(tmp_path / "fns", "nap", {"index.js": CODE % "N"}, name="nap",
                            idleTimeout=1)
    host = SoraHost(tmp_path, [fn_dir], https=False)
    host.start()
    try:
        assert admin.request(str(tmp_path / "state"), "publish", {"function": "nap"},
                             120)["Version"] == "1"
        assert host.invoke("nap:1").json()["ctx"] == "1"
        versions = host.health()["versions"]
        assert versions["nap:1"]["workers"] == 1, versions
        # No instance after idleTimeout, then no worker after another.
        wait_for(lambda: host.health()["versions"]["nap:1"]["workers"] == 0, 30,
                 what="the version's worker to exit idle")
        assert "its worker exits" in host.log()
        assert host.health()["status"] == "ok"
        for _ in range(3):   # woken again, at once
            r = host.invoke("nap:1")
            assert r.status_code == 200 and r.json()["ctx"] == "1", r.text
    finally:
        assert host.stop() == 0
