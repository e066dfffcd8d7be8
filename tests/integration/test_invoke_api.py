"""The AWS Lambda Invoke API, driven by real clients pointed at Sora: boto3, the AWS SDK for
JavaScript (tests/sdk/, installed by `make test`) and the AWS CLI."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.integration import functions as F
from tests.support import lambda_client, served, wait_for, write_function

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("invoke-api")
    fns = base / "fns"
    dirs = [
        write_function(fns, "echo", {"index.js": F.ECHO}, name="echo"),
        write_function(fns, "errors", {"index.js": F.ERRORS}, name="errors"),
        write_function(fns, "py-logs", {"app.py": F.PY_LOGS}, name="py-logs",
                       language="python", entrypoint="app.py"),
        write_function(fns, "slow", {"index.js": F.SLOW}, name="slow", timeout=1),
    ]
    yield from served(base, dirs, https=False)


@pytest.fixture(scope="module")
def lam(host):
    return lambda_client(host.url)


def payload(result) -> dict:
    return json.loads(result["Payload"].read())


def test_request_response_returns_the_result(lam):
    result = lam.invoke(FunctionName="echo", Payload=json.dumps({"hello": "sora"}))
    assert result["StatusCode"] == 200 and result["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in result
    body = payload(result)
    assert body["event"] == {"hello": "sora"}  # the body is the event, as on Lambda
    assert body["context"]["awsRequestId"] == \
        result["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]


def test_function_error_is_200_with_function_error_header(lam):
    result = lam.invoke(FunctionName="errors", Payload=b"{}")
    assert result["StatusCode"] == 200 and result["FunctionError"] == "Unhandled"
    body = payload(result)
    assert body["errorType"] == "ValidationError"
    assert body["errorMessage"] == "name is required"


def test_timeout_is_reported_as_a_function_error(lam):
    result = lam.invoke(FunctionName="slow",
                        Payload=json.dumps({"queryStringParameters": {"forever": "1"}}))
    assert result["FunctionError"] == "Unhandled"
    assert payload(result)["errorMessage"] == "Task timed out after 1.00 seconds"


def test_log_tail_holds_the_invocations_own_lines(lam):
    result = lam.invoke(FunctionName="py-logs", LogType="Tail", Payload=b"{}")
    assert payload(result)["ok"] is True
    request_id = result["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    tail = base64.b64decode(result["LogResult"]).decode()
    assert f"printed for {request_id}" in tail
    assert f"to stderr for {request_id}" in tail


def test_dry_run_is_204(lam):
    assert lam.invoke(FunctionName="echo", InvocationType="DryRun")["StatusCode"] == 204


def test_unknown_function_is_resource_not_found(lam):
    with pytest.raises(lam.exceptions.ResourceNotFoundException) as exc:
        lam.invoke(FunctionName="nope", Payload=b"{}")
    assert "Function not found: nope" in str(exc.value)


def test_qualifiers_and_arns(lam):
    assert payload(lam.invoke(FunctionName="echo:$LATEST", Payload=b"{}"))["event"] == {}
    arn = "arn:aws:lambda:us-east-1:000000000000:function:echo"
    assert payload(lam.invoke(FunctionName=arn, Qualifier="$LATEST", Payload=b"{}"))
    with pytest.raises(lam.exceptions.ResourceNotFoundException) as exc:
        lam.invoke(FunctionName="echo", Qualifier="7", Payload=b"{}")
    assert "Function not found: echo:7" in str(exc.value)   # (no version 7 published)


def test_bad_payload_and_unsupported_type_are_clear(lam):
    with pytest.raises(ClientError) as exc:
        lam.invoke(FunctionName="echo", Payload=b"{not json")
    assert exc.value.response["Error"]["Code"] == "InvalidRequestContentException"
    with pytest.raises(ClientError) as exc:
        lam.invoke(FunctionName="echo", InvocationType="Sometime", Payload=b"{}")
    assert exc.value.response["Error"]["Code"] == "InvalidParameterValueException"
    assert "expected RequestResponse, Event or DryRun" in str(exc.value)


def test_invocations_through_the_api_are_recorded_as_invoke(host, lam):
    result = lam.invoke(FunctionName="echo", Payload=b"{}")
    request_id = result["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    rec = wait_for(lambda: (r := host.session.get(f"{host.url}/api/invocations/{request_id}",
                                                  timeout=5)).status_code == 200 and r.json(),
                   what="the record")
    assert rec["trigger"] == "invoke" and rec["status"] == "ok"


SDK = Path(__file__).resolve().parents[1] / "sdk"


def js_sdk(host, function: str, payload: str, kind: str = "RequestResponse",
           log: str = "None") -> dict:
    done = subprocess.run(["node", str(SDK / "invoke.mjs"), host.url, function, payload, kind,
                           log], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_javascript_sdk_invokes(host):
    ok = js_sdk(host, "echo", '{"from": "js"}', log="Tail")
    assert ok["StatusCode"] == 200 and ok["FunctionError"] is None
    assert ok["ExecutedVersion"] == "$LATEST" and ok["LogResult"] is not None
    assert json.loads(ok["Payload"])["event"] == {"from": "js"}
    failed = js_sdk(host, "errors", "{}")
    assert failed["StatusCode"] == 200 and failed["FunctionError"] == "Unhandled"
    assert json.loads(failed["Payload"])["errorType"] == "ValidationError"
    queued = js_sdk(host, "echo", "{}", kind="Event")
    assert queued["StatusCode"] == 202 and queued["RequestId"]
    missing = js_sdk(host, "nope", "{}")
    assert missing["error"] == "ResourceNotFoundException" and missing["status"] == 404


def test_the_aws_cli_invokes(host, tmp_path):
    # AWS CLI v1 (from PyPI) takes --payload as it is; v2 needs --cli-binary-format
    # raw-in-base64-out for the same.
    aws = Path(sys.executable).parent / "aws"
    env = dict(os.environ, AWS_ACCESS_KEY_ID="sora", AWS_SECRET_ACCESS_KEY="sora",
               AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=str(tmp_path / "none"))
    out = tmp_path / "out.json"
    done = subprocess.run([str(aws), "lambda", "invoke", "--endpoint-url", host.url,
                           "--function-name", "echo", "--payload", '{"from": "cli"}',
                           "--log-type", "Tail",
                           str(out)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    meta = json.loads(done.stdout)
    assert meta["StatusCode"] == 200 and meta["ExecutedVersion"] == "$LATEST"
    assert "LogResult" in meta
    assert json.loads(out.read_text())["event"] == {"from": "cli"}
    queued = subprocess.run([str(aws), "lambda", "invoke", "--endpoint-url", host.url,
                             "--function-name", "echo", "--invocation-type", "Event",
                             str(tmp_path / "event.out")], capture_output=True, text=True,
                            env=env, timeout=60)
    assert queued.returncode == 0 and json.loads(queued.stdout)["StatusCode"] == 202
