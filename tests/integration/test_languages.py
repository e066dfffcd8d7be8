"""Python and `provided` (Lambda Runtime API) functions, and the behaviour every runtime shares:
one instance lifecycle, the same timeout, crash and error handling, and logs tied to requests."""
from __future__ import annotations

import json
import os
import stat
import sys
import time

import pytest

from tests.integration import functions as F
from tests.support import SoraHost, json_of, wait_for, write_function

pytestmark = pytest.mark.integration

SHARED = {"nodejs": "shared-nodejs", "python": "shared-python", "provided": "shared-provided"}


def executable(directory, name="bootstrap"):
    path = directory / name
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return directory


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("languages")
    fns = base / "fns"
    py = {"language": "python", "entrypoint": "app.py"}
    provided = {"language": "provided"}
    dirs = [
        write_function(fns, "py-echo", {"app.py": F.PY_ECHO}, name="py-echo", memory=192,
                       env={"GREETING": "hi"}, **py),
        write_function(fns, "py-errors", {"app.py": F.PY_ERRORS}, name="py-errors", **py),
        write_function(fns, "py-logs", {"app.py": F.PY_LOGS}, name="py-logs", **py),
        write_function(fns, "py-import-error", {"app.py": F.PY_IMPORT_ERROR},
                       name="py-import-error", **py),
        write_function(fns, "shared-nodejs", {"index.js": F.SHARED_NODE}, name="shared-nodejs",
                       timeout=1),
        write_function(fns, "shared-python", {"app.py": F.SHARED_PYTHON}, name="shared-python",
                       timeout=1, **py),
        executable(write_function(fns, "shared-provided", {"bootstrap": F.SHARED_PROVIDED},
                                  name="shared-provided", timeout=1, **provided)),
        executable(write_function(fns, "provided-echo", {"bootstrap": F.PROVIDED_ECHO},
                                  name="provided-echo", handler="custom.handler", timeout=7,
                                  **provided)),
        executable(write_function(fns, "provided-init-error", {"bootstrap":
                                                              F.PROVIDED_INIT_ERROR},
                                  name="provided-init-error", **provided)),
        write_function(fns, "provided-missing", {}, name="provided-missing", **provided),
    ]
    for d in dirs:
        spec = (d / "sora.yaml").read_text()
        if "language: provided" in spec:  # write_function's nodejs defaults do not apply
            (d / "sora.yaml").write_text(spec.replace("entrypoint: index.js\n", ""))
    # errorDetail full: these tests read the traces and start-up reasons callers get in
    # development (the default leaves them out: tests/integration/test_error_detail.py).
    h = SoraHost(base, dirs, env={"SORA_TEST_HOST_SECRET": "must-not-leak"},
                 server={"errorDetail": "full"})
    h.start(wait_functions=[d.name for d in dirs if "error" not in d.name and
                            "missing" not in d.name])
    yield h
    code = h.stop()
    assert code == 0, h.log()
    assert not h.leftovers(), h.leftovers()


def log_lines(host, name, request_id, count=1):
    path = host.base / "state" / "logs" / f"{name}.log"
    # Its REPORT line comes after all its lines (issue 15 point 5; START holds the id too).
    text = wait_for(lambda: path.read_text().count(request_id) >= count and
                    f"REPORT RequestId: {request_id}" in path.read_text() and path.read_text(),
                    what=f"{count} log lines of {request_id}")
    return [line for line in text.splitlines() if request_id in line]


# --- python --------------------------------------------------------------------------------------

def test_python_gets_event_and_lambda_context(host):
    r = host.invoke("py-echo", "/a/b", params={"q": "1"})
    assert r.status_code == 200
    body = json_of(r)
    assert body["event"]["rawPath"] == "/a/b" and body["event"]["rawQueryString"] == "q=1"
    ctx = body["context"]
    assert ctx["aws_request_id"] == r.headers["X-Sora-Request-Id"]
    assert ctx["function_name"] == "py-echo" and ctx["function_version"] == "$LATEST"
    assert ctx["memory_limit_in_mb"] == "192"
    assert ctx["invoked_function_arn"] == \
        "arn:aws:lambda:us-east-1:000000000000:function:py-echo"
    assert 25_000 < ctx["remaining"] <= 30_000
    assert body["env"]["GREETING"] == "hi" and "SORA_TEST_HOST_SECRET" not in body["env"]
    assert body["env"]["LAMBDA_TASK_ROOT"] == str(host.base / "fns" / "py-echo")
    assert body["path0"] == str(host.base / "fns" / "py-echo")


def test_python_runs_on_the_base_interpreter_without_soras_packages(host):
    body = json_of(host.invoke("py-echo"))
    assert body["sora_packages"] is False
    assert os.path.realpath(body["executable"]) == \
        os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def test_python_module_is_imported_once_per_instance(host):
    first = json_of(host.invoke("py-echo"))
    second = json_of(host.invoke("py-echo"))
    assert second["calls"] == first["calls"] + 1
    assert second["loaded_at"] == first["loaded_at"] and second["instance"] == first["instance"]


def test_python_exception_is_502_with_class_and_stack_trace(host):
    r = host.invoke("py-errors")
    assert r.status_code == 502 and r.headers["X-Amz-Function-Error"] == "Unhandled"
    body = json_of(r)
    assert body["errorType"] == "ValidationError"
    assert body["errorMessage"] == "name is required"
    assert any('raise ValidationError("name is required")' in frame
               for frame in body["stackTrace"])
    assert not any("bootstrap.py" in frame for frame in body["stackTrace"])


def test_python_unserializable_result_is_marshal_error(host):
    r = host.invoke("py-errors", params={"kind": "unserializable"})
    assert r.status_code == 502
    assert json_of(r)["errorType"] == "Runtime.MarshalError"


@pytest.mark.parametrize("kind", ["nan", "inf", "-inf", "decimal-nan"])
def test_python_nan_result_is_a_marshal_error_not_invalid_json(host, kind):
    # issue 14 point 10: json.dumps writes NaN/Infinity, which no caller's JSON parser takes.
    r = host.invoke("py-errors", params={"kind": kind})
    assert r.status_code == 502, r.text
    body = json.loads(r.text, parse_constant=_refuse)
    assert body["errorType"] == "Runtime.MarshalError" and "JSON" in body["errorMessage"]


@pytest.mark.parametrize("answer,value", [("NaN", "NaN"), ("Infinity", "Infinity"),
                                          ("-Infinity", "-Infinity"),
                                          ("not-json", "not-json"), ("42", 42)])
def test_a_provided_response_that_is_not_json_reaches_the_caller_as_json(host, answer, value):
    # issue 14 point 10: what a custom runtime posts that is not strict JSON becomes a JSON
    # string, as Sora's multi-line text already did; JSON keeps its value.
    r = host.invoke("shared-provided", params={"answer": answer})
    assert r.status_code == 200, r.text
    assert json.loads(r.text, parse_constant=_refuse) == value


def _refuse(constant):
    raise AssertionError(f"{constant} is not JSON")


def test_python_decimal_results_are_numbers(host):
    assert json_of(host.invoke("py-errors", params={"kind": "decimal"})) == \
        {"price": 9.5, "count": 3}


def test_python_print_and_logging_are_logs_never_protocol(host):
    r = host.invoke("py-logs")
    assert json_of(r) == {"ok": True, "stdin": ""}
    rid = r.headers["X-Sora-Request-Id"]
    lines = log_lines(host, "py-logs", rid, count=4)
    assert any(" stdout " in line and line.endswith(f"printed for {rid}") for line in lines)
    assert any(" stderr " in line and line.endswith(f"to stderr for {rid}") for line in lines)
    assert any("[INFO]" in line and f"\t{rid}\tlogged for {rid}" in line for line in lines)
    assert any('{"statusCode": 500}' in line for line in
               (host.base / "state" / "logs" / "py-logs.log").read_text().splitlines())


def test_python_import_error_is_reported_and_others_keep_serving(host):
    state = wait_for(lambda: host.function_state("py-import-error")["state"] == "FATAL" and
                     host.function_state("py-import-error"), timeout=30, what="FATAL")
    assert "Runtime.ImportModuleError" in state["reason"]
    assert ("Unable to import module 'app': No module named "
            "'a_module_that_is_not_installed'") in state["reason"]
    r = host.invoke("py-import-error")
    assert r.status_code == 503
    assert json_of(r)["errorType"] == "Sora.FunctionUnavailable"
    assert "Runtime.ImportModuleError" in json_of(r)["errorMessage"]
    assert host.invoke("py-echo").status_code == 200


# --- provided: the Lambda Runtime API ------------------------------------------------------------

def test_runtime_api_serves_event_and_headers(host):
    before = time.time()
    r = host.invoke("provided-echo", "/x", method="POST", json={"k": "v"})
    assert r.status_code == 200, r.text
    body = json_of(r)
    assert body["id"] == r.headers["X-Sora-Request-Id"]
    assert body["event"]["rawPath"] == "/x" and body["event"]["body"] == '{"k": "v"}'
    assert before * 1000 + 6000 < body["deadline"] <= time.time() * 1000 + 7000
    assert body["arn"] == "arn:aws:lambda:us-east-1:000000000000:function:provided-echo"
    assert body["handler"] == "custom.handler" and body["name"] == "provided-echo"
    assert body["task_root"] == body["pwd"] == str(host.base / "fns" / "provided-echo")


def test_runtime_api_init_error_is_reported(host):
    state = wait_for(lambda: host.function_state("provided-init-error")["state"] == "FATAL" and
                     host.function_state("provided-init-error"), timeout=30, what="FATAL")
    assert "DATABASE_URL is not set" in state["reason"]
    assert "Runtime.ConfigMissing" in state["reason"]
    # What the bootstrap started (its `sleep`) went with the instance.
    folder = str(host.base / "fns" / "provided-init-error")
    assert not [p for p in host.descendants() if p.cwd() == folder], "stragglers left"
    r = host.invoke("provided-init-error")
    assert r.status_code == 503
    assert "DATABASE_URL is not set" in json_of(r)["errorMessage"]


def test_missing_bootstrap_names_file_and_field(host):
    state = wait_for(lambda: host.function_state("provided-missing")["state"] == "FATAL" and
                     host.function_state("provided-missing"), timeout=30, what="FATAL")
    assert "sora.yaml: entrypoint: expected an executable file" in state["reason"]
    assert "'bootstrap' (not found)" in state["reason"]


# --- shared by every runtime ---------------------------------------------------------------------

@pytest.mark.parametrize("language", list(SHARED))
def test_function_error_is_502_with_type_and_message(host, language):
    r = host.invoke(SHARED[language], params={"fail": "1"})
    assert r.status_code == 502
    body = json_of(r)
    assert body["errorType"] == "PurposeError"
    assert body["errorMessage"] == "failed on purpose"


@pytest.mark.parametrize("language", list(SHARED))
def test_timeout_is_504_and_the_instance_is_replaced(host, language):
    name = SHARED[language]
    pid = json_of(host.invoke(name))["instance"]
    r = host.invoke(name, params={"forever": "1"})
    assert r.status_code == 504
    assert json_of(r) == {"errorType": "Sora.Timeout",
                          "errorMessage": "Task timed out after 1.00 seconds"}
    again = host.invoke(name)
    assert again.status_code == 200 and json_of(again)["instance"] != pid


@pytest.mark.parametrize("language", list(SHARED))
def test_exit_is_502_runtime_exited_and_the_next_call_works(host, language):
    name = SHARED[language]
    r = host.invoke(name, params={"exit": "3"})
    assert r.status_code == 502
    body = json_of(r)
    assert body["errorType"] == "Sora.RuntimeExited"
    assert "exit status 3" in body["errorMessage"]
    assert host.invoke(name).status_code == 200


@pytest.mark.parametrize("language", list(SHARED))
def test_output_is_logged_under_the_request_id(host, language):
    name = SHARED[language]
    r = host.invoke(name, params={"ms": "1"})
    assert r.status_code == 200
    lines = log_lines(host, name, r.headers["X-Sora-Request-Id"])
    assert any(line.endswith("stdout shared log line") for line in lines), lines
