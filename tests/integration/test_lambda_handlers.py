"""Functions written the way AWS's documentation shows them, and their mistakes caught early.

- `handler: index.handler` (Node.js, an ES module), `src/app.handler` (a CommonJS file in a
  subfolder), Python's `app.lambda_handler` and `src/app.handler`, without `entrypoint`; and
  `entrypoint: index.mjs` with `handler: index.handler` (which failed with
  `index.mjs.index.handler is undefined`).
- A syntax error (CommonJS, an ES module's dependency, Python) and a handler the module does not
  export: `sora validate` and `sora-supervisor check` load each module as an instance would and
  report them with file, line and column; the FATAL reason in /healthz and `sora ls` says the
  same, with paths relative to the function folder only.
- A thrown error's trace holds none of Sora's frames; Python logs it as Lambda does.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import SoraHost, json_of, processes_in, wait_for, write_function

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
SORA_PACKAGE = str(Path(__file__).resolve().parents[2] / "sora")

NODE_ESM = """\
export const handler = async (event) => {
  if (event.fail) throw new TypeError(`bad input: ${event.fail}`);
  return { from: 'index.mjs' };
};
"""
NODE_CJS = "exports.handler = async () => ({ from: 'src/app.js' });\n"
PY_APP = """\
def helper(value):
    return 1 / value


def lambda_handler(event, context):
    if event.get("fail"):
        return helper(0)
    return {"from": "app.py"}
"""
PY_NESTED = "def handler(event, context):\n    return {'from': 'src/app.py'}\n"

GOOD = {
    "lam-esm": ({"index.mjs": NODE_ESM}, {"handler": "index.handler"}),
    "lam-nested": ({"src/app.js": NODE_CJS}, {"handler": "src/app.handler"}),
    "lam-py": ({"app.py": PY_APP}, {"language": "python", "handler": "app.lambda_handler"}),
    "lam-py-nested": ({"src/app.py": PY_NESTED},
                      {"language": "python", "handler": "src/app.handler"}),
    "lam-both": ({"index.mjs": NODE_ESM}, {"entrypoint": "index.mjs",
                                           "handler": "index.handler"}),
}
# name -> (files, config, what the reason must say)
BROKEN = {
    "bad-cjs": ({"index.js": "exports.handler = async () => {\n  return 1 +;\n};\n"},
                {"handler": "index.handler"},
                "Runtime.UserCodeSyntaxError: index.js:2:13: SyntaxError: Unexpected token ';'"),
    "bad-esm-dep": ({"index.mjs": "import { x } from './lib/util.mjs';\n"
                                  "export const handler = async () => x;\n",
                     "lib/util.mjs": "export const x = 1;\nexport const y = {\n  a: 1,,\n};\n"},
                    {"handler": "index.handler"},
                    "Runtime.UserCodeSyntaxError: lib/util.mjs:3:8: SyntaxError: Unexpected "
                    "token ','"),
    "no-export": ({"index.mjs": "export const main = async () => 1;\n"},
                  {"handler": "index.handler"},
                  "Runtime.HandlerNotFound: index.handler is undefined or not exported "
                  "(index.mjs exports main)"),
    "bad-py": ({"app.py": "def lambda_handler(event, context):\n    return {'a': 1\n"},
               {"language": "python", "handler": "app.lambda_handler"},
               "Runtime.UserCodeSyntaxError: app.py:2:12: Syntax error in module 'app': "),
    "no-py-handler": ({"app.py": PY_NESTED}, {"language": "python",
                                              "handler": "app.lambda_handler"},
                      "Runtime.HandlerNotFound: Handler 'lambda_handler' missing on module "
                      "'app' (app.py defines handler)"),
}


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("lambda-handlers")
    fns = base / "fns"
    dirs = [write_function(fns, name, files, name=name, memory=128,
                           **{"entrypoint": None, **config})
            for name, (files, config, *_) in {**GOOD, **BROKEN}.items()]
    host = SoraHost(base, dirs, https=False)
    host.start(wait_functions=list(GOOD))
    yield host
    assert host.stop() == 0


def invoke_api(host, name, event, tail=False):
    return host.session.post(f"{host.url}/2015-03-31/functions/{name}/invocations",
                             data=json.dumps(event), timeout=30,
                             headers={"X-Amz-Log-Type": "Tail"} if tail else {})


def test_handlers_written_as_aws_documents_them_serve(host):
    for name, (files, _) in GOOD.items():
        r = host.invoke(name)
        assert r.status_code == 200, (name, r.text)
        assert json_of(r) == {"from": next(iter(files))}, name


def test_load_errors_are_reported_before_serving_with_file_line_and_column(host):
    """`sora validate` and `sora-supervisor check` said `ok` for all of these; the host's
    FATAL reason (/healthz, `sora ls`) gave no line."""
    validate = subprocess.Popen([str(BIN / "sora"), "validate", str(host.config_path),
                                 "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    check = subprocess.Popen([str(BIN / "sora-supervisor"), "check", "--config",
                              str(host.config_path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    out, err = validate.communicate(timeout=240)
    assert validate.returncode == 1, err
    report = json.loads(out)
    assert report["valid"] is False
    assert {f["name"] for f in report["functions"]} == set(GOOD)
    assert all(f["loaded"] for f in report["functions"])
    reasons = {b["name"]: b["reason"] for b in report["broken"]}
    assert set(reasons) == set(BROKEN)
    for name, (*_, expected) in BROKEN.items():
        assert expected in reasons[name], (name, reasons[name])
        assert reasons[name].startswith(str(host.base / "fns" / name / "sora.yaml"))

    out, err = check.communicate(timeout=240)
    assert check.returncode == 1, err
    lines = out.splitlines()
    for name in GOOD:
        assert any(line.split()[:2] == ["ok", name] for line in lines), out
    for name, (*_, expected) in BROKEN.items():
        line = next(line for line in lines if line.split()[:2] == ["broken", name])
        assert expected in line, line

    # The host: FATAL, with the same words, and no host path in what callers get.
    for name, (*_, expected) in BROKEN.items():
        state = wait_for(lambda: (s := host.function_state(name))["state"] == "FATAL" and s,
                         timeout=60, what=f"{name} FATAL")
        assert expected in state["reason"], state["reason"]
        r = host.invoke(name)
        assert r.status_code in (502, 503), r.text
        assert str(host.base) not in r.text and SORA_PACKAGE not in r.text, r.text
    listed = subprocess.run([str(BIN / "sora"), "ls", "--json", "--host", host.url],
                            capture_output=True, text=True, timeout=60)
    reasons = {f["name"]: f.get("reason") or "" for f in json.loads(listed.stdout)["functions"]}
    for name, (*_, expected) in BROKEN.items():
        assert expected in reasons[name], reasons[name]


def test_thrown_errors_carry_no_sora_frames_and_python_logs_them_as_lambda(host):
    r = invoke_api(host, "lam-esm", {"fail": "node"})
    assert r.status_code == 200 and r.headers["X-Amz-Function-Error"] == "Unhandled"
    error = json_of(r)
    assert error["errorType"] == "TypeError" and error["errorMessage"] == "bad input: node"
    # The function's frame, and nothing of how Node called Sora's shim that called it.
    assert error["trace"][0] == "TypeError: bad input: node"
    assert len(error["trace"]) == 2 and "index.mjs:2:" in error["trace"][1], error["trace"]
    assert not any("bootstrap.cjs" in line or SORA_PACKAGE in line for line in error["trace"])

    r = invoke_api(host, "lam-py", {"fail": "python"}, tail=True)
    error = json_of(r)
    assert error["errorType"] == "ZeroDivisionError"
    trace = "".join(error["stackTrace"])
    assert 'app.py", line 7, in lambda_handler' in trace and ", in helper" in trace
    assert "bootstrap.py" not in trace and SORA_PACKAGE not in trace
    log = base64.b64decode(r.headers["X-Amz-Log-Result"]).decode()
    nbsp = "\u00a0"
    # awslambdaric's text format: one record, its indentation in no-break spaces.
    expected = ("[ERROR] ZeroDivisionError: division by zero\n"
                "Traceback (most recent call last):\n"
                f'{nbsp * 2}File "{host.base / "fns" / "lam-py" / "app.py"}", line 7, '
                f"in lambda_handler\n{nbsp * 4}return helper(0)\n")
    assert expected in log, log
    assert "bootstrap.py" not in log and SORA_PACKAGE not in log
    assert f'{nbsp * 2}File "' in log and ", in helper\n" in log

    # The same in the function's log file (`sora logs` reads it).
    logged = (host.base / "state" / "logs" / "lam-py.log")
    text = wait_for(lambda: "Traceback (most recent call last):" in logged.read_text() and
                    logged.read_text(), what="the traceback in the log file")
    assert "bootstrap.py" not in text and SORA_PACKAGE not in text
    assert os.path.basename(SORA_PACKAGE) + "/worker" not in text


def test_validate_notes_a_load_error_setup_may_fix_and_reports_it_without_setup(tmp_path):
    """A module whose dependency `setup` installs cannot load before setup has run: a note,
    not broken; the same module without setup fails as its instances would."""
    code = {"index.js": "const pad = require('left-pad');\nexports.handler = async () => 1;\n"}
    later = write_function(tmp_path, "later", code, name="later", entrypoint=None,
                           handler="index.handler", setup=["npm install left-pad"])
    never = write_function(tmp_path, "never", code, name="never", entrypoint=None,
                           handler="index.handler")
    ran = subprocess.run([str(BIN / "sora"), "validate", str(later), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    (fn,) = json.loads(ran.stdout)["functions"]
    assert fn["loaded"] is False and "setup has not run" in fn["note"]
    assert "Cannot find module 'left-pad'" in fn["note"]
    ran = subprocess.run([str(BIN / "sora"), "validate", str(never), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    (broken,) = json.loads(ran.stdout)["broken"]
    assert "cannot load index.js: Runtime.ImportModuleError: Error: Cannot find module " \
           "'left-pad'" in broken["reason"]
    assert "Require stack:\n- index.js" in broken["reason"]
    assert "bootstrap.cjs" not in broken["reason"] and SORA_PACKAGE not in broken["reason"]


def test_the_load_check_leaves_nothing_running(tmp_path):
    spawns = write_function(tmp_path, "spawns", {"index.js": (
        "require('child_process').spawn('sleep', ['300'], { stdio: 'ignore' });\n"
        "exports.handler = async () => 1;\n")}, name="spawns", entrypoint=None,
        handler="index.handler")
    ran = subprocess.run([str(BIN / "sora"), "validate", str(spawns), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert json.loads(ran.stdout)["functions"][0]["loaded"] is True
    wait_for(lambda: not processes_in(spawns), timeout=5, what="no process left in the folder")


def test_no_load_checks_the_config_alone(tmp_path):
    broken = write_function(tmp_path, "syntax", {"index.js": "exports.handler = (;\n"},
                            name="syntax", entrypoint=None, handler="index.handler")
    ran = subprocess.run([str(BIN / "sora"), "validate", str(broken), "--no-load", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert json.loads(ran.stdout)["functions"][0]["note"] == "not loaded: --no-load"
    ran = subprocess.run([str(BIN / "sora"), "validate", str(broken)], capture_output=True,
                         text=True, timeout=60)
    assert ran.returncode == 1 and "index.js:1:" in ran.stdout, ran.stdout + ran.stderr
