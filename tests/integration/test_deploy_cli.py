"""`sora deploy | versions | alias | rollback | reload` run as users run them, against a real
host with an admin key (issue 17 points 7 and 8): deploy → invoke → edit → deploy --publish →
alias with weights → invoke by alias → rollback → reload."""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import boto3
import pytest
import yaml
from botocore.config import Config

from tests.integration import functions as F
from tests.support import served, write_function

pytestmark = pytest.mark.integration

SORA = str(Path(sys.executable).parent / "sora")
ADMIN = "admin-key-0123456789abcdef"

# The deployed function says which code ran and which version the host says it is.
VERSIONED = """
exports.handler = async () => ({ code: CODE, version: process.env.AWS_LAMBDA_FUNCTION_VERSION,
                                 stage: process.env.STAGE });
"""


def versioned(code: str) -> str:
    return textwrap.dedent(VERSIONED).replace("CODE", json.dumps(code))


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("deploy-cli")
    dirs = [write_function(base / "fns", "echo", {"index.js": F.ECHO}, name="echo")]
    yield from served(base, dirs, https=True, api_key=ADMIN, extra={
        "auth": {"apiKeys": [{"name": "ops", "key": ADMIN, "scopes": ["admin"]}]}})


def sora(host, *args, timeout=120):
    """`sora ARGS --config HOST_CONFIG` with the admin key in $SORA_API_KEY: the address and
    the key's name (the access key id) come from the host config, as for a user on the host."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SORA_"))}
    env.update(SORA_API_KEY=ADMIN, AWS_CONFIG_FILE=os.devnull,
               AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    return subprocess.run([SORA, *args, "--config", str(host.config_path)], capture_output=True,
                          text=True, env=env, timeout=timeout)


def ok(done) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def lambda_of(host):
    return boto3.client("lambda", endpoint_url=host.url, region_name="us-east-1",
                        aws_access_key_id="ops", aws_secret_access_key=ADMIN,
                        config=Config(retries={"max_attempts": 0}, read_timeout=60))


def invoke(lam, qualifier: str | None = None) -> tuple[dict, str]:
    out = lam.invoke(FunctionName="hello", Payload=b"{}",
                     **({"Qualifier": qualifier} if qualifier else {}))
    assert out["StatusCode"] == 200 and "FunctionError" not in out, out
    return json.loads(out["Payload"].read()), out["ExecutedVersion"]


def test_deploy_publish_alias_rollback_reload(host, tmp_path):
    folder = write_function(tmp_path, "hello", {"index.js": versioned("one")}, name="hello",
                            env={"STAGE": "test"})
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("not uploaded")
    lam = lambda_of(host)

    created = json.loads(ok(sora(host, "deploy", str(folder), "--publish", "--json")))
    assert (created["action"], created["version"]) == ("created", "1")
    assert created["functionArn"] == "arn:aws:lambda:us-east-1:000000000000:function:hello"
    assert invoke(lam) == ({"code": "one", "version": "$LATEST", "stage": "test"}, "$LATEST")
    config = lam.get_function(FunctionName="hello")["Configuration"]
    assert (config["Runtime"], config["Handler"], config["Timeout"], config["MemorySize"]) == \
        ("nodejs20.x", "index.handler", 30, 256)
    assert config["CodeSha256"] == created["codeSha256"]
    # The same folder again: nothing to upload, and --publish returns the same version.
    again = json.loads(ok(sora(host, "deploy", str(folder), "--publish", "--json")))
    assert (again["action"], again["version"]) == ("unchanged", "1")

    # An edit, deployed and published: $LATEST and version 2 run it, version 1 still the old.
    (folder / "index.js").write_text(versioned("two"))
    out = ok(sora(host, "deploy", str(folder), "--publish"))
    assert out.splitlines()[0].startswith("hello: updated code (")
    assert out.splitlines()[1] == "hello: version 2"
    assert invoke(lam)[0]["code"] == "two"
    assert invoke(lam, "2") == ({"code": "two", "version": "2", "stage": "test"}, "2")
    assert invoke(lam, "1") == ({"code": "one", "version": "1", "stage": "test"}, "1")

    # An alias on version 1, then moved to 2 with a share of 0.3 left on 1.
    assert ok(sora(host, "alias", "hello", "live", "1")) == \
        "created hello:live -> version 1\n"
    assert ok(sora(host, "alias", "hello", "live", "2", "--weight", "1=0.3")) == \
        "hello:live -> version 2 (70%), version 1 (30%)\n"
    ran = collections.Counter(invoke(lam, "live")[1] for _ in range(200))
    assert set(ran) == {"1", "2"} and 0.2 <= ran["1"] / 200 <= 0.4, ran
    by_cli = json.loads(ok(sora(host, "invoke", "hello:live", "--json")))
    assert by_cli["payload"]["code"] in ("one", "two")
    listed = ok(sora(host, "versions", "hello")).splitlines()
    assert listed[0].split() == ["VERSION", "ALIASES", "CODE", "SHA256", "LAST", "MODIFIED",
                                 "DESCRIPTION"]
    rows = {line.split()[0]: line for line in listed[1:]}
    assert set(rows) == {"$LATEST", "1", "2"}
    assert "live (30%)" in rows["1"] and "live (70%)" in rows["2"]

    # Rollback: the alias back on version 1 alone.
    assert ok(sora(host, "rollback", "hello", "live")) == "hello:live: version 2 -> 1\n"
    assert {invoke(lam, "live")[1] for _ in range(20)} == {"1"}
    alias = lam.get_alias(FunctionName="hello", Name="live")
    assert (alias["FunctionVersion"], alias.get("RoutingConfig", {}).get(
        "AdditionalVersionWeights", {})) == ("1", {})

    # New code that cannot load: the deploy fails with the reason, the old code serves on.
    (folder / "index.js").write_text("exports.handler = async () => { syntax error")
    done = sora(host, "deploy", str(folder))
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith("sora: deploy: hello did not go live: ")
    assert "SyntaxError" in done.stderr
    assert invoke(lam)[0]["code"] == "two"
    # (the host keeps the code it was sent, and a reload would try it again: so, fixed)
    (folder / "index.js").write_text(versioned("three"))
    assert ok(sora(host, "deploy", str(folder))).startswith("hello: updated code (")
    assert invoke(lam)[0]["code"] == "three"

    # A reload with nothing changed: every function unchanged, exit 0.
    report = json.loads(ok(sora(host, "reload", "--json")))
    assert report["functions"]["echo"]["action"] == "unchanged", report
    assert report["errors"] == [] and report["needsRestart"] == []


def test_reload_reports_a_broken_function_and_exits_non_zero(host):
    spec = host.function_dirs[0] / "sora.yaml"
    good = spec.read_text()
    try:
        spec.write_text(good + "timeout: soon\n")
        done = sora(host, "reload")
        assert done.returncode == 1, done.stdout + done.stderr
        line = next(line for line in done.stdout.splitlines() if line.startswith("echo "))
        assert line.split()[1] == "failed" and "timeout" in line
        assert "keep serving their previous code" in done.stderr
        # It keeps serving its previous code.
        assert host.invoke("echo").status_code == 200
    finally:
        spec.write_text(good)
    assert json.loads(ok(sora(host, "reload", "--json")))["functions"]["echo"]["action"] in \
        ("unchanged", "replaced")


def test_a_functionpaths_function_is_changed_through_its_folder(host, tmp_path):
    folder = write_function(tmp_path, "echo", {"index.js": F.ECHO}, name="echo", timeout=5)
    done = sora(host, "deploy", str(folder))
    assert done.returncode == 1
    assert done.stderr.startswith("sora: ResourceConflictException: ")


def test_refusals_before_anything_is_sent(host, tmp_path):
    folder = write_function(tmp_path, "linked", {"index.js": versioned("x")}, name="linked")
    os.symlink("/etc/hostname", folder / "hostname")
    done = sora(host, "deploy", str(folder))
    assert done.returncode == 2 and "hostname: a symbolic link" in done.stderr
    (folder / "sora.yaml").write_text(yaml.safe_dump({"name": "Not A Name"}))
    done = sora(host, "deploy", str(folder))
    assert done.returncode == 2 and "configuration error" in done.stderr
    done = sora(host, "rollback", "echo", "nothing")
    assert done.returncode == 1 and "ResourceNotFoundException" in done.stderr


def test_over_https_the_certificate_is_checked(host):
    listed = sora(host, "versions", "echo", "--host", host.https_url, "--cacert", str(host.cert))
    assert ok(listed).splitlines()[1].startswith("$LATEST  ")
    refused = sora(host, "versions", "echo", "--host", host.https_url)
    assert refused.returncode == 3 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr
    insecure = sora(host, "versions", "echo", "--host", host.https_url, "--insecure")
    assert insecure.returncode == 0, insecure.stderr
