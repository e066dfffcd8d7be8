"""The AWS SDKs and the AWS CLI on a host with API keys (issue 15 point 3): they sign with AWS
Signature Version 4, a key's name as the access key id and the key as the secret access key.
boto3, the AWS CLI (from PyPI) and the AWS SDK for JavaScript (tests/sdk/) for real, against a
real host; then the refusals an attacker meets, each read back through the SDK that made it."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.integration import functions as F
from tests.support import json_of, served, write_function

pytestmark = pytest.mark.integration

ADMIN = "admin-key-0123456789abcdef"
ECHO_KEY = "echo-key-0123456789abcdef"
BIN = Path(sys.executable).parent
SDK = Path(__file__).resolve().parents[1] / "sdk"


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("sigv4")
    fns = base / "fns"
    (base / "admin.key").write_text(ADMIN + "\n")
    dirs = [write_function(fns, "echo", {"index.js": F.ECHO}, name="echo"),
            write_function(fns, "other", {"index.js": F.ECHO}, name="other")]
    yield from served(base, dirs, https=True, api_key=ADMIN, extra={
        "auth": {"apiKeys": [
            {"name": "ops", "keyFile": "admin.key", "scopes": ["admin"]},
            {"name": "echo-caller", "key": ECHO_KEY, "scopes": ["invoke:echo"]},
        ]}})


def client(host, key_id="ops", secret=ADMIN, https=False):
    return boto3.client("lambda", endpoint_url=host.https_url if https else host.url,
                        verify=str(host.cert) if https else None, region_name="eu-west-3",
                        aws_access_key_id=key_id, aws_secret_access_key=secret,
                        config=Config(retries={"max_attempts": 0}, read_timeout=30))


def refused(call) -> tuple[int, str, str]:
    """What botocore made of a refusal: (HTTP status, error code, message)."""
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response
    return (error["ResponseMetadata"]["HTTPStatusCode"], error["Error"]["Code"],
            error["Error"]["Message"])


def test_boto3_invokes_with_a_key(host):
    lam = client(host)
    out = lam.invoke(FunctionName="echo", Payload=json.dumps({"from": "boto3"}), LogType="Tail")
    assert out["StatusCode"] == 200 and "FunctionError" not in out
    assert json.loads(out["Payload"].read())["event"] == {"from": "boto3"}
    assert "LogResult" in out
    base64.b64decode(out["LogResult"])
    assert lam.invoke(FunctionName="echo", InvocationType="Event",
                      Payload=b'{"later": true}')["StatusCode"] == 202
    assert lam.invoke(FunctionName="echo", InvocationType="DryRun")["StatusCode"] == 204
    # Over HTTPS too (where botocore could leave the body unsigned, and does not for Lambda).
    out = client(host, https=True).invoke(FunctionName="echo", Payload=b'{"tls": 1}')
    assert json.loads(out["Payload"].read())["event"] == {"tls": 1}
    # A key with `invoke:echo` invokes echo (by name and by ARN) and nothing else.
    mine = client(host, "echo-caller", ECHO_KEY)
    assert mine.invoke(FunctionName="echo", Payload=b"{}")["StatusCode"] == 200
    arn = "arn:aws:lambda:eu-west-3:000000000000:function:echo"
    assert mine.invoke(FunctionName=arn, Qualifier="$LATEST", Payload=b"{}")["StatusCode"] == 200
    status, code, message = refused(lambda: mine.invoke(FunctionName="other", Payload=b"{}"))
    assert (status, code) == (403, "AccessDeniedException")
    assert "'echo-caller'" in message and "invoke:other" in message
    status, code, _ = refused(lambda: mine.invoke(
        FunctionName="arn:aws:lambda:eu-west-3:000000000000:function:other", Payload=b"{}"))
    assert (status, code) == (403, "AccessDeniedException")


def test_identical_calls_in_one_second_all_run(host):
    # boto3 signs host and x-amz-date (to the second) and the body: identical calls made in
    # one second carry one signature. A host that refused a signature it had seen would
    # refuse all but the first of them.
    lam = client(host)
    sent = []
    lam.meta.events.register("before-send", lambda request, **_: sent.append(
        request.headers["Authorization"]))
    while len(sent) < 10 and len(set(sent)) == len(sent):
        assert lam.invoke(FunctionName="echo", Payload=b'{"same": 1}')["StatusCode"] == 200
    assert len(set(sent)) < len(sent), "no two calls fell in one second"


def test_boto3_reads_and_prints_each_refusal(host):
    status, code, message = refused(lambda: client(host, secret="not-the-key-0123456789")
                                    .invoke(FunctionName="echo", Payload=b"{}"))
    assert (status, code) == (401, "InvalidSignatureException")
    assert "does not match" in message and "'ops'" in message
    status, code, message = refused(lambda: client(host, "nobody").invoke(
        FunctionName="echo", Payload=b"{}"))
    assert (status, code) == (401, "UnrecognizedClientException") and "'nobody'" in message

    # A body changed on its way (same length, after it was signed).
    lam = client(host)

    def tamper(request, **_):
        request.body = request.body.replace(b'"amount": 1', b'"amount": 9')
    lam.meta.events.register("before-send", tamper)
    status, code, message = refused(lambda: lam.invoke(FunctionName="echo",
                                                        Payload=b'{"amount": 1}'))
    assert (status, code) == (401, "InvalidSignatureException") and "does not match" in message
    # None of these ran, and none of them put a key or a signature in the host's log.
    log = host.log(whole=True)
    assert "auth: 401 for POST /2015-03-31/functions/echo/invocations" in log
    assert "not-the-key" not in log
    assert ADMIN not in log and ECHO_KEY not in log and "Signature=" not in log


def captured(host) -> tuple[dict, bytes]:
    """A request boto3 signed and sent (and the host ran), as an eavesdropper would keep it."""
    lam = client(host)
    kept = {}

    def keep(request, **_):
        kept.update(headers={k: v.decode() if isinstance(v, bytes) else v
                             for k, v in request.headers.items()}, body=request.body)
    lam.meta.events.register("before-send", keep)
    assert lam.invoke(FunctionName="echo", Payload=b'{"pay": 1}')["StatusCode"] == 200
    return kept["headers"], kept["body"]


def send(host, path, headers, body) -> requests.Response:
    return requests.post(host.url + path, headers=headers, data=body, timeout=30)


def test_a_replayed_signature_is_refused_anywhere_but_on_its_own_request(host):
    headers, body = captured(host)
    invoke = "/2015-03-31/functions/{}/invocations"
    # Moved to a fresh date, to outlive the 5-minute window: the date is signed.
    later = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() + 60))
    for changed, path, data in (({"X-Amz-Date": later}, "echo", body),   # a new date
                                ({}, "other", body),                      # another function
                                ({}, "echo", b'{"pay": 9}')):             # another body
        r = send(host, invoke.format(path), {**headers, **changed}, data)
        assert r.status_code == 401, r.text
        assert r.headers["x-amzn-ErrorType"] == "InvalidSignatureException"
        assert json_of(r)["message"]


def test_the_javascript_sdk_signs_with_a_key(host):
    def js(function, key_id="ops", secret=ADMIN, offset_ms=0, kind="RequestResponse"):
        env = dict(os.environ, AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret,
                   SORA_TEST_CLOCK_OFFSET_MS=str(offset_ms))
        done = subprocess.run(["node", str(SDK / "invoke.mjs"), host.url, function,
                               '{"from": "js"}', kind, "Tail"], capture_output=True,
                              text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)
    ok = js("echo")
    assert ok["StatusCode"] == 200 and ok["LogResult"] is not None, ok
    assert json.loads(ok["Payload"])["event"] == {"from": "js"}
    assert js("echo", kind="Event")["StatusCode"] == 202
    assert js("echo", "echo-caller", ECHO_KEY)["StatusCode"] == 200
    for args, status, error, words in (
            (("other", "echo-caller", ECHO_KEY), 403, "AccessDeniedException", "invoke:other"),
            (("echo", "ops", "wrong-secret-0123456789"), 401, "InvalidSignatureException",
             "does not match"),
            (("echo", "nobody", ADMIN), 401, "UnrecognizedClientException", "'nobody'"),
            # A clock 10 minutes behind signs with a stale date (the SDK, given one attempt,
            # does not retry with its clock corrected).
            (("echo", "ops", ADMIN, -600_000), 401, "InvalidSignatureException",
             "Signature expired")):
        out = js(*args)
        assert (out.get("status"), out.get("error")) == (status, error), out
        assert words in out["message"], out


def test_the_aws_cli_invokes_with_a_key(host, tmp_path):
    aws = str(BIN / "aws")
    # What `aws configure` writes, in files of this test's own (each `aws` run costs ~2 s).
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "config"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"))
    (tmp_path / "credentials").write_text(
        f"[default]\naws_access_key_id = echo-caller\naws_secret_access_key = {ECHO_KEY}\n")
    (tmp_path / "config").write_text("[default]\nregion = us-east-1\n")

    def invoke(function, *extra, environment=env):
        return subprocess.run([aws, "lambda", "invoke", "--function-name", function, *extra,
                               str(tmp_path / "out.json")], capture_output=True, text=True,
                              env=environment, timeout=60)
    done = invoke("echo", "--endpoint-url", host.url, "--payload", '{"from": "cli"}',
                  "--log-type", "Tail")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["StatusCode"] == 200 and "LogResult" in done.stdout
    assert json.loads((tmp_path / "out.json").read_text())["event"] == {"from": "cli"}
    denied = invoke("other", "--endpoint-url", host.url)
    assert denied.returncode != 0
    assert "An error occurred (AccessDeniedException)" in denied.stderr, denied.stderr
    assert "invoke:other" in denied.stderr

    # `eval "$(sora keys ops)"`: the credentials, the region and the endpoint, from the config.
    exports = subprocess.run([str(BIN / "sora"), "keys", "ops", "--config",
                              str(host.config_path)], capture_output=True, text=True,
                             env=env, timeout=60)
    assert exports.returncode == 0, exports.stderr
    from_keys = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    for line in exports.stdout.splitlines():
        if not line.startswith("export "):
            continue
        name, _, value = line.removeprefix("export ").partition("=")
        from_keys[name] = value.strip("'")
    assert from_keys["AWS_ACCESS_KEY_ID"] == "ops" and from_keys["SORA_API_KEY"] == ADMIN
    assert from_keys["SORA_CONFIG"] == os.path.abspath(host.config_path)   # sora from anywhere
    done = invoke("other", environment=from_keys)   # no --endpoint-url: AWS_ENDPOINT_URL
    assert done.returncode == 0, done.stderr
    wrong = invoke("echo", environment={**from_keys, "AWS_SECRET_ACCESS_KEY": "x" * 20})
    assert wrong.returncode != 0
    assert "An error occurred (InvalidSignatureException)" in wrong.stderr, wrong.stderr


def test_sora_keys_lists_each_key_as_an_aws_credential_pair(host):
    done = subprocess.run([str(BIN / "sora"), "keys", "--json", "--config",
                           str(host.config_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["keys"] == [
        {"name": "ops", "scopes": ["admin"], "accessKeyId": "ops", "secretAccessKey": ADMIN},
        {"name": "echo-caller", "scopes": ["invoke:echo"], "accessKeyId": "echo-caller",
         "secretAccessKey": ECHO_KEY}]


def test_the_bearer_key_still_works_on_the_invoke_api(host):
    r = requests.post(host.url + "/2015-03-31/functions/echo/invocations", data=b"{}",
                      headers={"Authorization": f"Bearer {ECHO_KEY}"}, timeout=30)
    assert r.status_code == 200, r.text
    r = requests.post(host.url + "/2015-03-31/functions/echo/invocations", data=b"{}",
                      timeout=30)
    assert r.status_code == 401
    assert r.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
    assert "Signature Version 4" in json_of(r)["message"]


def test_a_signed_function_url_call_and_what_the_function_sees(host):
    # A function URL signed as for a Lambda function URL with AWS_IAM auth (curl --aws-sigv4,
    # requests-aws4auth): the signature, and any session token beside it, stay Sora's.
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    def signed_get(path, key_id, secret):
        request = AWSRequest(method="GET", url=host.url + path,
                             headers={"X-Amz-Security-Token": "a-real-aws-session-token"})
        SigV4Auth(Credentials(key_id, secret), "lambda", "us-east-1").add_auth(request)
        return requests.get(host.url + path, headers=dict(request.headers.items()), timeout=30)
    r = signed_get("/functions/echo/a%20b?x=1&y=%24", "echo-caller", ECHO_KEY)
    assert r.status_code == 200, r.text
    event = json_of(r)["event"]
    assert event["rawPath"] == "/a b" and event["queryStringParameters"] == {"x": "1", "y": "$"}
    assert "authorization" not in event["headers"]
    assert "x-amz-security-token" not in event["headers"]
    denied = signed_get("/functions/other", "echo-caller", ECHO_KEY)
    assert denied.status_code == 403 and json_of(denied)["errorType"] == "Sora.Forbidden"
    assert denied.headers["x-amzn-ErrorType"] == "AccessDeniedException"
    wrong = signed_get("/functions/echo", "echo-caller", "x" * 24)
    assert wrong.status_code == 401 and json_of(wrong)["errorType"] == "Sora.Unauthorized"
    assert wrong.headers["x-amzn-ErrorType"] == "InvalidSignatureException"
