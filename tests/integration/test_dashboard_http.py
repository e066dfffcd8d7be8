"""The dashboard over real HTTP(S) against a real host with API keys: login and its cookie,
refused keys and cookies, CSRF, headers, and a function's hostile text escaped on every page.
(The browser tests, tests/browser/, check the same pages in Chromium.)"""
from __future__ import annotations

import base64
import json
import re

import pytest
import requests

from tests.integration import functions as F
from tests.support import served, wait_for, write_function

pytestmark = pytest.mark.integration

ADMIN = "admin-key-0123456789abcdef"
ONLY_EVIL = "invoke-evil-0123456789abcd"
ALL = "invoke-all-0123456789abcdef"

# A function whose logs, error and result are markup meant to run in whoever reads them.
EVIL = r"""
exports.handler = async (event) => {
  console.log('<script>window.__pwned = 1</script>');
  console.log('"><img src=x onerror=alert(2)>');
  if ((event.queryStringParameters || {}).fail) {
    const err = new Error('<script>alert(3)</script> "><img src=x onerror=alert(4)>');
    err.name = 'Evil<script>alert(5)</script>';
    throw err;
  }
  return { statusCode: 200, body: '<script>alert(6)</script>"><img src=x onerror=alert(7)>' };
};
"""
HOSTILE = ("<script", "<img", "onerror=alert(2)>", "onerror=alert(4)>")


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("dashboard")
    fns = base / "fns"
    dirs = [write_function(fns, "evil", {"index.js": EVIL}, name="evil"),
            write_function(fns, "echo", {"index.js": F.ECHO}, name="echo")]
    yield from served(base, dirs, https=True, api_key=ADMIN, extra={"auth": {"apiKeys": [
            {"name": "ops", "key": ADMIN, "scopes": ["admin"]},
            {"name": "evil-only", "key": ONLY_EVIL, "scopes": ["invoke:evil"]},
            {"name": "ci", "key": ALL, "scopes": ["invoke"]}]}})


def csrf_of(text: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', text)
    assert found, text[:2000]
    return found.group(1)


def login(url: str, key: str, verify=True) -> tuple[requests.Session, requests.Response]:
    """A browser-like session (no API key header) that posts the login form."""
    browser = requests.Session()
    # Per request: REQUESTS_CA_BUNDLE in the environment wins over a session's `verify`.
    form = browser.get(url + "/ui/login", timeout=10, verify=verify)
    assert form.status_code == 200 and 'id="login-form"' in form.text
    answer = browser.post(url + "/ui/login", data={"csrf": csrf_of(form.text), "key": key},
                          allow_redirects=False, timeout=10, verify=verify)
    return browser, answer


def set_cookie_of(response, name: str) -> str:
    raw = response.raw.headers.getlist("Set-Cookie")
    return next(c for c in raw if c.startswith(name + "="))


def test_login_sets_a_strict_httponly_cookie(host):
    browser, r = login(host.url, ADMIN)
    assert r.status_code == 303 and r.headers["Location"] == "/ui/"
    cookie = set_cookie_of(r, "sora_session")
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "path", "max-age", "samesite"} <= attrs and "secure" not in attrs
    assert "SameSite=Strict" in cookie and "Path=/ui/" in cookie and "Max-Age=43200" in cookie
    assert ADMIN not in cookie
    page = browser.get(host.url + "/ui/", timeout=10)
    assert page.status_code == 200 and 'tr data-function="evil"' in page.text
    # Over HTTPS the cookie is Secure as well.
    _, r = login(host.https_url, ADMIN, verify=str(host.cert))
    assert r.status_code == 303
    assert "; Secure" in set_cookie_of(r, "sora_session")


@pytest.mark.parametrize("key", ["wrong-key-0123456789abcdef", ONLY_EVIL, ALL, ""])
def test_a_wrong_or_non_admin_key_cannot_log_in(host, key):
    browser, r = login(host.url, key)
    assert r.status_code == 403 and 'class="error"' in r.text
    assert "sora_session" not in r.cookies and "sora_session" not in browser.cookies
    assert browser.get(host.url + "/ui/", allow_redirects=False,
                       timeout=10).headers["Location"] == "/ui/login"


def test_no_page_without_a_valid_session(host):
    browser, _ = login(host.url, ADMIN)
    good = browser.cookies["sora_session"]
    body, signature = good.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=="))
    payload["e"] += 10 ** 7
    longer = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    forged = {
        "tampered payload": f"{longer}.{signature}",
        "tampered signature": f"{body}.{signature[::-1]}",
        "unsigned": body,
        "made up": "eyJpIjoieCIsImsiOiJvcHMiLCJkIjoiIiwiZSI6OTk5OTk5OTk5OX0.AAAA",
    }
    for what, value in forged.items():
        for path in ("/ui/", "/ui/functions/evil", "/ui/invocations/x"):
            r = requests.get(host.url + path, cookies={"sora_session": value},
                             allow_redirects=False, timeout=10)
            assert r.status_code == 303 and r.headers["Location"] == "/ui/login", (what, path)
    # An API key header is no way in either: pages need the login.
    r = requests.get(host.url + "/ui/", headers={"Authorization": f"Bearer {ADMIN}"},
                     allow_redirects=False, timeout=10)
    assert r.status_code == 303


def test_posts_need_the_session_csrf_token_and_origin(host):
    browser, _ = login(host.url, ADMIN)
    page = browser.get(host.url + "/ui/", timeout=10)
    token = csrf_of(page.text)
    for data, headers in (({}, {}), ({"csrf": "wrong"}, {}),
                          ({"csrf": token}, {"Origin": "http://evil.example"})):
        r = browser.post(host.url + "/ui/logout", data=data, headers=headers,
                         allow_redirects=False, timeout=10)
        assert r.status_code == 403, (data, headers)
        assert "Content-Security-Policy" in r.headers
    # Another session's token is no good either.
    other, _ = login(host.url, ADMIN)
    r = other.post(host.url + "/ui/logout", data={"csrf": token}, allow_redirects=False,
                   timeout=10)
    assert r.status_code == 403
    # The login form too: a token not of this browser's login form.
    fresh = requests.Session()
    fresh.get(host.url + "/ui/login", timeout=10)
    r = fresh.post(host.url + "/ui/login", data={"csrf": token, "key": ADMIN},
                   allow_redirects=False, timeout=10)
    assert r.status_code == 403 and "sora_session" not in r.cookies
    # As a browser posts it: with its own Origin (the pages' Referrer-Policy: same-origin
    # keeps it; under no-referrer Chromium sends `Origin: null`).
    r = browser.post(host.url + "/ui/logout", data={"csrf": token}, allow_redirects=False,
                     headers={"Origin": host.url}, timeout=10)
    assert r.status_code == 303 and r.headers["Location"] == "/ui/login"
    assert browser.get(host.url + "/ui/", allow_redirects=False,
                       timeout=10).status_code == 303


def test_a_functions_hostile_text_arrives_escaped_in_every_page(host):
    ok = host.session.get(host.url + "/functions/evil", timeout=30)
    assert ok.status_code == 200
    failed = host.session.get(host.url + "/functions/evil?fail=1", timeout=30)
    assert failed.status_code == 502
    ids = [r.headers["X-Sora-Request-Id"] for r in (ok, failed)]
    for request_id in ids:
        host.record(request_id)
    browser, _ = login(host.url, ADMIN)
    wait_for(lambda: "REPORT RequestId" in browser.get(
        host.url + f"/ui/invocations/{ids[1]}", timeout=10).text, 20,
        what="the failed call's last log line")
    pages = ["/ui/", "/ui/functions/evil", "/ui/functions/evil?status=error",
             "/ui/functions/evil?range=day", "/ui/functions/evil?partial=invocations",
             *(f"/ui/invocations/{i}" for i in ids)]
    for path in pages:
        r = browser.get(host.url + path, timeout=10)
        assert r.status_code == 200, (path, r.text[:500])
        for needle in HOSTILE:
            text = r.text.replace('<script src="/ui/static/refresh.js" defer></script>', "")
            assert needle not in text, (path, needle)
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "same-origin"
        assert r.headers["Cache-Control"] == "no-store"
    failed_page = browser.get(host.url + f"/ui/invocations/{ids[1]}", timeout=10).text
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in failed_page
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in failed_page
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in failed_page
    assert "Evil&lt;script&gt;alert(5)&lt;/script&gt;" in failed_page
    function_page = browser.get(host.url + "/ui/functions/evil", timeout=10).text
    assert f'tr data-request-id="{ids[1]}"' in function_page
    assert "Evil&lt;script&gt;" in function_page   # the error type in the list


def test_open_host_works_without_login(tmp_path_factory):
    base = tmp_path_factory.mktemp("dashboard-open")
    dirs = [write_function(base / "fns", "echo", {"index.js": F.ECHO}, name="echo")]
    for open_host in served(base, dirs, https=False):
        browser = requests.Session()
        r = browser.get(open_host.url + "/ui/", timeout=10)
        assert r.status_code == 200 and 'tr data-function="echo"' in r.text
        assert "Content-Security-Policy" in r.headers
        assert "sora_session" in browser.cookies   # anonymous, for the CSRF token
        assert browser.get(open_host.url + "/ui/functions/echo", timeout=10).status_code == 200
        # Still no POST without the session's token.
        for data in ({}, {"csrf": "wrong"}):
            assert browser.post(open_host.url + "/ui/logout", data=data,
                                allow_redirects=False, timeout=10).status_code == 403


def meta_csrf_of(text: str) -> str:
    found = re.search(r'<meta name="sora-csrf" content="([^"]+)">', text)
    assert found, text[:2000]
    return found.group(1)


SCRIPT = {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty", "Sec-Fetch-Site": "same-origin"}
NAVIGATE = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document",
            "Sec-Fetch-Site": "same-origin"}


def test_a_scripts_request_needs_the_sessions_token(host):
    """What a function's page on this origin would send (Sec-Fetch-Mode: cors) reads nothing
    without the session's token; the dashboard's own scripts send it (header or query)."""
    browser, _ = login(host.url, ADMIN)
    token = meta_csrf_of(browser.get(host.url + "/ui/", timeout=10).text)
    other, _ = login(host.url, ADMIN)
    others_token = meta_csrf_of(other.get(host.url + "/ui/", timeout=10).text)
    assert token != others_token
    for path in ("/ui/", "/ui/functions/evil", "/ui/functions/evil/logs",
                 "/ui/functions/evil/dlq", "/ui/invocations/x"):
        def get(headers=None, **params):
            return browser.get(host.url + path, headers=headers or {}, params=params,
                               allow_redirects=False, timeout=10)
        for refused in (get(SCRIPT), get({**SCRIPT, "X-Sora-CSRF": others_token}),
                        get({**SCRIPT, "X-Sora-CSRF": "wrong"}),
                        get(SCRIPT, csrf=others_token),
                        get({**SCRIPT, "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "script"}),
                        get({**NAVIGATE, "Sec-Fetch-Dest": "iframe"}),
                        get({**SCRIPT, "Sec-Fetch-Dest": "embed", "X-Sora-CSRF": token})):
            assert refused.status_code == 403, (path, refused.request.headers)
            assert refused.headers["Content-Type"].startswith("text/plain"), path
            assert "<" not in refused.text and "csrf" not in refused.text.lower()
            assert "Content-Security-Policy" in refused.headers
        for allowed in (get({**SCRIPT, "X-Sora-CSRF": token}), get(SCRIPT, csrf=token),
                        get(NAVIGATE), get()):
            assert allowed.status_code in (200, 404), (path, allowed.status_code)
            assert allowed.headers["Content-Type"].startswith("text/html"), path
    # The live tail's stream, as EventSource asks for it (token in the query).
    stream = host.url + "/ui/functions/evil/logs/stream"
    r = browser.get(stream, headers=SCRIPT, timeout=10)
    assert r.status_code == 403
    with browser.get(stream, headers=SCRIPT, params={"csrf": token}, stream=True,
                     timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
    # Without a session a script's request still only gets the login redirect.
    r = requests.get(host.url + "/ui/", headers=SCRIPT, allow_redirects=False, timeout=10)
    assert r.status_code == 303 and r.headers["Location"] == "/ui/login"
