"""API keys and scopes (host-config.yaml `auth.apiKeys`), against a real host."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.integration import functions as F
from tests.support import json_of, served, write_function

pytestmark = pytest.mark.integration

ADMIN = "admin-key-0123456789abcdef"
ALL = "invoke-all-0123456789abcdef"
ONLY_ECHO = "invoke-echo-0123456789abcd"


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("auth")
    fns = base / "fns"
    (base / "echo.key").write_text(ONLY_ECHO + "\n")
    dirs = [write_function(fns, "echo", {"index.js": F.ECHO}, name="echo"),
            write_function(fns, "other", {"index.js": F.ECHO}, name="other"),
            write_function(fns, "public", {"index.js": F.ECHO}, name="public", auth="none")]
    yield from served(base, dirs, https=False, api_key=ADMIN, env={"ALL_KEY": ALL}, extra={
        "auth": {"apiKeys": [
            {"name": "ops", "key": ADMIN, "scopes": ["admin"]},
            {"name": "ci", "keyEnv": "ALL_KEY", "scopes": ["invoke"]},
            {"name": "echo-only", "keyFile": "echo.key", "scopes": ["invoke:echo"]},
        ]}})


def call(host, method, path, key=None, header="Authorization", **kwargs):
    headers = {}
    if key is not None:
        headers[header] = f"Bearer {key}" if header == "Authorization" else key
    return requests.request(method, host.url + path, headers=headers, timeout=30, **kwargs)


ROUTES = [("GET", "/functions/echo"), ("POST", "/2015-03-31/functions/echo/invocations"),
          ("GET", "/api/functions"), ("GET", "/api/functions/echo/invocations"),
          ("GET", "/api/functions/echo/logs"), ("GET", "/api/functions/echo/dlq")]


@pytest.mark.parametrize("method,path", ROUTES)
def test_no_key_or_a_wrong_key_is_401(host, method, path):
    for key in (None, "wrong-key-0123456789abcdef"):
        r = call(host, method, path, key)
        assert r.status_code == 401, (path, r.text)
        body = json_of(r)
        aws_type = "UnrecognizedClientException" if key else \
            "MissingAuthenticationTokenException"
        # The Invoke API answers in Lambda's error format (the SDKs' callers read it).
        expected = aws_type if path.startswith("/2015-03-31/") else "Sora.Unauthorized"
        assert body["errorType"] == expected and body["errorMessage"]
        assert r.headers["x-amzn-ErrorType"] == aws_type
        assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_scopes(host):
    assert call(host, "GET", "/functions/echo", ONLY_ECHO).status_code == 200
    assert call(host, "POST", "/2015-03-31/functions/echo/invocations", ONLY_ECHO,
                data=b"{}").status_code == 200
    # An ARN and a qualifier name the same function.
    arn = "arn:aws:lambda:us-east-1:000000000000:function:echo:$LATEST"
    assert call(host, "POST", f"/2015-03-31/functions/{arn}/invocations", ONLY_ECHO,
                data=b"{}").status_code == 200
    denied = call(host, "GET", "/functions/other", ONLY_ECHO)
    assert denied.status_code == 403 and json_of(denied)["errorType"] == "Sora.Forbidden"
    assert "invoke:other" in json_of(denied)["errorMessage"]
    for key in (ONLY_ECHO, ALL):   # invoke keys on admin routes
        r = call(host, "GET", "/api/functions", key)
        assert r.status_code == 403, r.text
    assert call(host, "GET", "/functions/other", ALL).status_code == 200
    assert call(host, "GET", "/functions/other", ALL, header="X-Api-Key").status_code == 200
    assert call(host, "GET", "/api/functions", ADMIN).status_code == 200
    assert call(host, "GET", "/functions/other", ADMIN).status_code == 200


def test_public_function_needs_no_key_but_its_invoke_api_does(host):
    assert call(host, "GET", "/functions/public").status_code == 200
    assert call(host, "POST", "/2015-03-31/functions/public/invocations",
                data=b"{}").status_code == 401


def test_health_is_open_but_its_details_need_admin(host):
    open_view = call(host, "GET", "/healthz").json()
    assert open_view == {"status": "ok"}
    assert call(host, "GET", "/healthz", ALL).json() == {"status": "ok"}
    assert set(call(host, "GET", "/healthz", ADMIN).json()["functions"]) == \
        {"echo", "other", "public"}


def test_refusals_are_logged_without_the_key(host):
    call(host, "GET", "/api/functions", ALL)
    call(host, "GET", "/functions/echo", "not-a-real-key-0123456789")
    log = host.log(whole=True)
    assert "auth: 403 for GET /api/functions" in log and "key 'ci'" in log
    assert "auth: 401 for GET /functions/echo" in log
    assert ALL not in log and "not-a-real-key" not in log and ADMIN not in log


def test_cli_sends_its_key(host):
    sora = [str(Path(sys.executable).parent / "sora")]
    env = dict(os.environ, SORA_HOST=host.url)
    env.pop("SORA_API_KEY", None)
    denied = subprocess.run([*sora, "ls"], capture_output=True, text=True, env=env, timeout=60)
    assert denied.returncode != 0 and "401" in denied.stderr + denied.stdout
    ok = subprocess.run([*sora, "ls", "--json"], capture_output=True, text=True, timeout=60,
                        env=dict(env, SORA_API_KEY=ADMIN))
    assert ok.returncode == 0, ok.stderr
    assert {f["name"] for f in json.loads(ok.stdout)["functions"]} >= {"echo", "public"}


@pytest.mark.parametrize("header", ["Authorization", "X-Api-Key"])
def test_the_key_sora_consumed_never_reaches_the_function(host, header):
    # issue 14 point 4: a function called once with the admin key could use it against /api.
    for key in (ADMIN, ALL, ONLY_ECHO):
        headers = {header: f"Bearer {key}" if header == "Authorization" else key,
                   "X-Callers-Own": "kept"}
        r = requests.get(host.url + "/functions/echo", headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        event = json_of(r)["event"]
        assert "authorization" not in event["headers"] and "x-api-key" not in event["headers"]
        assert key not in json.dumps(event) and event["headers"]["x-callers-own"] == "kept"


def test_both_credential_headers_at_once_are_both_kept_from_the_function(host):
    r = requests.get(host.url + "/functions/echo", timeout=30, headers={
        "X-Api-Key": ADMIN, "Authorization": "Basic dXNlcjpwYXNzd29yZA=="})
    assert r.status_code == 200, r.text
    headers = json_of(r)["event"]["headers"]
    assert "authorization" not in headers and "x-api-key" not in headers


def test_a_public_function_still_gets_its_callers_credentials(host):
    # Sora consumed nothing to let this call in: the caller's Authorization is the function's.
    r = requests.get(host.url + "/functions/public", timeout=30,
                     headers={"Authorization": "Bearer the-callers-own-token"})
    assert r.status_code == 200, r.text
    assert json_of(r)["event"]["headers"]["authorization"] == "Bearer the-callers-own-token"
