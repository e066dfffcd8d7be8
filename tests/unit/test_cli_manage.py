"""`sora deploy | versions | alias | rollback | reload` (issue 17 point 7) without a host: the
calls each makes to the Lambda management API (botocore's Stubber checks them against
Lambda's model), sora.yaml as Lambda's settings, the credentials, and what is printed."""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import zipfile

import botocore.session
import pytest
import yaml
from botocore.stub import ANY, Stubber

from sora.cli import deploy as D
from sora.cli import lambda_api, main as cli, manage
from sora.cli.host import CliError, Response
from sora.config import load_function_config

ARN = "arn:aws:lambda:us-east-1:000000000000:function:hello"


def function_folder(tmp_path, spec: dict, files: dict[str, str] | None = None):
    root = tmp_path / "hello"
    root.mkdir(exist_ok=True)
    for name, text in (files or {"index.js": "exports.handler = async () => 1;\n"}).items():
        (root / name).write_text(text)
    (root / "sora.yaml").write_text(yaml.safe_dump(
        {"name": "hello", "language": "nodejs", "entrypoint": "index.js", **spec}))
    return root


def stubbed():
    client = botocore.session.get_session().create_client(
        "lambda", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s")
    return client, Stubber(client)


def configuration(**fields) -> dict:
    return {"FunctionName": "hello", "FunctionArn": ARN, "Version": "$LATEST",
            "State": "Active", "LastUpdateStatus": "Successful", **fields}


# --- sora.yaml as Lambda's settings -----------------------------------------------------------

def test_sora_yaml_gives_lambdas_settings(tmp_path):
    fn = load_function_config(str(function_folder(
        tmp_path, {"timeout": 2.5, "memory": 512, "env": {"STAGE": "dev"}, "runtime": "node22"})))
    assert D.lambda_settings(fn) == {
        "Runtime": "nodejs22.x", "Handler": "index.handler", "Timeout": 3, "MemorySize": 512,
        "Environment": {"Variables": {"STAGE": "dev"}}}


@pytest.mark.parametrize("spec, files, runtime, handler", [
    ({"language": "python", "entrypoint": "src/app.py", "handler": "main",
      "runtime": "python3.12"}, {"src/app.py": ""}, "python3.12", "src/app.main"),
    ({"language": "python", "handler": "app.lambda_handler"}, {"app.py": ""},
     D.DEFAULT_RUNTIMES["python"], "app.lambda_handler"),
    ({"language": "nodejs", "handler": "index.handler", "entrypoint": None},
     {"index.mjs": ""}, "nodejs20.x", "index.handler"),
    ({"language": "provided", "entrypoint": None, "handler": "function.handler"},
     {"bootstrap": ""}, "provided.al2023", "function.handler"),
])
def test_each_language(tmp_path, spec, files, runtime, handler):
    root = tmp_path / "hello"
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    (root / "sora.yaml").write_text(yaml.safe_dump({"name": "hello", **spec}))
    settings = D.lambda_settings(load_function_config(str(root)))
    assert (settings["Runtime"], settings["Handler"]) == (runtime, handler)


def test_what_lambdas_api_cannot_say_is_refused_with_the_reason(tmp_path):
    fn = load_function_config(str(function_folder(tmp_path, {"memory": 64})))
    with pytest.raises(CliError, match="memory 64: Lambda's API takes at least 128 MB"):
        D.lambda_settings(fn)


def test_an_entrypoint_lambdas_lookup_would_not_find_is_refused(tmp_path):
    fn = load_function_config(str(function_folder(
        tmp_path, {"entrypoint": "index.mjs"}, {"index.mjs": "", "index.js": ""})))
    with pytest.raises(CliError, match="the host would load 'index.js' for Lambda's handler "
                       "index.handler"):
        D.lambda_settings(fn)


def test_only_differing_settings_count_as_a_change():
    wanted = {"Runtime": "nodejs20.x", "Handler": "index.handler", "Timeout": 3,
              "MemorySize": 256, "Environment": {"Variables": {}}}
    current = {**wanted}
    del current["Environment"]                  # Lambda leaves it out when there is none
    assert D.settings_differ(current, wanted) == []
    assert D.settings_differ({**current, "Timeout": 30}, wanted) == ["Timeout"]


# --- deploy's calls ------------------------------------------------------------------------------

def code_of(root) -> bytes:
    from sora.cli.function_zip import build_zip
    return build_zip(str(root)).data


def test_deploy_creates_a_function_the_host_does_not_have_and_publishes(tmp_path):
    root = function_folder(tmp_path, {})
    client, stub = stubbed()
    stub.add_client_error("get_function", "ResourceNotFoundException", http_status_code=404)
    stub.add_response("create_function", configuration(Version="1"), {
        "FunctionName": "hello", "Role": D.PLACEHOLDER_ROLE, "Code": {"ZipFile": code_of(root)},
        "Publish": True, "Runtime": "nodejs20.x", "Handler": "index.handler", "Timeout": 30,
        "MemorySize": 256, "Environment": {"Variables": {}}})
    stub.add_response("get_function", {"Configuration": configuration(State="Pending")},
                      {"FunctionName": "hello"})
    stub.add_response("get_function", {"Configuration": configuration()},
                      {"FunctionName": "hello"})
    with stub:
        result = D.deploy(client, str(root), None, True, None, timeout=10)
    stub.assert_no_pending_responses()
    assert (result.action, result.version, result.arn) == ("created", "1", ARN)


def test_deploy_of_an_unchanged_folder_uploads_nothing(tmp_path):
    root = function_folder(tmp_path, {})
    fn = load_function_config(str(root))
    client, stub = stubbed()
    stub.add_response("get_function", {"Configuration": configuration(
        CodeSha256=D.code_sha256(code_of(root)), **D.lambda_settings(fn))},
        {"FunctionName": "hello"})
    with stub:
        result = D.deploy(client, str(root), None, False, None, timeout=10)
    stub.assert_no_pending_responses()
    assert (result.action, result.changed, result.version) == ("unchanged", [], None)


def test_deploy_updates_code_then_configuration_then_publishes(tmp_path):
    root = function_folder(tmp_path, {"timeout": 5})
    client, stub = stubbed()
    stub.add_response("get_function", {"Configuration": configuration(
        CodeSha256="old", Runtime="nodejs20.x", Handler="index.handler", Timeout=30,
        MemorySize=256)}, {"FunctionName": "other"})
    stub.add_response("update_function_code", configuration(),
                      {"FunctionName": "other", "ZipFile": code_of(root)})
    stub.add_response("get_function", {"Configuration": configuration()},
                      {"FunctionName": "other"})
    stub.add_response("update_function_configuration", configuration(), {
        "FunctionName": "other", "Runtime": "nodejs20.x", "Handler": "index.handler",
        "Timeout": 5, "MemorySize": 256, "Environment": {"Variables": {}}})
    stub.add_response("get_function", {"Configuration": configuration()},
                      {"FunctionName": "other"})
    stub.add_response("publish_version", configuration(Version="4"),
                      {"FunctionName": "other", "Description": "release"})
    with stub:
        result = D.deploy(client, str(root), "other", True, "release", timeout=10)
    stub.assert_no_pending_responses()
    assert (result.name, result.action, result.changed, result.version) == \
        ("other", "updated", ["code", "configuration"], "4")


def test_a_failed_switch_is_the_deploys_error(tmp_path):
    root = function_folder(tmp_path, {})
    client, stub = stubbed()
    stub.add_response("get_function", {"Configuration": configuration(CodeSha256="old")},
                      {"FunctionName": "hello"})
    stub.add_response("update_function_code", configuration(), {"FunctionName": "hello",
                                                                "ZipFile": ANY})
    stub.add_response("get_function", {"Configuration": configuration(
        LastUpdateStatus="Failed", LastUpdateStatusReason="SyntaxError: Unexpected token")},
        {"FunctionName": "hello"})
    with stub, pytest.raises(CliError, match="hello did not go live: SyntaxError: Unexpected"):
        D.deploy(client, str(root), None, False, None, timeout=10)


def test_a_folder_with_a_link_is_refused_before_any_call(tmp_path):
    root = function_folder(tmp_path, {})
    (root / "escape").symlink_to("/etc/passwd")
    client, stub = stubbed()
    with stub, pytest.raises(CliError, match="escape: a symbolic link") as caught:
        D.deploy(client, str(root), None, False, None, timeout=10)
    assert caught.value.exit_code == 2


def test_the_zip_sent_is_the_folder(tmp_path):
    root = function_folder(tmp_path, {})
    data = code_of(root)
    assert sorted(zipfile.ZipFile(io.BytesIO(data)).namelist()) == ["index.js", "sora.yaml"]
    assert D.code_sha256(data) == base64.b64encode(hashlib.sha256(data).digest()).decode()


# --- alias, versions, rollback -----------------------------------------------------------------

@pytest.mark.parametrize("text, parsed", [("2=0.1", ("2", 0.1)), ("12=25%", ("12", 0.25)),
                                          ("3=1", ("3", 1.0)), (" 3=0 ", ("3", 0.0))])
def test_weights(text, parsed):
    assert manage.parse_weight(text) == parsed


@pytest.mark.parametrize("text", ["2", "x=0.1", "2=1.5", "2=150%", "2=0.1.1", "$LATEST=0.5"])
def test_bad_weights(text):
    with pytest.raises(CliError, match="--weight: expected VERSION=WEIGHT") as caught:
        manage.parse_weight(text)
    assert caught.value.exit_code == 2


def test_the_alias_command_line_parses():
    args = cli.parser().parse_args(["alias", "hello", "live", "3", "--weight", "2=0.1",
                                    "--json", "--key-name", "ops"])
    assert (args.func, args.name, args.alias, args.version, args.weight, args.json,
            args.key_name) == (manage.cmd_alias, "hello", "live", "3", ["2=0.1"], True, "ops")
    args = cli.parser().parse_args(["deploy", "fns/hello", "--publish", "--name", "h2"])
    assert (args.dir, args.publish, args.name) == ("fns/hello", True, "h2")
    args = cli.parser().parse_args(["reload", "-f", "a", "-f", "b", "--setup", "skip"])
    assert (args.function, args.setup) == (["a", "b"], "skip")


def run(monkeypatch, argv, client):
    monkeypatch.setattr(manage, "lambda_client", lambda args, host=None: client)
    return cli.main(argv + ["--host", "http://127.0.0.1:1"])


def test_alias_creates_then_moves_and_clears_the_weight(monkeypatch, capsys):
    client, stub = stubbed()
    stub.add_client_error("get_alias", "ResourceNotFoundException", http_status_code=404)
    alias = {"Name": "live", "FunctionVersion": "3", "AliasArn": ARN + ":live",
             "RoutingConfig": {"AdditionalVersionWeights": {"2": 0.1}}}
    stub.add_response("create_alias", alias, {
        "FunctionName": "hello", "Name": "live", "FunctionVersion": "3",
        "RoutingConfig": {"AdditionalVersionWeights": {"2": 0.1}}})
    stub.add_response("get_alias", alias, {"FunctionName": "hello", "Name": "live"})
    stub.add_response("update_alias", {**alias, "FunctionVersion": "4", "RoutingConfig": {}}, {
        "FunctionName": "hello", "Name": "live", "FunctionVersion": "4",
        "RoutingConfig": {"AdditionalVersionWeights": {}}})
    with stub:
        assert run(monkeypatch, ["alias", "hello", "live", "3", "--weight", "2=0.1"],
                   client) == 0
        assert run(monkeypatch, ["alias", "hello", "live", "4"], client) == 0
    assert capsys.readouterr().out.splitlines() == [
        "created hello:live -> version 3 (90%), version 2 (10%)",
        "hello:live -> version 4"]


def test_a_weight_on_the_aliass_own_version_is_refused(capsys):
    assert cli.main(["alias", "hello", "live", "3", "--weight", "3=0.5"]) == 2
    assert "the alias's own version" in capsys.readouterr().err


def test_versions_shows_which_aliases_name_each(capsys):
    manage.render_versions(
        [{"Version": "$LATEST", "CodeSha256": "abc", "LastModified": "2026-12-06T20:00:00Z"},
         {"Version": "1", "CodeSha256": "abc", "LastModified": "2026-12-06T20:01:00Z",
          "Description": "first\x1b[2J"},
         {"Version": "2", "CodeSha256": "def", "LastModified": "2026-12-06T20:02:00Z"}],
        [{"Name": "live", "FunctionVersion": "2",
          "RoutingConfig": {"AdditionalVersionWeights": {"1": 0.25}}},
         {"Name": "beta", "FunctionVersion": "$LATEST"}])
    assert capsys.readouterr().out.splitlines() == [
        "VERSION  ALIASES     CODE SHA256  LAST MODIFIED         DESCRIPTION",
        "$LATEST  beta        abc          2026-12-06T20:00:00Z",
        "1        live (25%)  abc          2026-12-06T20:01:00Z  first\\x1b[2J",
        "2        live (75%)  def          2026-12-06T20:02:00Z"]


def test_rollback_goes_to_the_version_the_host_kept(monkeypatch, capsys):
    client, stub = stubbed()
    monkeypatch.setattr(manage, "raw_answer", lambda _client, op, **params: (
        {"Name": "live", "FunctionVersion": "3"},
        {"Name": "live", "FunctionVersion": "3", "PreviousVersion": "2"}))
    stub.add_response("update_alias", {"Name": "live", "FunctionVersion": "2"}, {
        "FunctionName": "hello", "Name": "live", "FunctionVersion": "2",
        "RoutingConfig": {"AdditionalVersionWeights": {}}})
    with stub:
        assert run(monkeypatch, ["rollback", "hello", "live"], client) == 0
    assert capsys.readouterr().out == "hello:live: version 3 -> 2\n"


def test_rollback_of_an_alias_that_never_moved(monkeypatch, capsys):
    client, _ = stubbed()
    monkeypatch.setattr(manage, "raw_answer", lambda _client, op, **params: (
        {"Name": "live", "FunctionVersion": "1"}, {"Name": "live", "FunctionVersion": "1"}))
    assert run(monkeypatch, ["rollback", "hello", "live"], client) == 1
    assert "has not moved since it was created" in capsys.readouterr().err


def test_an_api_error_is_printed_with_its_type(monkeypatch, capsys):
    client, stub = stubbed()
    stub.add_client_error("list_versions_by_function", "ResourceConflictException",
                          "hello comes from functionPaths", http_status_code=409)
    with stub:
        assert run(monkeypatch, ["versions", "hello"], client) == 1
    assert capsys.readouterr().err == \
        "sora: ResourceConflictException: hello comes from functionPaths (HTTP 409)\n"


# --- reload -----------------------------------------------------------------------------------

REPORT = {"functions": {"echo": {"action": "replaced"}, "new": {"action": "added"},
                        "bad": {"action": "failed", "reason": "SyntaxError in index.js"}},
          "needsRestart": ["server.httpsPort"], "errors": []}


def test_reload_prints_each_function_and_fails_when_one_did(monkeypatch, capsys):
    sent = {}

    def call(self, method, path, body=None, headers=None, params=None):
        sent.update(method=method, path=path, body=json.loads(body))
        return Response(200, {}, json.dumps(REPORT).encode())
    monkeypatch.setattr(cli.Host, "call", call)
    assert cli.main(["reload", "--host", "http://127.0.0.1:1", "-f", "echo"]) == 1
    assert sent == {"method": "POST", "path": "/api/reload",
                    "body": {"functions": ["echo"], "setup": "auto"}}
    out = capsys.readouterr()
    assert out.out.splitlines() == [
        "NAME  ACTION    REASON",
        "bad   failed    SyntaxError in index.js",
        "echo  replaced",
        "new   added",
        "needs restart (changed in host-config.yaml, read only at start): server.httpsPort"]
    assert "keep serving their previous code" in out.err
    REPORT["functions"]["bad"] = {"action": "unchanged"}
    assert cli.main(["reload", "--host", "http://127.0.0.1:1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == REPORT


# --- credentials ------------------------------------------------------------------------------

def args_of(**given):
    return argparse.Namespace(**{"api_key": None, "key_name": None, "config": None, **given})


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("SORA_API_KEY", "SORA_API_KEY_NAME", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "SORA_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_the_key_name_comes_from_the_host_config(clean_env, tmp_path):
    config = tmp_path / "host-config.yaml"
    config.write_text(yaml.safe_dump({"functionPaths": ["fns"], "stateDir": str(tmp_path / "s"),
                                      "server": {"httpPort": 8080}, "auth": {"apiKeys": [
                                          {"name": "ops", "key": "k" * 24, "scopes": ["admin"]},
                                          {"name": "ci", "key": "c" * 24, "scopes": ["admin"]}]}}))
    assert lambda_api.credentials(args_of(api_key="c" * 24)) == ("ci", "c" * 24)
    assert lambda_api.credentials(args_of(api_key="c" * 24, key_name="x")) == ("x", "c" * 24)


def test_the_key_name_from_the_aws_variables(clean_env, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ops")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-0123456789")
    assert lambda_api.credentials(args_of()) == ("ops", "secret-0123456789")
    monkeypatch.setenv("SORA_API_KEY", "other-key")
    monkeypatch.setenv("SORA_API_KEY_NAME", "ci")
    assert lambda_api.credentials(args_of()) == ("ci", "other-key")


def test_a_key_without_a_name_is_explained(clean_env):
    with pytest.raises(CliError, match="cannot tell the API key's name"):
        lambda_api.credentials(args_of(api_key="some-key"))
    assert lambda_api.credentials(args_of()) == lambda_api.OPEN_HOST_CREDENTIALS


def test_settings_lambdas_api_does_not_carry_are_named(tmp_path, monkeypatch, capsys):
    root = function_folder(tmp_path, {"setup": ["npm install"], "minInstances": 0,
                                      "trigger": "http", "workers": 1})
    client, stub = stubbed()
    fn = load_function_config(str(root))
    stub.add_response("get_function", {"Configuration": configuration(
        CodeSha256=D.code_sha256(code_of(root)), **D.lambda_settings(fn))},
        {"FunctionName": "hello"})
    with stub:
        assert run(monkeypatch, ["deploy", str(root)], client) == 0
    out = capsys.readouterr()
    assert out.err.startswith("sora: note: minInstances, setup in sora.yaml: not part of "
                              "Lambda's API")
    assert out.out.startswith("hello: unchanged, as on the host (2 files")


def test_the_hosts_limits_come_from_its_config(tmp_path):
    config = tmp_path / "host-config.yaml"
    config.write_text(yaml.safe_dump({"functionPaths": ["fns"], "stateDir": str(tmp_path / "s"),
                                      "server": {"httpPort": 8080},
                                      "managedFunctions": {"maxZipMB": 5, "maxFiles": 10}}))
    limits = D.host_limits(str(config))
    assert (limits.max_zipped, limits.max_unzipped, limits.max_entries) == \
        (5 << 20, 250 << 20, 10)
    assert D.host_limits(None) == D.host_limits(str(tmp_path / "missing.yaml")) == D.Limits()


def test_raw_answer_keeps_the_fields_botocores_model_lacks():
    """rollback reads GetAlias's PreviousVersion, which botocore's parser drops: from the
    body as sent, by a real botocore client over HTTP (a local server answers)."""
    import http.server
    import threading

    body = json.dumps({"Name": "live", "FunctionVersion": "3", "PreviousVersion": "2",
                       "AliasArn": ARN + ":live"}).encode()
    seen = []

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization", "")))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        args = cli.parser().parse_args([
            "versions", "x", "--host", f"http://127.0.0.1:{server.server_port}",
            "--api-key", "secret-0123456789abcdef", "--key-name", "ops", "--timeout", "5"])
        client = lambda_api.lambda_client(args)
        parsed, raw = lambda_api.raw_answer(client, "GetAlias", FunctionName="hello", Name="live")
    finally:
        server.shutdown()
        server.server_close()
    assert "PreviousVersion" not in parsed and parsed["FunctionVersion"] == "3"
    assert raw["PreviousVersion"] == "2"
    assert seen[0][0] == "/2015-03-31/functions/hello/aliases/live"
    assert seen[0][1].startswith("AWS4-HMAC-SHA256 Credential=ops/")
