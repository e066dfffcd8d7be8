"""Issue 18's config on a real host: a function with only a schedule (and a watched folder) has
no function URL (404 as an unknown name) but the Invoke API and the snapshot its children read
carry it and its triggers; one watching the state dir is reported broken, the others serve."""
from __future__ import annotations

import json

import pytest

from tests.integration import functions as F
from tests.support import SoraHost, lambda_client, write_function

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("trigger-config")
    fns = base / "fns"
    (base / "drop").mkdir()
    dirs = [
        write_function(fns, "echo", {"index.js": F.ECHO}, name="echo"),
        write_function(fns, "nightly", {"index.js": F.ECHO}, name="nightly", trigger=[
            {"schedule": "cron(0 3 * * ? *)", "timezone": "Europe/Paris", "enabled": False},
            {"file": {"path": str(base / "drop"), "enabled": False}}]),
        write_function(fns, "snoop", {"index.js": F.ECHO}, name="snoop", trigger=[
            "http", {"file": {"path": str(base / "state"), "enabled": False}}]),
    ]
    (base / "state").mkdir()
    host = SoraHost(base, dirs, https=False)
    host.start(wait_functions=["echo", "nightly"])
    yield host
    assert host.stop() == 0


def test_a_function_without_http_has_no_url_but_is_invoked_by_the_api(host):
    assert host.invoke("echo").status_code == 200
    r = host.invoke("nightly", method="POST", data=b"{}")
    unknown = host.invoke("nosuch", method="POST", data=b"{}")
    assert r.status_code == unknown.status_code == 404
    assert r.json()["errorType"] == unknown.json()["errorType"] == "ResourceNotFoundException"
    assert "/functions/nightly" not in host.log(whole=True)   # not announced as a URL
    out = lambda_client(host.url).invoke(FunctionName="nightly", Payload=b'{"n": 1}')
    assert out["StatusCode"] == 200 and json.loads(out["Payload"].read()) is not None


def test_a_function_watching_the_state_dir_is_broken_and_the_others_serve(host):
    health = host.health()["functions"]
    assert health["nightly"]["state"] == "RUNNING" and health["echo"]["state"] == "RUNNING"
    snoop = health["snoop"]
    assert snoop["state"] != "RUNNING"
    assert "trigger[1].file.path: expected a folder outside stateDir" in json.dumps(snoop)


def test_the_snapshot_carries_the_triggers(host):
    from sora.config_snapshot import read
    functions, broken = read(str(host.base / "state" / "run" / "functions.json"))
    nightly = next(fn for fn in functions if fn.name == "nightly")
    assert not nightly.http
    assert [t.kind for t in nightly.trigger] == ["schedule", "file"]
    assert nightly.schedules[0].timezone == "Europe/Paris"
    assert any(b.name == "snoop" for b in broken)
