"""The dashboard's session cookie and CSRF tokens (sora.gateway.dashboard.session): signing,
expiry, tampering, keys removed or changed, the host secret, the CSRF check."""
from __future__ import annotations

import base64
import json
import os
import stat
import threading
from types import SimpleNamespace

import falcon
import falcon.testing
import pytest

from sora.config import ApiKey, key_digest
from sora.gateway.dashboard import session as s

ADMIN = "admin-key-0123456789abcdef"
INVOKE = "invoke-key-0123456789abcdef"


def key(name: str, text: str, scopes=("admin",)) -> ApiKey:
    return ApiKey(name, key_digest(text), tuple(scopes), text)


def config(tmp_path, keys=()):
    return SimpleNamespace(apiKeys=tuple(keys), stateDir=str(tmp_path),
                           server=SimpleNamespace(bodyTimeout=5.0))


@pytest.fixture
def ui(tmp_path):
    dashboard = s.Dashboard(config(tmp_path, [key("ops", ADMIN),
                                              key("ci", INVOKE, ["invoke:echo"])]))
    s.configure(dashboard)
    return dashboard


def login(ui, name="ops", now=1000.0):
    k = ui.key_named(name)
    session = ui.new_session(k, now)
    return session, ui.encode(session, k)


def test_a_signed_session_round_trips(ui):
    session, cookie = login(ui)
    assert ui.decode(cookie, 1001.0) == session
    assert session.key == "ops" and not session.anonymous
    # The cookie says nothing of the key: neither it nor its digest is in it.
    payload = base64.urlsafe_b64decode(cookie.split(".")[0] + "==")
    assert ADMIN.encode() not in payload and key_digest(ADMIN).hex().encode() not in payload


def test_an_expired_session_is_refused(ui):
    session, cookie = login(ui, now=1000.0)
    assert ui.decode(cookie, session.expires - 1) is not None
    assert ui.decode(cookie, session.expires) is None
    assert session.expires - 1000.0 == s.SESSION_SECONDS == 12 * 3600


@pytest.mark.parametrize("change", ["payload", "signature", "swap", "garbage", "empty",
                                    "long", "extend"])
def test_a_tampered_or_forged_cookie_is_refused(ui, change):
    _, cookie = login(ui)
    body, signature = cookie.split(".")
    if change == "payload":
        data = json.loads(base64.urlsafe_b64decode(body + "=="))
        data["k"] = "someone-else"
        forged = s._b64(json.dumps(data).encode()) + "." + signature
    elif change == "signature":
        forged = body + "." + signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    elif change == "swap":
        forged = signature + "." + body
    elif change == "garbage":
        forged = "not-base64!.@@@"
    elif change == "empty":
        forged = "."
    elif change == "long":
        forged = body * 20 + "." + signature
    else:   # a longer life, signed with another secret
        other = s.Dashboard(config_of(ui), secret=b"x" * 32)
        data = json.loads(base64.urlsafe_b64decode(body + "=="))
        data["e"] += 10 ** 6
        payload = json.dumps(data).encode()
        forged = s._b64(payload) + "." + s._b64(other._sign(payload))
    assert ui.decode(forged, 1001.0) is None


def config_of(ui):
    return ui.config


def test_a_session_of_a_removed_changed_or_demoted_key_is_refused(tmp_path, ui):
    _, cookie = login(ui)
    secret = ui.secret
    for keys in ([key("ci", INVOKE, ["invoke"])],                # removed
                 [key("ops", "a-new-key-0123456789abcdef")],   # its key changed
                 [key("ops", ADMIN, ["invoke"])]):             # no longer admin
        again = s.Dashboard(config(tmp_path, keys), secret=secret)
        assert again.decode(cookie, 1001.0) is None
    same = s.Dashboard(config(tmp_path, [key("ops", ADMIN)]), secret=secret)
    assert same.decode(cookie, 1001.0) is not None


def test_anonymous_sessions_count_only_on_a_host_without_keys(tmp_path, ui):
    anonymous = ui.new_session(None, 1000.0)
    cookie = ui.encode(anonymous, None)
    assert ui.decode(cookie, 1001.0) is None            # host with keys: log in first
    assert ui.decode(cookie, 1001.0, login_form=True) == anonymous   # the login form's
    open_host = s.Dashboard(config(tmp_path), secret=ui.secret)
    assert open_host.decode(cookie, 1001.0) == anonymous
    # And a logged-in session is never the login form's.
    _, logged_in = login(ui)
    assert ui.decode(logged_in, 1001.0, login_form=True) is None


def test_identify_takes_only_the_exact_key(ui):
    assert ui.identify(ADMIN).name == "ops"
    assert ui.identify(INVOKE).name == "ci"
    assert ui.identify(ADMIN + "x") is None and ui.identify("") is None


def test_the_secret_is_made_once_0600_and_shared(tmp_path):
    secrets = []
    threads = [threading.Thread(target=lambda: secrets.append(s.load_secret(str(tmp_path))))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(secrets)) == 1 and len(secrets[0]) == 32
    path = tmp_path / s.SECRET_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == [s.SECRET_FILE]   # no temporary file left
    assert s.load_secret(str(tmp_path)) == secrets[0]


def request(method="POST", origin=None, host="127.0.0.1:8080", scheme="http", site=None):
    headers = {"Host": host}
    if origin is not None:
        headers["Origin"] = origin
    if site is not None:
        headers["Sec-Fetch-Site"] = site
    return SimpleNamespace(method=method, path="/ui/x", scheme=scheme,
                           get_header=lambda name: headers.get(name))


def test_csrf_tokens_are_per_session_and_checked(ui):
    one, _ = login(ui)
    two, _ = login(ui)
    assert s.csrf_token(one) != s.csrf_token(two)
    s.check_csrf(request(), {"csrf": s.csrf_token(one)}, one)
    s.check_csrf(request(origin="http://127.0.0.1:8080"), {"csrf": s.csrf_token(one)}, one)
    for form, session in (({}, one), ({"csrf": ""}, one), ({"csrf": s.csrf_token(two)}, one),
                          ({"csrf": ["a", "b"]}, one), ({"csrf": s.csrf_token(one)}, None)):
        with pytest.raises(falcon.HTTPForbidden):
            s.check_csrf(request(), form, session)


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1",
                                    "http://127.0.0.1:8081", "http://127.0.0.1:8080.evil",
                                    "http://evil.example#127.0.0.1:8080", "file://",
                                    "http://user@127.0.0.1:8080"])
def test_a_cross_origin_post_is_refused_even_with_the_token(ui, origin):
    one, _ = login(ui)
    with pytest.raises(falcon.HTTPForbidden):
        s.check_csrf(request(origin=origin), {"csrf": s.csrf_token(one)}, one)


def test_the_csrf_token_is_not_the_session_id(ui):
    one, cookie = login(ui)
    token = s.csrf_token(one)
    assert one.id not in token and token not in cookie


def test_a_null_origin_counts_only_when_the_browser_says_same_origin(ui):
    one, _ = login(ui)
    form = {"csrf": s.csrf_token(one)}
    s.check_csrf(request(origin="null", site="same-origin"), form, one)
    for site in (None, "cross-site", "same-site", "none"):
        with pytest.raises(falcon.HTTPForbidden):
            s.check_csrf(request(origin="null", site=site), form, one)


def fetch_request(mode=None, dest=None, header=None, query=""):
    headers = {name: value for name, value in (("Sec-Fetch-Mode", mode),
                                               ("Sec-Fetch-Dest", dest),
                                               ("X-Sora-CSRF", header)) if value is not None}
    return falcon.testing.create_req(path="/ui/", headers=headers, query_string=query)


def test_a_scripts_request_needs_the_sessions_token(ui):
    """script_guard: what a function's page on this origin sends is refused without the token;
    navigations and clients without Sec-Fetch headers pass."""
    one, _ = login(ui)
    two, _ = login(ui)
    mine, other = s.csrf_token(one), s.csrf_token(two)
    for allowed in (fetch_request(), fetch_request("navigate", "document"),
                    fetch_request("cors", "empty", header=mine),
                    fetch_request("cors", "empty", query="csrf=" + mine),
                    fetch_request("same-origin", "empty", header=mine)):
        assert s.script_guard(allowed, one) is None
    for refused in (fetch_request("cors", "empty"), fetch_request("no-cors", "image"),
                    fetch_request("cors", "empty", header=other),
                    fetch_request("cors", "empty", query="csrf=" + other),
                    fetch_request("cors", "empty", header=""),
                    fetch_request("CORS", "empty", header=mine[:-1]),
                    fetch_request("websocket", "websocket"),
                    fetch_request("navigate", "iframe"), fetch_request("navigate", "frame"),
                    fetch_request("no-cors", "embed", header=mine),
                    fetch_request(None, "object")):
        assert s.script_guard(refused, one), refused.headers
