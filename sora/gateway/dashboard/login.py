"""`GET|POST /ui/login` and `POST /ui/logout`.

The admin key is entered once; what the browser keeps is the signed session cookie, never the
key. The login form is CSRF-protected like every form, by an anonymous session of its own
(cookie `sora_login`), so that a page elsewhere cannot log a browser in. Failed logins are
logged with the client's address and never the key; an unknown key and a key without the
admin scope get the same answer.
"""
from __future__ import annotations

import logging
import time

from .session import (COOKIE, LOGIN_COOKIE, LOGIN_PATH, LOGIN_SECONDS, Dashboard,
                      check_csrf, read_form, redirect, render)

log = logging.getLogger("sora.gateway.dashboard")

REFUSED = "That key is not valid here, or it is not an admin key."


def _client(req) -> str:
    client = req.scope.get("client")
    return client[0] if client else "?"


class LoginResource:
    auth_scope = "public"

    def __init__(self, ui: Dashboard):
        self.ui = ui

    def form_session(self, req, resp, now: float):
        """The login form's session: the browser's if valid, else a new one (cookie set)."""
        session = self.ui.decode(req.cookies.get(LOGIN_COOKIE), now, login_form=True)
        if session is None:
            session = self.ui.new_session(None, now)
            resp.set_cookie(LOGIN_COOKIE, self.ui.encode(session, None),
                            max_age=LOGIN_SECONDS, path=LOGIN_PATH,
                            secure=req.scheme == "https", http_only=True, same_site="Strict")
        resp.context.session = session
        return session

    async def on_get(self, req, resp) -> None:
        now = time.time()
        if not self.ui.keyed or self.ui.decode(req.cookies.get(COOKIE), now):
            redirect(resp, "/ui/")   # open host, or logged in already
            return
        self.form_session(req, resp, now)
        render(resp, "login.html", error=None, logged_in=False)

    async def on_post(self, req, resp) -> None:
        now = time.time()
        form = await read_form(req, 64 << 10)
        if not self.ui.keyed:
            redirect(resp, "/ui/")
            return
        given = self.ui.decode(req.cookies.get(LOGIN_COOKIE), now, login_form=True)
        check_csrf(req, form, given)
        key_text = form.get("key")
        key = self.ui.identify(key_text.strip()) if isinstance(key_text, str) and \
            key_text.strip() else None
        if key is None or "admin" not in key.scopes:
            log.warning("dashboard: login refused from %s: %s", _client(req),
                        "a key without the admin scope" if key else "an unknown key")
            resp.context.session = given
            render(resp, "login.html", http_status=403, error=REFUSED, logged_in=False)
            return
        # A new session id at login: no id known before it (the form's) carries over.
        session = self.ui.new_session(key, now)
        self.ui.set_cookie(req, resp, session, key)
        resp.unset_cookie(LOGIN_COOKIE, path=LOGIN_PATH, same_site="Strict")
        log.info("dashboard: key %r logged in from %s", key.name, _client(req))
        redirect(resp, "/ui/")


class LogoutResource:
    auth_scope = "public"

    def __init__(self, ui: Dashboard):
        self.ui = ui

    async def on_post(self, req, resp) -> None:
        form = await read_form(req, 64 << 10)
        session = self.ui.decode(req.cookies.get(COOKIE), time.time())
        check_csrf(req, form, session)
        self.ui.clear_cookie(req, resp)
        redirect(resp, LOGIN_PATH if self.ui.keyed else "/ui/")
