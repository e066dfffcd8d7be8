"""The dashboard's pages through falcon.testing, with a fake control plane and a real store:
login, headers, what each page shows, and that a function's text is escaped everywhere."""
from __future__ import annotations

import json
import re
import time
import urllib.parse

import falcon.testing
import pytest
import yaml

from sora.config import load_host_config
from sora.gateway import app as gateway_app
from sora.gateway.dashboard import session as s
from sora.store import records
from sora.store.db import connect
from tests.support import write_function
from tests.unit.test_gateway_app import FakeBroker, FakeIntake

ADMIN = "admin-key-0123456789abcdef"
INVOKE = "invoke-key-0123456789abcdef"
SCRIPT = "<script>alert(1)</script>"
ATTR = '"><img src=x onerror=alert(2)>'
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class StatusBroker(FakeBroker):
    def __init__(self):
        super().__init__()
        self.functions = {"echo": {"state": "RUNNING", "reason": "", "language": "nodejs",
                                   "busy": 1, "idle": 2, "starting": 0, "queued": 0},
                          "old": {"state": "FATAL", "reason": f"crashed: {SCRIPT} {ATTR}",
                                  "language": "python", "instances": 0}}

    async def status(self, request_id):
        return json.dumps({"status": "degraded", "functions": self.functions}).encode()


def make(tmp_path, monkeypatch, keys=True, dashboard=True):
    fns = tmp_path / "fns"
    dirs = [write_function(fns, name, {"index.js": "exports.handler = async (e) => e;"},
                           name=name) for name in ("echo", "old")]
    spec = {"functionPaths": [str(d) for d in dirs],
            "server": {"httpPort": 8080, "dashboard": dashboard},
            "stateDir": str(tmp_path / "state")}
    if keys:
        spec["auth"] = {"apiKeys": [{"name": "ops", "key": ADMIN, "scopes": ["admin"]},
                                    {"name": "ci", "key": INVOKE, "scopes": ["invoke:echo"]}]}
    (tmp_path / "host-config.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "state").mkdir()
    monkeypatch.setattr(gateway_app, "EventIntake", FakeIntake)
    app = gateway_app.create_app(load_host_config(str(tmp_path / "host-config.yaml")),
                                 StatusBroker())
    return falcon.testing.TestClient(app), str(tmp_path / "state")


def store_records(state_dir):
    """One ok call, one failed one whose error and log lines hold markup."""
    conn = connect(state_dir)
    now = time.time()
    records.commit(conn, [
        ("req-ok", "echo", "$LATEST", "http", now - 120, 12.5, "ok", None, 1, None, 60, 80.0),
        ("req-bad", "echo", "$LATEST", "invoke", now - 60, 40.0, "error", f"Err{SCRIPT}", 0,
         f"boom {SCRIPT} {ATTR}", 61, None)],
        [("echo", "req-bad", now - 60, "stdout", f"line {SCRIPT}"),
         ("echo", "req-bad", now - 60, "stderr", f"attr {ATTR}")])
    conn.close()


def csrf_of(text: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', text).group(1)


def log_in(client) -> dict:
    form = client.simulate_get("/ui/login")
    assert form.status_code == 200
    r = client.simulate_post("/ui/login", headers={
        **FORM, "Cookie": f"sora_login={form.cookies['sora_login'].value}"},
        body=urllib.parse.urlencode({"csrf": csrf_of(form.text), "key": ADMIN}))
    assert r.status_code == 303 and r.headers["location"] == "/ui/", r.text
    return {"Cookie": f"sora_session={r.cookies['sora_session'].value}"}


def assert_secure(r):
    assert r.headers["content-security-policy"] == s.SECURITY_HEADERS[
        "Content-Security-Policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "same-origin"


def assert_escaped(text: str):
    assert "<script>" not in text and "<img" not in text and "onerror=alert" not in \
        text.replace("onerror=alert(2)&gt;", ""), text
    # No inline script or style at all: the CSP would refuse it anyway.
    assert not re.search(r"<script(?![^>]*\bsrc=\"/ui/static/)", text)
    assert " style=" not in text and " on" + "click=" not in text


@pytest.fixture
def keyed(tmp_path, monkeypatch):
    client, state = make(tmp_path, monkeypatch)
    store_records(state)
    return client


def test_every_page_needs_a_login_on_a_host_with_keys(keyed):
    for path in ("/ui/", "/ui/functions/echo", "/ui/invocations/req-bad"):
        r = keyed.simulate_get(path)
        assert r.status_code == 303 and r.headers["location"] == "/ui/login", path
        assert_secure(r)
    assert keyed.simulate_get("/ui").headers["location"] == "/ui/"


def test_login_sets_a_strict_httponly_cookie_and_refuses_other_keys(keyed):
    form = keyed.simulate_get("/ui/login")
    assert 'id="login-form"' in form.text and 'name="key"' in form.text
    cookie = form.cookies["sora_login"].value
    for given in ("wrong-key-0123456789abcdef", INVOKE, ""):
        r = keyed.simulate_post("/ui/login", headers={**FORM, "Cookie": f"sora_login={cookie}"},
                                body=urllib.parse.urlencode({"csrf": csrf_of(form.text),
                                                             "key": given}))
        assert r.status_code == 403 and 'class="error"' in r.text
        assert "sora_session" not in r.cookies
    # Without the form's token: 403 before any key is looked at.
    r = keyed.simulate_post("/ui/login", headers={**FORM, "Cookie": f"sora_login={cookie}"},
                            body=urllib.parse.urlencode({"key": ADMIN}))
    assert r.status_code == 403 and "sora_session" not in r.cookies
    r = keyed.simulate_post("/ui/login", headers={**FORM, "Cookie": f"sora_login={cookie}"},
                            body=urllib.parse.urlencode({"csrf": csrf_of(form.text),
                                                         "key": ADMIN}))
    assert r.status_code == 303
    attrs = r.cookies["sora_session"]
    assert attrs.http_only and attrs.same_site == "Strict" and attrs.path == "/ui/"
    assert attrs.max_age == 12 * 3600 and not attrs.secure   # plain HTTP here
    assert ADMIN not in attrs.value


def test_functions_page(keyed):
    r = keyed.simulate_get("/ui/", headers=log_in(keyed))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert_secure(r)
    assert r.headers["cache-control"] == "no-store"
    assert_escaped(r.text)
    assert 'table id="functions"' in r.text
    row = re.search(r'<tr data-function="echo">(.*?)</tr>', r.text, re.S).group(1)
    cell = lambda field: re.search(  # noqa: E731
        rf'<td data-field="{field}"[^>]*>(.*?)</td>', row, re.S).group(1).strip()
    assert "RUNNING" in cell("state") and cell("language") == "nodejs"
    assert cell("instances") == "1 busy / 2 idle"
    assert cell("calls") == "2" and cell("errors") == "1"
    assert cell("p50") == "12.5 ms" and cell("p99") == "40.0 ms"
    assert "http" in cell("triggers") and cell("queued") == "0" and cell("dead") == "0"
    assert '<a href="/ui/functions/echo">echo</a>' in cell("name")
    old = re.search(r'<tr data-function="old">(.*?)</tr>', r.text, re.S).group(1)
    assert "FATAL" in old and "&lt;script&gt;alert(1)&lt;/script&gt;" in old
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in old
    assert re.search(r'<td data-field="instances">\s*0\s*</td>', old)   # no busy/idle: count
    assert 'id="logout-form"' in r.text and 'href="/ui/"' in r.text


def test_function_page_charts_and_invocations(keyed):
    headers = log_in(keyed)
    r = keyed.simulate_get("/ui/functions/echo", headers=headers)
    assert r.status_code == 200
    assert_escaped(r.text)
    assert '<script src="/ui/static/refresh.js" defer></script>' in r.text
    for metric in ("calls", "errors", "p50", "p99", "cold"):
        svg = re.search(rf'<svg class="chart[^"]*" data-metric="{metric}".*?</svg>', r.text,
                        re.S)
        assert svg, metric
        assert svg.group(0).count("<title>") == 61   # the chart's and one per minute
        assert ("<rect class=\"bar\"" in svg.group(0)) == (metric in ("calls", "errors",
                                                                     "cold"))
        assert ("<polyline" in svg.group(0)) == (metric in ("p50", "p99"))
    assert 'a data-range="hour"' in r.text and 'a data-range="day"' in r.text
    for link in ("logs-link", "dlq-link", "invoke-link", "refresh"):
        assert f'id="{link}"' in r.text
    assert re.search(r'<tr data-request-id="req-bad"', r.text)
    assert re.search(r'<td data-field="cold">cold</td>', r.text)
    assert '<a href="/ui/invocations/req-bad">req-bad</a>' in r.text
    day = keyed.simulate_get("/ui/functions/echo", params={"range": "day"}, headers=headers)
    assert day.text.count("<title>") >= 5 * 97
    only_ok = keyed.simulate_get("/ui/functions/echo", params={"status": "ok"}, headers=headers)
    assert "req-ok" in only_ok.text and "req-bad" not in only_ok.text
    assert '<option value="ok" selected>' in only_ok.text
    partial = keyed.simulate_get("/ui/functions/echo", headers=headers,
                                 params={"partial": "invocations", "status": "error"})
    assert partial.text.lstrip().startswith('<table id="invocations">')
    assert "req-bad" in partial.text and "req-ok" not in partial.text
    assert_escaped(partial.text)
    assert_secure(partial)


def test_invocation_page_shows_the_record_and_escapes_its_text(keyed):
    r = keyed.simulate_get("/ui/invocations/req-bad", headers=log_in(keyed))
    assert r.status_code == 200
    assert_escaped(r.text)
    assert re.search(r'<dd data-field="status"[^>]*>error</dd>', r.text)
    assert "boom &lt;script&gt;alert(1)&lt;/script&gt;" in r.text
    assert 'Err&lt;script&gt;' in r.text
    lines = re.findall(r'<li class="log-line[^"]*">(.*?)</li>', r.text, re.S)
    assert len(lines) == 2 and "line &lt;script&gt;" in lines[0]
    assert 'table id="attempts"' in r.text and 'ol id="log-lines"' in r.text


def test_unknown_things_are_404_pages_and_escaped(keyed):
    headers = log_in(keyed)
    # (a decoded %2F would make another path, which no route has: Falcon's JSON 404)
    for path in ("/ui/functions/nope", "/ui/functions/%3Cimg%20src%3Dx%20onerror%3Dalert(2)%3E",
                 "/ui/invocations/%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert(2)%3E"):
        r = keyed.simulate_get(path, headers=headers)
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
        assert_escaped(r.text)
        assert_secure(r)
    r = keyed.simulate_get("/ui/static/..%2Fsession.py")
    assert r.status_code == 404
    assert keyed.simulate_get("/ui/static/sora.css").status_code == 200


def test_logout_needs_the_csrf_token_and_clears_the_cookie(keyed):
    headers = log_in(keyed)
    page = keyed.simulate_get("/ui/", headers=headers)
    r = keyed.simulate_post("/ui/logout", headers={**headers, **FORM}, body="csrf=wrong")
    assert r.status_code == 403
    assert_secure(r)
    r = keyed.simulate_post("/ui/logout", headers={**headers, **FORM, "Origin":
                                                   "http://evil.example"},
                            body=urllib.parse.urlencode({"csrf": csrf_of(page.text)}))
    assert r.status_code == 403
    r = keyed.simulate_post("/ui/logout", headers={**headers, **FORM},
                            body=urllib.parse.urlencode({"csrf": csrf_of(page.text)}))
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    assert r.cookies["sora_session"].value == ""


def test_an_api_key_header_is_no_session(keyed):
    r = keyed.simulate_get("/ui/", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"


def test_an_open_host_needs_no_login_but_still_checks_csrf(tmp_path, monkeypatch):
    client, state = make(tmp_path, monkeypatch, keys=False)
    store_records(state)
    r = client.simulate_get("/ui/")
    assert r.status_code == 200 and 'tr data-function="echo"' in r.text
    assert 'id="logout-form"' not in r.text
    cookie = r.cookies["sora_session"]
    assert cookie.http_only and cookie.same_site == "Strict"
    assert client.simulate_get("/ui/login").headers["location"] == "/ui/"
    r = client.simulate_post("/ui/logout", headers=FORM, body="csrf=x")
    assert r.status_code == 403


def test_dashboard_false_leaves_the_routes_out(tmp_path, monkeypatch):
    client, _ = make(tmp_path, monkeypatch, keys=False, dashboard=False)
    assert client.simulate_get("/ui/").status_code == 404
    assert client.simulate_get("/ui/login").status_code == 404
