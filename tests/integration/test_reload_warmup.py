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
from tests.integration.functions import PROVIDED_LOOP
from tests.support import SoraHost, wait_for, write_function

pytestmark = pytest.mark.integration

# Each call appends "<version> <source>" to calls.txt in its folder (writableFolder); how it
# takes the warm-up depends on its version: "...-throw" throws, "...-hang" never answers,
# "...-exit" ends its runtime.
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
    if (version.endsWith('-exit')) process.exit(3);
    return { warmed: true };
  }
  return { version };
};
"""

# The same in Python, and in a provided runtime's bootstrap (the warm-up comes through the
# Runtime API like any event).
RECORDING_PY = """
import os
HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "version.txt")) as fh:
    VERSION = fh.read().strip()

def handler(event, context):
    source = event.get("source", "caller") if isinstance(event, dict) else "caller"
    with open(os.path.join(HERE, "calls.txt"), "a") as fh:
        fh.write(f"{VERSION} {source}\\n")
    return {"version": VERSION}
"""

RECORDING_PROVIDED = PROVIDED_LOOP.replace("while true; do", (
    'VERSION=$(cat "$LAMBDA_TASK_ROOT/version.txt")\nwhile true; do')) + r"""  case "$EVENT" in
    *'"source":"sora.warmup"'*) SOURCE=sora.warmup ;;
    *) SOURCE=caller ;;
  esac
  echo "$VERSION $SOURCE" >> "$LAMBDA_TASK_ROOT/calls.txt"
  curl -sS -o /dev/null "$API/invocation/$ID/response" -d "{\"version\": \"$VERSION\"}"
done
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("warmup")
    fns = base / "fns"
    dirs = [write_function(fns, "warmed", {"index.js": RECORDING, "version.txt": "w1"},
                           name="warmed", auth="none", writableFolder=True, timeout=2),
            write_function(fns, "warmed-python", {"main.py": RECORDING_PY, "version.txt": "p1"},
                           name="warmed-python", auth="none", writableFolder=True,
                           language="python", entrypoint="main.py"),
            write_function(fns, "warmed-provided", {"bootstrap": RECORDING_PROVIDED,
                                                    "version.txt": "p1"},
                           name="warmed-provided", auth="none", writableFolder=True,
                           language="provided")]
    (fns / "warmed-provided" / "bootstrap").chmod(0o755)
    spec = fns / "warmed-provided" / "sora.yaml"   # the nodejs entrypoint does not apply
    spec.write_text(spec.read_text().replace("entrypoint: index.js\n", ""))
    host = SoraHost(base, dirs, https=False)
    host.start(wait_functions=["warmed", "warmed-python", "warmed-provided"])
    yield host
    assert host.stop() == 0
    assert host.leftovers() == []


def calls(host: SoraHost, name: str = "warmed") -> list[str]:
    path = host.base / "fns" / name / "calls.txt"
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


@pytest.mark.parametrize("failure,reason", [("hang", "Task timed out after 2.00 seconds"),
                                            ("exit", "Runtime exited with exit status 3")])
def test_a_warm_up_past_the_timeout_or_ending_its_runtime_fails_the_switch(host, failure,
                                                                           reason):
    folder = host.base / "fns" / "warmed"
    before = host.invoke("warmed").json()["version"]
    broken = f"w4-{failure}"
    set_version(folder, broken)
    status, report = reload_cli(host, "--function", "warmed")
    assert status == 1, report
    entry = report["functions"]["warmed"]
    assert entry["action"] == "failed", entry
    assert f"the warm-up call failed: {reason}" in entry["reason"], entry
    assert host.invoke("warmed").json() == {"version": before}
    health = host.function_state("warmed")
    assert health["state"] == "RUNNING"
    assert health["reload"]["state"] == "failed" and health["reload"]["serving"] == "previous"
    assert [c for c in calls(host) if c.startswith(broken)] == [f"{broken} sora.warmup"]
    # Mended by the next change.
    set_version(folder, f"w5-{failure}-mended")
    status, report = reload_cli(host, "--function", "warmed")
    assert status == 0, report
    assert host.invoke("warmed").json() == {"version": f"w5-{failure}-mended"}


@pytest.mark.parametrize("name", ["warmed-python", "warmed-provided"])
def test_python_and_provided_functions_get_the_warm_up_call(host, name):
    assert host.invoke(name).json() == {"version": "p1"}
    set_version(host.base / "fns" / name, "p2")
    status, report = reload_cli(host, "--function", name)
    assert status == 0 and report["functions"][name] == {"action": "replaced"}, report
    assert host.invoke(name).json() == {"version": "p2"}
    assert calls(host, name) == ["p1 caller", "p2 sora.warmup", "p2 caller"]
