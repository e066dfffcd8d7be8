"""The Lambda management API (issue 17 point 6), driven by boto3 against a real host with keys:
functions created from a zip made here, invoked, changed, deleted; kept over a restart;
every hostile zip refused with nothing written; functionPaths functions shown but not
changed; a key without the admin scope refused; bad fields named."""
from __future__ import annotations

import io
import json
import os
import stat
import zipfile

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.integration import functions as F
from tests.support import served, write_function

pytestmark = pytest.mark.integration

ADMIN = "admin-key-0123456789abcdef"
INVOKER = "invoke-key-0123456789abcdef"
ROLE = "arn:aws:iam::000000000000:role/sora"
NODE_CODE = "exports.handler = async (event) => ({ version: %r, event, env: process.env.GREETING });"
PY_CODE = "import os\ndef lambda_handler(event, context):\n    return {'py': %r, 'event': event}\n"


def make_zip(files: dict, infos: list | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        for info, data in infos or ():
            archive.writestr(info, data)
    return buffer.getvalue()


def node_zip(version: str) -> bytes:
    return make_zip({"index.js": NODE_CODE % version})


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("mgmt")
    dirs = [write_function(base / "fns", "onfolder", {"index.js": F.ECHO}, name="onfolder")]
    yield from served(base, dirs, https=False, api_key=ADMIN, extra={
        "auth": {"apiKeys": [{"name": "ops", "key": ADMIN, "scopes": ["admin"]},
                             {"name": "caller", "key": INVOKER, "scopes": ["invoke"]}]},
        "managedFunctions": {"maxZipMB": 12, "maxUnzippedMB": 20, "maxFiles": 100}})


def client(host, key_id="ops", secret=ADMIN):
    return boto3.client("lambda", endpoint_url=host.url, region_name="eu-west-3",
                        aws_access_key_id=key_id, aws_secret_access_key=secret,
                        config=Config(retries={"max_attempts": 0}, read_timeout=70))


@pytest.fixture(scope="module")
def lam(host):
    return client(host)


def refused(call) -> tuple[int, str, str]:
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response
    return (error["ResponseMetadata"]["HTTPStatusCode"], error["Error"]["Code"],
            error["Error"]["Message"])


def invoke(lam, name: str, event: dict | None = None) -> dict:
    out = lam.invoke(FunctionName=name, Payload=json.dumps(event or {}))
    assert out["StatusCode"] == 200 and "FunctionError" not in out, out
    return json.loads(out["Payload"].read())


def managed_names(host) -> list[str]:
    """What the store holds: function folders (not its own dot entries)."""
    root = host.base / "state" / "functions"
    return sorted(e for e in os.listdir(root) if not e.startswith(".")) if root.exists() else []


def leftover_uploads(host) -> list[str]:
    root = host.base / "state" / "functions"
    return [e for e in os.listdir(root) if e.startswith((".create-", ".update-", ".upload-"))] \
        if root.exists() else []


def test_create_invoke_update_delete(host, lam):
    created = lam.create_function(
        FunctionName="made", Runtime="nodejs20.x", Role=ROLE, Handler="index.handler",
        Code={"ZipFile": node_zip("one")}, Timeout=5, MemorySize=256, Description="first",
        Environment={"Variables": {"GREETING": "hello"}})
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert created["State"] == "Active", created
    assert created["FunctionArn"] == "arn:aws:lambda:eu-west-3:000000000000:function:made"
    assert created["Runtime"] == "nodejs20.x" and created["Handler"] == "index.handler"
    assert created["Timeout"] == 5 and created["MemorySize"] == 256
    assert created["Environment"]["Variables"] == {"GREETING": "hello"}
    assert created["CodeSize"] > 0 and created["CodeSha256"]
    assert invoke(lam, "made", {"n": 1}) == {"version": "one", "event": {"n": 1},
                                             "env": "hello"}

    got = lam.get_function(FunctionName="made")
    assert got["Configuration"]["Description"] == "first"
    assert "made" in [f["FunctionName"] for f in lam.list_functions()["Functions"]]

    updated = lam.update_function_code(FunctionName="made", ZipFile=node_zip("two"))
    assert updated["LastUpdateStatus"] == "Successful", updated
    assert updated["CodeSha256"] != created["CodeSha256"]
    assert invoke(lam, "made")["version"] == "two"

    changed = lam.update_function_configuration(
        FunctionName="made", Environment={"Variables": {"GREETING": "bonjour"}}, Timeout=7)
    assert changed["LastUpdateStatus"] == "Successful" and changed["Timeout"] == 7
    assert invoke(lam, "made")["env"] == "bonjour"

    deleted = lam.delete_function(FunctionName="made")
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    status, code, _ = refused(lambda: lam.invoke(FunctionName="made", Payload=b"{}"))
    assert (status, code) == (404, "ResourceNotFoundException")
    status, code, _ = refused(lambda: lam.get_function(FunctionName="made"))
    assert (status, code) == (404, "ResourceNotFoundException")
    assert "made" not in managed_names(host)


def test_python_and_a_zip_above_the_call_body_limit(host, lam):
    """A python3.x runtime runs as python; a zip larger than server.maxBodyBytes (6 MiB) is
    taken (the management routes' limit follows maxZipMB), while calls keep their limit."""
    padding = zipfile.ZipInfo("padding.bin")
    blob = make_zip({"app.py": PY_CODE % "big"},
                    [(padding, os.urandom(7 << 20))])   # stored random: the zip is > 7 MiB
    assert len(blob) > 7 << 20
    created = lam.create_function(FunctionName="pybig", Runtime="python3.12", Role=ROLE,
                                  Handler="app.lambda_handler", Code={"ZipFile": blob})
    assert created["State"] == "Active", created
    assert invoke(lam, "pybig", {"x": 1}) == {"py": "big", "event": {"x": 1}}
    status, code, _ = refused(lambda: lam.invoke(FunctionName="pybig",
                                                 Payload=json.dumps({"x": "y" * (7 << 20)})))
    assert status == 413
    lam.delete_function(FunctionName="pybig")


def test_versions_and_aliases(host, lam):
    created = lam.create_function(FunctionName="versioned", Runtime="nodejs22.x", Role=ROLE,
                                  Handler="index.handler", Code={"ZipFile": node_zip("v1")},
                                  Publish=True)
    assert created["Version"] == "1", created
    assert created["FunctionArn"].endswith(":function:versioned:1")
    updated = lam.update_function_code(FunctionName="versioned", ZipFile=node_zip("v2"),
                                       Publish=True)
    assert updated["Version"] == "2", updated
    # Nothing changed since version 2: publishing returns it, as Lambda does; CodeSha256 is
    # the zip's, as GetFunction shows it.
    sha = lam.get_function(FunctionName="versioned")["Configuration"]["CodeSha256"]
    status, code, _ = refused(lambda: lam.publish_version(FunctionName="versioned",
                                                          CodeSha256="not-" + sha))
    assert (status, code) == (412, "PreconditionFailedException")
    again = lam.publish_version(FunctionName="versioned", Description="same", CodeSha256=sha)
    assert again["ResponseMetadata"]["HTTPStatusCode"] == 201 and again["Version"] == "2"
    versions = [v["Version"] for v in
                lam.list_versions_by_function(FunctionName="versioned")["Versions"]]
    assert versions == ["$LATEST", "1", "2"]
    alias = lam.create_alias(FunctionName="versioned", Name="live", FunctionVersion="1")
    assert alias["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert alias["AliasArn"].endswith(":function:versioned:live")
    out = lam.invoke(FunctionName="versioned", Qualifier="live", Payload=b"{}")
    assert out["ExecutedVersion"] == "1" and json.loads(out["Payload"].read())["version"] == "v1"
    moved = lam.update_alias(FunctionName="versioned", Name="live", FunctionVersion="2",
                             RoutingConfig={"AdditionalVersionWeights": {"1": 0.5}})
    assert moved["FunctionVersion"] == "2"
    assert moved["RoutingConfig"]["AdditionalVersionWeights"] == {"1": 0.5}
    ran = {lam.invoke(FunctionName="versioned:live", Payload=b"{}")["ExecutedVersion"]
           for _ in range(30)}
    assert ran == {"1", "2"}
    assert lam.get_alias(FunctionName="versioned", Name="live")["FunctionVersion"] == "2"
    assert [a["Name"] for a in lam.list_aliases(FunctionName="versioned")["Aliases"]] == ["live"]
    got = lam.get_function(FunctionName="versioned", Qualifier="1")["Configuration"]
    assert got["Version"] == "1"
    status, code, _ = refused(lambda: lam.create_alias(FunctionName="versioned", Name="live",
                                                       FunctionVersion="1"))
    assert (status, code) == (409, "ResourceConflictException")
    status, code, _ = refused(lambda: lam.create_alias(FunctionName="versioned", Name="next",
                                                       FunctionVersion="9"))
    assert (status, code) == (404, "ResourceNotFoundException")
    assert lam.delete_alias(FunctionName="versioned", Name="live")[
        "ResponseMetadata"]["HTTPStatusCode"] == 204
    status, code, _ = refused(lambda: lam.get_alias(FunctionName="versioned", Name="live"))
    assert (status, code) == (404, "ResourceNotFoundException")
    # functionPaths functions publish versions and take aliases too.
    published = lam.publish_version(FunctionName="onfolder")
    assert published["Version"] == "1"
    lam.create_alias(FunctionName="onfolder", Name="stable", FunctionVersion="1")
    out = lam.invoke(FunctionName="onfolder", Qualifier="stable", Payload=b'{"x": 1}')
    assert out["ExecutedVersion"] == "1"
    lam.delete_function(FunctionName="versioned")
    assert not (host.base / "state" / "versions" / "versioned").exists()


def test_code_that_throws_at_load(host, lam):
    """A create whose module throws at load answers State Failed with the reason; a code update
    that throws keeps the previous code serving (LastUpdateStatus Failed)."""
    throws = make_zip({"index.js": "throw new Error('broken at load');"})
    created = lam.create_function(FunctionName="loadfail", Runtime="nodejs20.x", Role=ROLE,
                                  Handler="index.handler", Code={"ZipFile": throws})
    assert created["State"] == "Failed" and "broken at load" in created["StateReason"], created
    assert lam.get_function(FunctionName="loadfail")["Configuration"]["State"] == "Failed"
    lam.delete_function(FunctionName="loadfail")
    lam.create_function(FunctionName="goodthenbad", Runtime="nodejs20.x", Role=ROLE,
                        Handler="index.handler", Code={"ZipFile": node_zip("good")})
    updated = lam.update_function_code(FunctionName="goodthenbad", ZipFile=throws)
    assert updated["State"] == "Active" and updated["LastUpdateStatus"] == "Failed", updated
    assert "broken at load" in updated["LastUpdateStatusReason"]
    assert invoke(lam, "goodthenbad")["version"] == "good"
    lam.delete_function(FunctionName="goodthenbad")


SNOOP = """
const fs = require('fs');
exports.handler = async (event) => {
  const tried = (f) => { try { f(); return 'allowed'; } catch (e) { return e.code; } };
  return {
    functionJson: fs.existsSync(event.functionJson),
    stateDir: fs.readdirSync(event.stateDir),
    functions: fs.readdirSync(event.stateDir + '/functions'),
    mine: fs.readdirSync(event.stateDir + '/functions/snoop'),
    writeOwnCode: tried(() => fs.writeFileSync(__dirname + '/planted.js', 'x')),
    writeTmp: tried(() => fs.writeFileSync('/tmp/ok', 'x')),
    uid: process.getuid(),
  };
};
"""


def test_created_functions_are_sandboxed(host, lam):
    """As any function: its folder read-only, the state dir (its own function.json, the other
    functions' code, the store, the sockets) out of sight, its own uid."""
    lam.create_function(FunctionName="snoop", Runtime="nodejs20.x", Role=ROLE,
                        Handler="index.handler", Code={"ZipFile": make_zip({"index.js": SNOOP})})
    state = host.base / "state"
    seen = invoke(lam, "snoop", {"functionJson": str(state / "functions/snoop/function.json"),
                                 "stateDir": str(state)})
    # Only the empty folders bubblewrap makes to mount the code folder where it is.
    assert seen["functionJson"] is False and seen["stateDir"] == ["functions"]
    assert seen["functions"] == ["snoop"] and seen["mine"] == ["code"]
    assert seen["writeOwnCode"] in ("EROFS", "EACCES") and seen["writeTmp"] == "allowed"
    assert seen["uid"] != 0
    assert not (state / "functions/snoop/code/planted.js").exists()
    lam.delete_function(FunctionName="snoop")


def link(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = mode << 16
    return info


ATTACKS = {
    "dotdot": (lambda: make_zip({"index.js": "1", "../../escape.js": "x"}),
               "InvalidParameterValueException", "escapes"),
    "absolute": (lambda: make_zip({"index.js": "1", "/tmp/abs.js": "x"}),
                 "InvalidParameterValueException", "absolute"),
    "symlink": (lambda: make_zip({"index.js": "1"},
                                 [(link("passwd", stat.S_IFLNK | 0o777), "/etc/passwd")]),
                "InvalidParameterValueException", "symbolic link"),
    "fifo": (lambda: make_zip({"index.js": "1"}, [(link("pipe", stat.S_IFIFO | 0o644), "")]),
             "InvalidParameterValueException", "fifo"),
    "too-many-files": (lambda: make_zip({f"f{i}.js": "" for i in range(101)}),
                       "InvalidParameterValueException", "entries"),
    "unzipped-too-large": (lambda: make_zip({"index.js": "1", "zeros": b"\0" * (21 << 20)}),
                           "InvalidParameterValueException", "unzipped"),
    # Over maxZipMB (12), its base64 within the routes' body limit: refused by the zip's size.
    "zipped-too-large": (lambda: make_zip({}, [(zipfile.ZipInfo("r.bin"),
                                                os.urandom((12 << 20) + (1 << 19)))]),
                         "RequestTooLargeException", "managedFunctions.maxZipMB"),
    # Past the body limit as well: refused while the body is read.
    "body-too-large": (lambda: make_zip({}, [(zipfile.ZipInfo("r.bin"),
                                              os.urandom(14 << 20))]),
                       "RequestTooLargeException", "limit"),
    "not-a-zip": (lambda: b"this is not a zip", "InvalidParameterValueException", "unzip"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_hostile_zips_are_refused_with_nothing_written(host, lam, attack):
    make, error_type, words = ATTACKS[attack]
    status, code, message = refused(lambda: lam.create_function(
        FunctionName="attacked", Runtime="nodejs20.x", Role=ROLE, Handler="index.handler",
        Code={"ZipFile": make()}))
    assert code == error_type and words in message, message
    assert status == (413 if error_type == "RequestTooLargeException" else 400)
    assert "attacked" not in managed_names(host) and leftover_uploads(host) == []
    assert not (host.base / "escape.js").exists() and not os.path.exists("/tmp/abs.js")


def test_hostile_code_update_keeps_the_old_code(host, lam):
    lam.create_function(FunctionName="kept", Runtime="nodejs20.x", Role=ROLE,
                        Handler="index.handler", Code={"ZipFile": node_zip("kept")})
    status, code, message = refused(lambda: lam.update_function_code(
        FunctionName="kept", ZipFile=make_zip({"index.js": "1", "../x.js": "2"})))
    assert code == "InvalidParameterValueException" and "escapes" in message
    assert invoke(lam, "kept")["version"] == "kept" and leftover_uploads(host) == []
    lam.delete_function(FunctionName="kept")


@pytest.mark.parametrize("field,changes", [
    ("Runtime", {"Runtime": "java21"}),
    ("Handler", {"Handler": "no handler here"}),
    ("Handler", {"Handler": "missing.handler"}),
    ("Timeout", {"Timeout": 901}),
    ("MemorySize", {"MemorySize": 20000}),
    ("FunctionName", {"FunctionName": "Upper_Case"}),
    ("Environment", {"Environment": {"Variables": {"AWS_REGION": "x"}}}),
])
def test_invalid_fields_are_named(host, lam, field, changes):
    request = dict(FunctionName="badfield", Runtime="nodejs20.x", Role=ROLE,
                   Handler="index.handler", Code={"ZipFile": node_zip("x")})
    request.update(changes)
    status, code, message = refused(lambda: lam.create_function(**request))
    assert (status, code) == (400, "InvalidParameterValueException")
    assert message.startswith(field), message
    assert "badfield" not in managed_names(host)


def test_function_paths_functions_are_shown_not_changed(host, lam):
    got = lam.get_function(FunctionName="onfolder")["Configuration"]
    assert got["FunctionArn"].endswith(":function:onfolder") and got["Runtime"] == "nodejs"
    assert got["Handler"] == "index.handler"
    assert "onfolder" in [f["FunctionName"] for f in lam.list_functions()["Functions"]]
    for call in (lambda: lam.update_function_code(FunctionName="onfolder",
                                                  ZipFile=node_zip("x")),
                 lambda: lam.update_function_configuration(FunctionName="onfolder",
                                                           Timeout=9),
                 lambda: lam.delete_function(FunctionName="onfolder")):
        status, code, message = refused(call)
        assert (status, code) == (409, "ResourceConflictException")
        assert "comes from functionPaths" in message and "not change through this API" in message
    status, code, _ = refused(lambda: lam.create_function(
        FunctionName="onfolder", Runtime="nodejs20.x", Role=ROLE, Handler="index.handler",
        Code={"ZipFile": node_zip("x")}))
    assert (status, code) == (409, "ResourceConflictException")
    assert invoke(lam, "onfolder", {"still": "here"})["event"] == {"still": "here"}


def test_a_key_without_admin_is_refused(host, lam):
    caller = client(host, "caller", INVOKER)
    status, code, message = refused(lambda: caller.create_function(
        FunctionName="notallowed", Runtime="nodejs20.x", Role=ROLE, Handler="index.handler",
        Code={"ZipFile": node_zip("x")}))
    assert (status, code) == (403, "AccessDeniedException") and "admin" in message
    assert refused(lambda: caller.list_functions())[1] == "AccessDeniedException"
    assert refused(lambda: caller.delete_function(FunctionName="onfolder"))[0] == 403
    assert "notallowed" not in managed_names(host)
    assert refused(lambda: client(host, "ops", "wrong-secret-0123456789").list_functions()
                   )[1] == "InvalidSignatureException"


def test_a_restart_keeps_created_functions(host, lam):
    lam.create_function(FunctionName="survivor", Runtime="provided.al2023", Role=ROLE,
                        Handler="ignored",
                        Code={"ZipFile": make_zip({}, [(link("bootstrap", stat.S_IFREG | 0o755),
                                                        PROVIDED_BOOTSTRAP)])})
    assert invoke(lam, "survivor", {"a": 1}) == {"provided": {"a": 1}}
    assert host.stop() == 0
    again = host.restarted().start(["survivor"])
    try:
        lam2 = client(again)
        assert invoke(lam2, "survivor", {"b": 2}) == {"provided": {"b": 2}}
        assert lam2.get_function(FunctionName="survivor")["Configuration"]["Runtime"] == \
            "provided.al2023"
        lam2.delete_function(FunctionName="survivor")
    finally:
        assert again.stop() == 0   # (the module fixture's stop finds `host` stopped)


# A `provided` function: the Lambda Runtime API's loop, in Python.
PROVIDED_BOOTSTRAP = """#!/usr/bin/env python3
import json, os, urllib.request
api = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime/invocation/"
while True:
    with urllib.request.urlopen(api + "next") as r:
        rid = r.headers["Lambda-Runtime-Aws-Request-Id"]
        event = json.loads(r.read())
    urllib.request.urlopen(urllib.request.Request(
        api + rid + "/response", data=json.dumps({"provided": event}).encode(),
        method="POST")).read()
"""
