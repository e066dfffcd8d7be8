"""boto3 and the AWS CLI managing Sora as they manage Lambda (issue 17 points 6 and 8): create →
invoke → update code → publish → alias with weights → invoke by alias → delete, each signed
with an admin key (SigV4: the key's name as access key id, the key as secret)."""
from __future__ import annotations

import collections
import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.integration import functions as F
from tests.support import served, wait_for, write_function

pytestmark = pytest.mark.integration

ADMIN = "admin-key-0123456789abcdef"
AWS = str(Path(sys.executable).parent / "aws")   # the AWS CLI of the `test` extra
REGION = "eu-west-3"
ROLE = "arn:aws:iam::000000000000:role/sora"

NODE = """
exports.handler = async (event) => ({ code: CODE, version: process.env.AWS_LAMBDA_FUNCTION_VERSION,
                                      event });
"""
PYTHON = """
import os
def handler(event, context):
    return {"code": CODE, "version": context.function_version,
            "env": os.environ.get("VERSION_ENV")}
"""


def zipped(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, textwrap.dedent(text))
    return buffer.getvalue()


def node_zip(code: str) -> bytes:
    return zipped({"index.js": NODE.replace("CODE", json.dumps(code))})


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("aws-tools")
    dirs = [write_function(base / "fns", "echo", {"index.js": F.ECHO}, name="echo")]
    yield from served(base, dirs, https=False, api_key=ADMIN, extra={
        "auth": {"apiKeys": [{"name": "ops", "key": ADMIN, "scopes": ["admin"]}]}})


def boto(host):
    return boto3.client("lambda", endpoint_url=host.url, region_name=REGION,
                        aws_access_key_id="ops", aws_secret_access_key=ADMIN,
                        config=Config(retries={"max_attempts": 0}, read_timeout=120))


def active(lam, name: str) -> dict:
    """The function's configuration once the host says it serves it (Lambda's State)."""
    return wait_for(lambda: (c := lam.get_function(FunctionName=name)["Configuration"])
                    .get("State", "Active") == "Active" and
                    c.get("LastUpdateStatus", "Successful") != "InProgress" and c,
                    timeout=60, what=f"{name} to be Active")


def switched(call, done, what: str):
    """call()'s result once done(result): a change Sora reports Successful serves every call
    sent after its old workers' DISCONNECT reached the gateway; one sent in the same moment is
    still served by the draining old code (sora.worker.main STOP_QUIET), as Lambda documents
    a short window after an update in which either may answer."""
    return wait_for(lambda: (lambda result: result if done(result) else None)(call()), timeout=10,
                    what=what)


def run_of(lam, name: str, qualifier: str | None = None) -> tuple[dict, str]:
    out = lam.invoke(FunctionName=name, Payload=b'{"n": 1}',
                     **({"Qualifier": qualifier} if qualifier else {}))
    assert out["StatusCode"] == 200 and "FunctionError" not in out, out
    return json.loads(out["Payload"].read()), out["ExecutedVersion"]


def test_boto3_create_invoke_update_publish_alias_delete(host):
    lam = boto(host)
    made = lam.create_function(FunctionName="made-by-boto3", Runtime="nodejs20.x", Role=ROLE,
                               Handler="index.handler", Code={"ZipFile": node_zip("one")},
                               Timeout=10, MemorySize=128, Publish=True)
    # Created with Publish: the answer is version 1's configuration, as Lambda's.
    assert made["Version"] == "1" and made["FunctionArn"] == \
        f"arn:aws:lambda:{REGION}:000000000000:function:made-by-boto3:1"
    assert active(lam, "made-by-boto3")["FunctionArn"] == \
        f"arn:aws:lambda:{REGION}:000000000000:function:made-by-boto3"
    assert run_of(lam, "made-by-boto3") == ({"code": "one", "version": "$LATEST",
                                             "event": {"n": 1}}, "$LATEST")

    lam.update_function_code(FunctionName="made-by-boto3", ZipFile=node_zip("two"))
    active(lam, "made-by-boto3")
    switched(lambda: run_of(lam, "made-by-boto3"), lambda r: r[0]["code"] == "two",
             "the new code to answer")
    published = lam.publish_version(FunctionName="made-by-boto3", Description="second")
    assert (published["Version"], published["FunctionArn"]) == \
        ("2", f"arn:aws:lambda:{REGION}:000000000000:function:made-by-boto3:2")
    versions = lam.list_versions_by_function(FunctionName="made-by-boto3")["Versions"]
    assert [v["Version"] for v in versions] == ["$LATEST", "1", "2"]

    alias = lam.create_alias(FunctionName="made-by-boto3", Name="live", FunctionVersion="2",
                             RoutingConfig={"AdditionalVersionWeights": {"1": 0.25}})
    assert alias["AliasArn"].endswith(":function:made-by-boto3:live")
    ran = collections.Counter()
    for _ in range(200):
        payload, version = run_of(lam, "made-by-boto3", "live")
        assert payload["code"] == {"1": "one", "2": "two"}[version]
        assert payload["version"] == version
        ran[version] += 1
    assert 0.15 <= ran["1"] / 200 <= 0.35, ran
    lam.update_alias(FunctionName="made-by-boto3", Name="live", FunctionVersion="1",
                     RoutingConfig={"AdditionalVersionWeights": {}})
    assert {run_of(lam, "made-by-boto3", "live")[1] for _ in range(10)} == {"1"}
    assert [a["Name"] for a in lam.list_aliases(FunctionName="made-by-boto3")["Aliases"]] == \
        ["live"]

    lam.delete_function(FunctionName="made-by-boto3")
    with pytest.raises(ClientError) as caught:
        lam.get_function(FunctionName="made-by-boto3")
    assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"
    wait_for(lambda: "made-by-boto3" not in host.health()["functions"], timeout=30,
             what="the deleted function to leave /healthz")


def test_boto3_python_function_and_its_configuration(host):
    lam = boto(host)
    lam.create_function(FunctionName="py-made", Runtime="python3.11", Role=ROLE,
                        Handler="app.handler",
                        Code={"ZipFile": zipped({"app.py": PYTHON.replace("CODE", '"py"')})},
                        Environment={"Variables": {"VERSION_ENV": "a"}})
    active(lam, "py-made")
    assert run_of(lam, "py-made")[0] == {"code": "py", "version": "$LATEST", "env": "a"}
    lam.update_function_configuration(FunctionName="py-made",
                                      Environment={"Variables": {"VERSION_ENV": "b"}})
    active(lam, "py-made")
    switched(lambda: run_of(lam, "py-made"), lambda r: r[0]["env"] == "b",
             "the new environment to answer")
    lam.delete_function(FunctionName="py-made")


def aws(host, tmp_path, *args) -> dict:
    """The AWS CLI (v1, from PyPI), configured as a user would for Sora, on files of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="ops", AWS_SECRET_ACCESS_KEY=ADMIN, AWS_DEFAULT_REGION=REGION,
               AWS_CONFIG_FILE=str(tmp_path / "aws-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws-credentials"))
    done = subprocess.run([AWS, "lambda", *args, "--endpoint-url", host.url],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, f"aws lambda {args[0]}: {done.stderr}"
    return json.loads(done.stdout) if done.stdout.strip() else {}


def test_the_aws_cli_create_invoke_update_publish_alias_delete(host, tmp_path):
    (tmp_path / "one.zip").write_bytes(node_zip("one"))
    (tmp_path / "two.zip").write_bytes(node_zip("two"))
    lam = boto(host)
    made = aws(host, tmp_path, "create-function", "--function-name", "made-by-cli",
               "--runtime", "nodejs20.x", "--role", ROLE, "--handler", "index.handler",
               "--zip-file", f"fileb://{tmp_path / 'one.zip'}", "--publish")
    assert made["Version"] == "1" and made["FunctionName"] == "made-by-cli"
    active(lam, "made-by-cli")

    def invoke(*extra) -> tuple[dict, dict]:
        meta = aws(host, tmp_path, "invoke", "--function-name", "made-by-cli", *extra,
                   "--payload", '{"n": 1}', str(tmp_path / "out.json"))
        return meta, json.loads((tmp_path / "out.json").read_text())

    meta, payload = invoke()
    assert (meta["StatusCode"], meta["ExecutedVersion"], payload["code"]) == \
        (200, "$LATEST", "one")
    aws(host, tmp_path, "update-function-code", "--function-name", "made-by-cli",
        "--zip-file", f"fileb://{tmp_path / 'two.zip'}")
    active(lam, "made-by-cli")
    switched(invoke, lambda r: r[1]["code"] == "two", "the new code to answer")
    assert aws(host, tmp_path, "publish-version", "--function-name",
               "made-by-cli")["Version"] == "2"
    alias = aws(host, tmp_path, "create-alias", "--function-name", "made-by-cli", "--name",
                "live", "--function-version", "2", "--routing-config",
                '{"AdditionalVersionWeights": {"1": 0.5}}')
    assert alias["RoutingConfig"]["AdditionalVersionWeights"] == {"1": 0.5}
    seen = set()
    for _ in range(8):
        meta, payload = invoke("--qualifier", "live")
        assert payload["code"] == {"1": "one", "2": "two"}[meta["ExecutedVersion"]]
        seen.add(meta["ExecutedVersion"])
    assert seen <= {"1", "2"}
    # Each call ran one of the two and said which; the split itself is checked over 200
    # calls with boto3 above (8 runs of the CLI, ~2 s each, would miss a version 1 in 128).
    listed = aws(host, tmp_path, "list-versions-by-function", "--function-name", "made-by-cli")
    assert [v["Version"] for v in listed["Versions"]] == ["$LATEST", "1", "2"]
    aws(host, tmp_path, "delete-function", "--function-name", "made-by-cli")
    with pytest.raises(ClientError):
        lam.get_function(FunctionName="made-by-cli")
