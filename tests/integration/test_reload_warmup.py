"""A reload's warm-up call (issue 17 point 1: "new instances start and answer one warm-up
call, then new calls go to them"), with the real supervisor, gateway and workers: the new
generation answers exactly one call with `{"source": "sora.warmup"}` before a caller's call
reaches the new code, logged with its START/END/REPORT lines and with no invocation record; a
handler that throws on it still warms; one that hangs past its timeout fails the switch and
the previous code keeps serving."""
from __future__ import annotations

import re

import pytest

from tests.integration.test_reload import reload_cli, set_version
from tests.support import SoraHost, wait_for, write_function

pytestmark = pytest.mark.integration

# Each call appends "<version> <source>" to calls.txt in its folder (writableFolder); how it
# takes the warm-up depends on its version: "...-throw" throws, "...-hang" never answers.
RECORDING = """
const fs = require('fs');
const version = fs.readFileSync(__dirname + '/version.txt', 'utf8').trim();
exports.handler = async (event) => {
  const source = (event && event.source) || 'caller';
  fs.appendFileSync(__dirname + '/calls.txt', `${version} ${source}\\n`);
  console.log(`called by ${source}`);
  if (source === 'sora.warmup') {
    if (version.endsWith('-throw')) throw new Error('no warm-up for me');
    if (version.endsWith('-hang')) await new Promise(() => {});
    return { warmed: true };
  }
  return { version };
};
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("warmup")
    dirs = [write_function(base / "fns", "warmed", {"index.js": RECORDING, "version.txt": "w1"},
                           name="warmed", auth="none", writableFolder=True, timeout=2)]
    host = SoraHost(base, dirs, https=False)
    host.start(wait_functions=["warmed"])
    yield host
    assert host.stop() == 0
    assert host.leftovers() == []


def calls(host: SoraHost) -> list[str]:
    path = host.base / "fns" / "warmed" / "calls.txt"
    return path.read_text().splitlines() if path.exists() else []


def function_log(host: SoraHost) -> str:
    return (host.base / "state" / "logs" / "warmed.log").read_text(errors="replace")


def test_a_switch_makes_one_warm_up_call_before_the_first_callers_call(host):
    assert host.invoke("warmed").json() == {"version": "w1"}
    assert calls(host) == ["w1 caller"]   # a host's start makes no warm-up call
    set_version(host.base / "fns" / "warmed", "w2")
    status, report = reload_cli(host, "--function", "warmed")
    assert status == 0 and report["functions"]["warmed"] == {"action": "replaced"}, report
    assert [c for c in calls(host) if c.startswith("w2")] == ["w2 sora.warmup"]
    assert host.invoke("warmed").json() == {"version": "w2"}
    assert calls(host)[-2:] == ["w2 sora.warmup", "w2 caller"]
    # Logged like any call, with its START/END/REPORT lines (the cold start's Init Duration
    # is the warm-up's), but not a caller's call: no invocation record.
    text = wait_for(lambda: "called by caller" in (t := function_log(host)) and t,
                    what="the caller's lines in the function log")
    warm_up_id = re.search(r"(\S+) stdout called by sora\.warmup", text).group(1)
    assert f"START RequestId: {warm_up_id} Version: $LATEST" in text
    assert f"END RequestId: {warm_up_id}" in text
    report_line = next(line for line in text.splitlines()
                       if f"REPORT RequestId: {warm_up_id}" in line)
    assert "Init Duration" in report_line
    assert host.session.get(f"{host.url}/api/invocations/{warm_up_id}",
                            timeout=5).status_code == 404


def test_a_handler_that_throws_on_the_warm_up_still_switches(host):
    set_version(host.base / "fns" / "warmed", "w3-throw")
    status, report = reload_cli(host, "--function", "warmed")
    assert status == 0 and report["functions"]["warmed"] == {"action": "replaced"}, report
    assert host.invoke("warmed").json() == {"version": "w3-throw"}
    assert [c for c in calls(host) if c.startswith("w3")] == ["w3-throw sora.warmup",
                                                              "w3-throw caller"]


def test_a_warm_up_past_the_timeout_fails_the_switch_and_the_old_code_serves(host):
    folder = host.base / "fns" / "warmed"
    before = host.invoke("warmed").json()["version"]
    set_version(folder, "w4-hang")
    status, report = reload_cli(host, "--function", "warmed")
    assert status == 1, report
    entry = report["functions"]["warmed"]
    assert entry["action"] == "failed", entry
    assert "warm-up" in entry["reason"] and "timed out" in entry["reason"], entry
    assert host.invoke("warmed").json() == {"version": before}
    health = host.function_state("warmed")
    assert health["state"] == "RUNNING"
    assert health["reload"]["state"] == "failed" and health["reload"]["serving"] == "previous"
    assert [c for c in calls(host) if c.startswith("w4")] == ["w4-hang sora.warmup"]
    # Mended by the next change.
    set_version(folder, "w5")
    status, report = reload_cli(host, "--function", "warmed")
    assert status == 0, report
    assert host.invoke("warmed").json() == {"version": "w5"}
