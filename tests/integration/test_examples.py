"""The shipped examples, including real npm dependencies installed by `setup`, and an Express
app behind the serverless-http adapter (the way such apps run behind Lambda function URLs)."""
from __future__ import annotations

import shutil

import pytest
import requests

from tests.support import ROOT, SoraHost, json_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("examples")
    dirs = []
    for name in ("hello", "uuid-npm", "express-api"):
        dirs.append(base / name)
        shutil.copytree(ROOT / "examples" / name, base / name,
                        ignore=shutil.ignore_patterns("node_modules", "package-lock.json"))
    h = SoraHost(base, dirs)
    h.start(timeout=180)  # npm install runs first
    yield h
    assert h.stop() == 0
    assert not h.leftovers(), h.leftovers()


def test_hello(host):
    r = host.invoke("hello", params={"name": "Sora"})
    assert json_of(r)["message"] == "Hello, Sora!"
    assert json_of(r)["requestId"] == r.headers["X-Sora-Request-Id"]


def test_npm_dependency_installed_by_setup(host):
    r = requests.get(f"{host.https_url}/functions/uuid-npm/some/path", verify=str(host.cert),
                     timeout=10)
    assert r.status_code == 201
    body = json_of(r)
    assert body["valid"] is True and body["path"] == "/some/path"
    assert r.cookies.get("last-id") == body["id"]
    assert (host.base / "uuid-npm" / "node_modules" / "uuid").is_dir()


def test_express_routes_params_query_and_cookies(host):
    r = host.invoke("express-api", "/users/42", params={"a": "1"},
                    headers={"Cookie": "session=abc"})
    assert r.status_code == 200
    assert json_of(r) == {"id": "42", "q": {"a": "1"}, "cookie": "session=abc"}
    assert r.raw.headers.getlist("Set-Cookie") == ["seen=42; Path=/; HttpOnly",
                                                   "theme=dark; Path=/"]


def test_express_json_body_and_status(host):
    r = host.invoke("express-api", "/echo", method="POST", json={"x": [1, 2]})
    assert r.status_code == 201
    assert json_of(r) == {"got": {"x": [1, 2]}, "type": "application/json"}


def test_express_binary_response(host):
    r = host.invoke("express-api", "/binary")
    assert r.status_code == 200 and r.content == bytes([0, 255, 1, 254])


def test_express_redirect_and_root(host):
    r = host.invoke("express-api", "/redirect", allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"] == "/users/7"
    assert json_of(host.invoke("express-api"))["hello"] == "express"
