"""What a function URL caller learns about the host from a failure (issue 15 point 4), on a live
host with the default `server.errorDetail: message`: a caller probes with calls that fail in
every way that names files (a function's error about its own folder, a stack trace, a setup
that failed, a broken sora.yaml) and must find no host path in what comes back; the Invoke API
keeps Lambda's error payload, and `/healthz` (the admin's view) keeps every reason. The other
levels are tests/unit/test_error_detail.py."""
from __future__ import annotations

import json
import os

import pytest

import sora
from tests.integration import functions as F
from tests.support import SoraHost, json_of, lambda_client, write_function

pytestmark = pytest.mark.integration

# Fails in ways whose messages and traces name the function's folder.
LEAKY = r"""
const fs = require('fs');
const path = require('path');
exports.handler = async (event) => {
  const kind = (event.queryStringParameters || {}).kind || event.kind;
  if (kind === 'require') require(path.join(__dirname, 'lib', 'missing-module'));
  return JSON.parse(fs.readFileSync(path.join(__dirname, 'data.json'), 'utf8'));
};
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("detail")
    fns = base / "fns"
    broken_yaml = fns / "broken-yaml"
    broken_yaml.mkdir(parents=True)
    (broken_yaml / "sora.yaml").write_text("name: broken-yaml\nlanguage: nodejs\n"
                                           "entrypoint: index.js\nhandler: handler\n"
                                           "timout: 3\n")
    dirs = [write_function(fns, "leaky", {"index.js": LEAKY}, name="leaky"),
            write_function(fns, "py-errors", {"app.py": F.PY_ERRORS}, name="py-errors",
                           language="python", entrypoint="app.py"),
            write_function(fns, "setup-fails", {"index.js": LEAKY}, name="setup-fails",
                           setup=["echo about to fail", "exit 7"]),
            broken_yaml]
    h = SoraHost(base, dirs, https=False)
    h.start(wait_functions=["leaky", "py-errors"])
    yield h
    assert h.stop() == 0


def host_paths(host) -> list[str]:
    """Every path of the host a caller could learn something from."""
    paths = {str(host.base), str(host.base / "state"), str(host.config_path),
             os.path.dirname(os.path.abspath(sora.__file__)), *map(str, host.function_dirs)}
    return sorted(paths | {os.path.realpath(path) for path in paths})


def leaks(host, response) -> list[str]:
    seen = response.text + json.dumps(dict(response.headers))
    return [path for path in host_paths(host) if path in seen]


def test_a_function_url_caller_sees_type_and_message_and_no_host_path(host):
    # The function's own error about its folder: the message, with the folder as `.`.
    r = host.invoke("leaky")
    assert r.status_code == 502 and not leaks(host, r), leaks(host, r)
    assert json_of(r) == {"errorType": "Error", "errorMessage":
                          "ENOENT: no such file or directory, open './data.json'"}
    r = host.invoke("leaky", params={"kind": "require"})
    assert r.status_code == 502 and not leaks(host, r), r.text
    assert set(json_of(r)) == {"errorType", "errorMessage"}
    assert "missing-module" in json_of(r)["errorMessage"]
    # A Python exception: no traceback.
    r = host.invoke("py-errors")
    assert r.status_code == 502 and json_of(r) == {"errorType": "ValidationError",
                                                  "errorMessage": "name is required"}
    # A setup that failed (its reason names its log) and a broken sora.yaml (its reason names
    # the file; an event for it is refused at once): 503, why left to the operator.
    for name, headers in (("setup-fails", {}), ("broken-yaml", {}),
                          ("broken-yaml", {"X-Sora-Invocation-Type": "Event"})):
        r = host.invoke(name, headers=headers)
        assert r.status_code == 503 and not leaks(host, r), (name, r.text)
        body = json_of(r)
        # Not "the broker does not know it yet, retry": a broken sora.yaml never serves.
        assert body["errorType"] == "Sora.FunctionUnavailable", (name, headers, body)
        assert "failed to start" in body["errorMessage"], body
        assert "exit status 7" not in body["errorMessage"], body


def test_the_invoke_api_keeps_lambdas_payload_and_healthz_keeps_the_reasons(host):
    result = lambda_client(host.url).invoke(FunctionName="leaky", Payload=b"{}")
    body = json.loads(result["Payload"].read())
    assert result["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Error" and "data.json" in body["errorMessage"]
    assert any("index.js" in line for line in body["trace"]), body
    functions = host.health()["functions"]
    setup_log = str(host.base / "state" / "setup" / "setup-fails.log")
    assert setup_log in functions["setup-fails"]["reason"]
    assert str(host.function_dirs[3] / "sora.yaml") in functions["broken-yaml"]["reason"]
    # And the host's log has the failed calls' request ids with the whole story.
    assert "exit status 7" in host.log(whole=True)
