"""The dashboard's login session and CSRF tokens, and rendering a page with its headers.

A session is a signed cookie `sora_session` (HttpOnly, SameSite=Strict, Path=/ui/, Secure on
HTTPS, 12 h), nothing stored server-side: `payload.signature`, both base64url, the payload
`{"i": session id, "k": key name or "" (anonymous), "d": digest of the key's digest, "e":
expiry}`, the signature HMAC-SHA256 over the payload with the host secret (`stateDir/
ui-secret`, made once). On a host with keys only a session of an existing admin key counts,
and only while that key is unchanged (its digest's digest still matches); on a host without
keys every page is open, but an anonymous session is still issued, because the CSRF token
is derived from its id.

CSRF: every POST form carries `csrf` = HMAC(secret, "csrf:" + session id); a POST without it,
with another session's, or with an `Origin` other than this host, is 403. SameSite=Strict
already keeps the cookie off cross-site requests; the token also covers a same-site attacker
(another port or subdomain of this host's name).

Script requests (the guard, `script_guard`): a function's URL (/functions/NAME) is served from
this same origin, so a page a function returns, opened by a logged-in admin, runs its script
on the dashboard's origin, and its `fetch('/ui/...')` carries the session cookie (same site).
Browsers mark every request with `Sec-Fetch-Mode` / `Sec-Fetch-Dest`, which no page's script
can set: a dashboard page the admin opens is a navigation (`navigate`); a script's fetch, XHR
or EventSource is not. So every route that reads the session (`require_session`: every /ui/
route but the static files and the login page) refuses a non-navigation request that does not
carry this session's CSRF token, in header `X-Sora-CSRF` (the pages' fetch) or query parameter
`csrf` (EventSource cannot send headers), and refuses any request for a page to be put in a
frame, embed or object. A request without Sec-Fetch headers (curl, an old browser) is let
through: it cannot come from a page's script in a browser that sends them.

Callers (this package's pages and C's actions.py) use the five functions of the design:
`require_session`, `csrf_token`, `check_csrf`, `render`, `read_form`. They reach the
dashboard's state (config, secret, templates) through `configure()`, called once by
`add_routes`: a gateway process serves one app.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
import urllib.parse
from dataclasses import dataclass

import falcon
import jinja2

from ...config import ApiKey, HostConfig
from ..auth import identify
from ..requests import read_body

log = logging.getLogger("sora.gateway.dashboard")

COOKIE = "sora_session"
COOKIE_PATH = "/ui/"
# The login form's anonymous session, for its CSRF token (no login CSRF: a page elsewhere
# cannot log a browser in with the attacker's key).
LOGIN_COOKIE = "sora_login"
LOGIN_SECONDS = 3600
SESSION_SECONDS = 12 * 3600
SECRET_FILE = "ui-secret"
LOGIN_PATH = "/ui/login"
MAX_COOKIE = 1024    # ours are ~200 bytes: a larger one is not ours, and not parsed

# Every dashboard answer carries these (pages, redirects, static files, errors).
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; frame-ancestors 'none'; "
                                "form-action 'self'"),
    "X-Content-Type-Options": "nosniff",
    # `same-origin`, not `no-referrer`: under no-referrer Chromium sends `Origin: null` on a
    # page's own form posts, and over plain HTTP to a non-local address no Sec-Fetch-Site
    # either, so the Origin check could not tell them from a foreign page's. Other sites
    # still get no referrer.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    # A window another page opens on the dashboard gets no handle to it (not even a page of
    # this origin: a function URL's HTML is served from it too), and no other site may load
    # its answers as resources.
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


@dataclass(frozen=True)
class Session:
    id: str
    key: str          # the admin key's name; "" for an anonymous session (host without keys)
    expires: float

    @property
    def anonymous(self) -> bool:
        return not self.key


class Dashboard:
    """What the session functions need: the host's keys, its secret, the templates."""

    def __init__(self, config: HostConfig, secret: bytes | None = None):
        self.config = config
        self.keys: tuple[ApiKey, ...] = tuple(config.apiKeys)
        self._secret = secret
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("sora.gateway.dashboard", "templates"),
            # Every value in every template is escaped unless marked safe (only charts.py's
            # SVG, built from numbers and escaped text, is).
            autoescape=True, trim_blocks=True, lstrip_blocks=True)
        self.templates.filters["when"] = format_time
        self.templates.filters["ms"] = format_ms

    @property
    def secret(self) -> bytes:
        """Read (or made) on first use: after the fork, when the state dir exists."""
        if self._secret is None:
            self._secret = load_secret(self.config.stateDir)
        return self._secret

    @property
    def keyed(self) -> bool:
        return bool(self.keys)

    # --- signing ---------------------------------------------------------------------------
    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self.secret, payload, hashlib.sha256).digest()

    def encode(self, session: Session, key: ApiKey | None) -> str:
        payload = json.dumps({"i": session.id, "k": session.key,
                              "d": key_check(key) if key else "",
                              "e": int(session.expires)}, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def decode(self, cookie: str | None, now: float, login_form: bool = False
               ) -> Session | None:
        """The session a cookie holds, or None: unsigned, tampered, expired, or (host with
        keys) not an existing admin key's as it is now. `login_form`: the login form's own
        anonymous session (cookie LOGIN_COOKIE), which only carries its CSRF token."""
        if not cookie or len(cookie) > MAX_COOKIE or cookie.count(".") != 1:
            return None
        body, signature = cookie.split(".")
        try:
            payload, given = _unb64(body), _unb64(signature)
        except ValueError:
            return None
        if not hmac.compare_digest(self._sign(payload), given):
            return None
        try:
            data = json.loads(payload)
            session = Session(str(data["i"]), str(data["k"]), float(data["e"]))
            check = str(data["d"])
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires <= now or not session.id:
            return None
        if login_form:
            return session if session.anonymous else None
        if self.keyed:
            key = self.key_named(session.key)
            if key is None or "admin" not in key.scopes or \
                    not hmac.compare_digest(key_check(key), check):
                return None   # anonymous, or a key since removed, changed or demoted
        return session

    def key_named(self, name: str) -> ApiKey | None:
        return next((k for k in self.keys if k.name == name), None) if name else None

    def identify(self, given: str) -> ApiKey | None:
        return identify(self.keys, given)

    def csrf(self, session: Session) -> str:
        return _b64(self._sign(b"csrf:" + session.id.encode()))

    # --- cookies ---------------------------------------------------------------------------
    def new_session(self, key: ApiKey | None, now: float) -> Session:
        return Session(secrets.token_urlsafe(16), key.name if key else "",
                       now + SESSION_SECONDS)

    def set_cookie(self, req, resp, session: Session, key: ApiKey | None) -> None:
        resp.set_cookie(COOKIE, self.encode(session, key), max_age=SESSION_SECONDS,
                        path=COOKIE_PATH, secure=req.scheme == "https", http_only=True,
                        same_site="Strict")

    def clear_cookie(self, req, resp) -> None:
        resp.unset_cookie(COOKIE, path=COOKIE_PATH, same_site="Strict")


def key_check(key: ApiKey) -> str:
    """What a session keeps of its key: a digest of the key's digest (so the cookie tells
    nothing of the key, and a changed key ends its sessions)."""
    return hashlib.sha256(b"sora-ui-session:" + key.digest).hexdigest()[:32]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text.encode("ascii") + b"=" * (-len(text) % 4))
    except (ValueError, UnicodeEncodeError) as exc:
        raise ValueError("not base64url") from exc


def load_secret(state_dir: str) -> bytes:
    """The host's dashboard secret (`stateDir/ui-secret`, 0600), made by whichever gateway
    process comes first: written whole to a temporary file, then linked into place, which
    fails if another process linked its own first (then that one is read): no process ever
    reads a half-written secret."""
    path = os.path.join(state_dir, SECRET_FILE)
    for _ in range(2):
        try:
            with open(path, "rb") as fh:
                secret = fh.read()
            if len(secret) >= 32:
                return secret
            raise ValueError(f"{path}: shorter than 32 bytes")
        except FileNotFoundError:
            pass
        temp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
            try:
                os.link(temp, path)
            except FileExistsError:
                pass   # another gateway process made it: read theirs
        finally:
            os.unlink(temp)
    raise RuntimeError(f"{path}: could not be made")


# --- the dashboard of this process (one app per gateway process) ------------------------------
_dashboard: Dashboard | None = None


def configure(dashboard: Dashboard) -> None:
    global _dashboard
    _dashboard = dashboard


def current() -> Dashboard:
    if _dashboard is None:
        raise RuntimeError("sora.gateway.dashboard: add_routes() was not called")
    return _dashboard


def secure(resp) -> None:
    """The security headers every dashboard answer carries."""
    for name, value in SECURITY_HEADERS.items():
        resp.set_header(name, value)


def redirect(resp, location: str) -> None:
    """303 See Other to a path of this dashboard."""
    secure(resp)
    resp.status = falcon.HTTP_303
    resp.set_header("Location", location)


# Sec-Fetch-Dest values of a request to embed the answer in another page: never a dashboard
# page (frame-ancestors 'none' and X-Frame-Options already stop frames; this refuses the
# request before anything is read).
EMBEDDED = frozenset({"iframe", "frame", "embed", "object"})
CSRF_HEADER = "X-Sora-CSRF"
CSRF_PARAM = "csrf"   # in the query: EventSource sends no headers


def refuse(resp, message: str) -> None:
    """A plain-text 403 (no JSON body, no page content), with the security headers."""
    secure(resp)
    resp.status = falcon.HTTP_403
    resp.content_type = "text/plain; charset=utf-8"
    resp.data = (message + "\n").encode("utf-8")


def script_guard(req, session: Session) -> str | None:
    """Why this request must be refused (a sentence), or None to let it through.

    A request whose `Sec-Fetch-Mode` is anything but `navigate` is a script's (fetch, XHR,
    EventSource) or a subresource's (img, script): it must carry the session's CSRF token in
    header X-Sora-CSRF or query parameter `csrf`. A page whose script the dashboard did not
    write (a function's page on this origin) cannot read it: every page that shows it is
    refused to it. The token in a query is not logged: the gateway writes no access log
    (gunicorn_conf.py: accesslog = None) and the dashboard logs a refused request's path
    (`req.path`, without its query), never its URL. A request without Sec-Fetch headers
    (curl, the tests' HTTP clients, a browser too old to send them) is let through."""
    dest = (req.get_header("Sec-Fetch-Dest") or "").lower()
    if dest in EMBEDDED:
        return "Dashboard pages are not shown inside other pages"
    mode = (req.get_header("Sec-Fetch-Mode") or "").lower()
    if not mode or mode == "navigate":
        return None
    given = req.get_header(CSRF_HEADER) or req.get_param(CSRF_PARAM)
    if isinstance(given, str) and hmac.compare_digest(given.encode(),
                                                      csrf_token(session).encode()):
        return None
    return "Script requests to the dashboard need its token: reload the page"


async def require_session(req, resp) -> Session | None:
    """The request's session; None when there is none to be had or it may not be used here:
    host with keys and no valid login (the answer is then a 303 to the login page), or a
    script's request without the session's token (`script_guard`: the answer is a 403); the
    caller returns. On a host
    without keys an anonymous session is issued (its cookie set on this answer) when the
    request has none. The session is also kept in `req.context.session` and
    `resp.context.session`, where `render` finds it."""
    ui = current()
    now = time.time()
    session = ui.decode(req.cookies.get(COOKIE), now)
    if session is None:
        if ui.keyed:
            redirect(resp, LOGIN_PATH)
            return None
        session = ui.new_session(None, now)
        ui.set_cookie(req, resp, session, None)
    refused = script_guard(req, session)
    if refused is not None:
        log.warning("dashboard: 403 for %s %s: %s (Sec-Fetch-Mode %.20r, Sec-Fetch-Dest %.20r)",
                    req.method, req.path, refused,
                    req.get_header("Sec-Fetch-Mode"), req.get_header("Sec-Fetch-Dest"))
        refuse(resp, refused)
        return None
    req.context.session = resp.context.session = session
    return session


def csrf_token(session: Session) -> str:
    return current().csrf(session)


def same_origin(req) -> bool:
    """Whether the request's `Origin` (when it sends one) is this host as the client reached
    it (its Host header, host and port): a browser sends Origin with every POST. The scheme
    is not compared: behind a proxy that ends TLS the page is https and the gateway sees
    http, and no other site can be served from this host and port."""
    origin = req.get_header("Origin")
    if origin is None:
        return True
    if origin == "null":
        # A document of opaque origin (a sandboxed frame, a data: page), or a page of ours
        # under a no-referrer policy: Chromium sends `Origin: null` on the latter's own form
        # posts. The browser's Sec-Fetch-Site, which no page can set, tells a same-origin
        # post apart; a null Origin from anywhere else is refused.
        return req.get_header("Sec-Fetch-Site") == "same-origin"
    host = req.get_header("Host")
    parsed = urllib.parse.urlsplit(origin)
    return bool(host) and parsed.scheme in ("http", "https") and \
        parsed.netloc.lower() == host.lower()


def forbidden(message: str) -> falcon.HTTPForbidden:
    return falcon.HTTPForbidden(title="Forbidden", description=message,
                                headers=SECURITY_HEADERS)


def check_csrf(req, form: dict, session: Session | None) -> None:
    """Raises 403 unless the form's `csrf` is this session's and the Origin is this host."""
    if session is None:
        raise forbidden("No dashboard session: reload the page")
    if not same_origin(req):
        log.warning("dashboard: 403 for %s %s: cross-origin POST", req.method, req.path)
        raise forbidden("Cross-origin form posts are refused")
    given = form.get("csrf")
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(),
                                                              csrf_token(session).encode()):
        log.warning("dashboard: 403 for %s %s: missing or wrong CSRF token", req.method,
                    req.path)
        raise forbidden("Missing or wrong CSRF token: reload the page and submit again")


def render(resp, template: str, http_status: int = 200, **context) -> None:
    """Render a template as the answer, with the security headers. The template gets
    `session`, `csrf` (the token for its forms; "" without a session) and `keyed` (whether
    logging out means anything) besides `context`."""
    ui = current()
    session = getattr(resp.context, "session", None)
    context.setdefault("session", session)
    context.setdefault("csrf", ui.csrf(session) if session is not None else "")
    context.setdefault("keyed", ui.keyed)
    body = ui.templates.get_template(template).render(**context)
    secure(resp)
    resp.status = http_status
    resp.content_type = "text/html; charset=utf-8"
    resp.data = body.encode("utf-8")


async def read_form(req, limit: int = 1 << 20) -> dict:
    """An application/x-www-form-urlencoded body as {name: value} (a repeated name: a list
    of its values). Another content type, a body over `limit`: 4xx."""
    content_type = (req.content_type or "").split(";")[0].strip().lower()
    body = await read_body(req, limit, current().config.server.bodyTimeout)
    if content_type != "application/x-www-form-urlencoded":
        if not body:
            return {}   # no form at all: the CSRF check refuses it (403)
        raise falcon.HTTPUnsupportedMediaType(
            description="expected an application/x-www-form-urlencoded form",
            headers=SECURITY_HEADERS)
    try:
        pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                                       strict_parsing=False, max_num_fields=10_000)
    except (UnicodeDecodeError, ValueError):
        raise falcon.HTTPBadRequest(description="the form is not valid UTF-8 url-encoding",
                                    headers=SECURITY_HEADERS) from None
    form: dict = {}
    for name, value in pairs:
        if name in form:
            previous = form[name]
            form[name] = (previous if isinstance(previous, list) else [previous]) + [value]
        else:
            form[name] = value
    return form


# --- formatting filters for the templates ----------------------------------------------------
def format_time(epoch) -> str:
    if epoch is None:
        return ""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(epoch))) + "Z"
    except (TypeError, ValueError, OverflowError):
        return str(epoch)


def format_ms(value) -> str:
    if value is None:
        return "–"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{value:.0f} ms" if value >= 100 else f"{value:.1f} ms"
