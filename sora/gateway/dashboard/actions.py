"""The dashboard's live and state-changing pages: a function's live log tail, its dead-letter
list with replay and discard, and the invoke form.

    GET  /ui/functions/{name}/logs          the last lines, then `static/tail.js` follows
    GET  /ui/functions/{name}/logs/stream   Server-Sent Events: one `data:` per log line (JSON
                                            {"id", "time", "requestId", "stream", "line"}),
                                            the line's id as the event id
    GET  /ui/functions/{name}/dlq           dead letters, payloads escaped and cut short
    POST /ui/functions/{name}/dlq/replay    `requestId` fields, or `all=1`; 303 back
    POST /ui/functions/{name}/dlq/discard   `requestId` fields; 303 back
    GET  /ui/functions/{name}/invoke        the form; POST runs the event as the Invoke API's
                                            RequestResponse does (trigger `invoke`)

Every page checks the session itself (`session.require_session`: the API-key middleware lets
/ui/ through) and every POST its CSRF token (`session.check_csrf`). What a function wrote (log
lines, results, payloads, error messages) reaches a page only through Jinja's autoescape or,
live, through `textContent` in tail.js; each page reads the store filtered by its own function,
so one function's page never shows another's lines or events.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import re
import time

import orjson
import falcon
from falcon.asgi import SSEvent

from ... import protocol as p
from ...config import FUNCTION_NAME_RE
from ...messaging.client import BrokerTimeout
from ...store import queue, records
from ..error_detail import FULL, START_REASONS
from ..log_follow import new_lines, off_loop
from ..errors import SoraError
from ..invocation_route import InvocationRoute
from ..invoke_api import parse_function_name
from ..requests import request_id_of
from .session import (SECURITY_HEADERS, check_csrf, read_form, redirect, render,
                      require_session, secure)

# The live tail reads the store with the logs API's `follow` loop (sora.gateway.log_follow).
# An idle stream sends a comment this often, so proxies keep it open, and so the gateway learns
# soon that the browser went away (Falcon notices a disconnect only when it sends something).
HEARTBEAT_SECONDS = 5.0
# A stream ends after this long, or when its gateway process stops (a graceful stop would
# otherwise wait `gracefulTimeout` for an open tab); the browser's EventSource reconnects at
# once, resuming after the last line it got (Last-Event-ID), and the reconnect checks the
# session again: a key removed or changed stops a tail within this time, not at the cookie's
# expiry.
STREAM_SECONDS = 300.0
RECONNECT_MS = 1000
TAIL_SHOWN = 200            # lines the logs page shows before it follows
LINES_PER_EVENT_BATCH = 1000
DEAD_LETTERS_SHOWN = 50     # per page of the dead-letter list
PAYLOAD_SHOWN = 2000        # characters of a dead letter's payload shown
RESULT_SHOWN = 64 * 1024    # characters of an invoke result shown
MAX_IDS_PER_POST = 1000     # request ids one replay or discard form may name

FLASH_COOKIE = "sora_flash"
FLASH_RE = re.compile(r"^(replayed|discarded|nothing):(\d{1,6})$")


def when(epoch: float | None) -> str:
    if epoch is None:
        return ""
    stamp = dt.datetime.fromtimestamp(epoch, dt.timezone.utc)
    return stamp.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"   # to the millisecond


def shorten(text: str, limit: int) -> tuple[str, bool]:
    """(text cut to `limit` characters, whether it was cut)."""
    return (text, False) if len(text) <= limit else (text[:limit], True)


class _FunctionPage:
    """A page about one function of this host or a joined host (404 for any other name)."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.store = ctx.store
        self.functions = ctx.table

    async def check_function(self, resp, name: str) -> bool:
        """Whether the function is known; if not, the answer is the 404 page."""
        if FUNCTION_NAME_RE.match(name) and await self.functions.known(name):
            return True
        render(resp, "not_found.html", http_status=404, what="function", name=name)
        return False

    async def session_for(self, req, resp, name: str):
        """The caller's session when it has one and the function is known; else None, the
        answer (the login redirect, the guard's 403 or the 404 page) already set."""
        session = await require_session(req, resp)
        if session is None or not await self.check_function(resp, name):
            return None
        return session


# ---------------------------------------------------------------------------- live log tail

class LogsPage(_FunctionPage):
    auth_scope = "public"   # the session is checked here (session.require_session)

    async def on_get(self, req, resp, name: str) -> None:
        session = await self.session_for(req, resp, name)
        if session is None:
            return
        lines, after = await off_loop(self.store, self._tail, name)
        render(resp, "logs.html", session=session, function=name,
               lines=[{**line, "when": when(line["time"])} for line in lines],
               stream_url=f"/ui/functions/{name}/logs/stream?after={after}")


    def _tail(self, name: str) -> tuple[list[dict], int]:
        lines = records.recent_log_lines(self.store.conn, name, TAIL_SHOWN)
        return lines, lines[-1]["id"] if lines else records.last_log_id(self.store.conn, name)


class LogStream(_FunctionPage):
    """`text/event-stream` of the function's log lines as the store gets them."""

    auth_scope = "public"

    async def on_get(self, req, resp, name: str) -> None:
        session = await self.session_for(req, resp, name)
        if session is None:
            return
        # Where to start: after the id EventSource last got (a reconnect), else `after` (the
        # last line the page showed), else now.
        after = _cursor(req.get_header("Last-Event-ID")) or _cursor(req.get_param("after"))
        if after is None:
            after = await off_loop(self.store, lambda: records.last_log_id(self.store.conn,
                                                                          name))
        secure(resp)   # no-store, nosniff, CSP, as every dashboard answer
        resp.set_header("X-Accel-Buffering", "no")   # nginx: pass each event on at once
        resp.sse = self.follow(name, after)

    async def follow(self, name: str, after: int):
        # The first event goes out at once, so the browser sees the stream open before any
        # line exists; it also sets how soon EventSource reconnects.
        yield SSEvent(comment="tail", retry=RECONNECT_MS)
        async for lines in new_lines(self.store, name, after, limit=LINES_PER_EVENT_BATCH,
                                     seconds=STREAM_SECONDS, heartbeat=HEARTBEAT_SECONDS):
            if not lines:
                yield SSEvent(comment="heartbeat")
            for line in lines:
                # `function` is always this page's: the query is filtered by it.
                yield SSEvent(data=json.dumps(line).encode(), event_id=str(line["id"]))


def _cursor(value: str | None) -> int | None:
    if value is None or not value.isdigit() or len(value) > 18:
        return None
    return int(value)


# ---------------------------------------------------------------------------- dead letters

def _flash(req, resp) -> str | None:
    """The message a POST left for the page it redirected to (read once)."""
    raw = req.cookies.get(FLASH_COOKIE)
    if raw is None:
        return None
    resp.unset_cookie(FLASH_COOKIE, path="/ui/")
    match = FLASH_RE.match(raw)
    if match is None:
        return None
    what, n = match.group(1), int(match.group(2))
    events = "event" if n == 1 else "events"
    if what == "nothing":
        return "No such dead letter: it was replayed or discarded already"
    if n == 0:
        return "No dead letters to replay"
    return f"{what.capitalize()} {n} {events}" + (
        ", queued to run again" if what == "replayed" else "")


def _redirect_with_flash(req, resp, location: str, what: str, n: int) -> None:
    # A cookie, not a query parameter: a link made elsewhere cannot make the page claim
    # that something was replayed or discarded.
    resp.set_cookie(FLASH_COOKIE, f"{what}:{n}", max_age=60, path="/ui/",
                    secure=req.scheme == "https", http_only=True, same_site="Strict")
    redirect(resp, location)


class DeadLetterPage(_FunctionPage):
    auth_scope = "public"

    async def on_get(self, req, resp, name: str) -> None:
        session = await self.session_for(req, resp, name)
        if session is None:
            return
        cursor = _cursor(req.get_param("cursor"))
        events, next_cursor = await off_loop(self.store, lambda: queue.dead_letters(
            self.store.queue, name, DEAD_LETTERS_SHOWN, cursor or None))
        shown = []
        for event in events:
            payload, cut = shorten(event.get("payload", ""), PAYLOAD_SHOWN)
            last = event["errors"][-1] if event["errors"] else {}
            shown.append({**event, "payload": payload, "payloadCut": cut,
                          "acceptedAt": when(event["accepted"]),
                          "lastError": ": ".join(x for x in (last.get("errorType"),
                                                             last.get("errorMessage")) if x)})
        render(resp, "dlq.html", session=session, function=name, events=shown,
               next_cursor=next_cursor, flash=_flash(req, resp))


async def _form_ids(req, session) -> tuple[dict, list[str] | None]:
    """The checked form and the request ids it names (None: `all=1`)."""
    form = await read_form(req)
    check_csrf(req, form, session)
    if form.get("all") == "1":
        return form, None
    ids = form.get("requestId", [])
    ids = [ids] if isinstance(ids, str) else list(ids)
    if not ids or len(ids) > MAX_IDS_PER_POST or not all(
            isinstance(i, str) and 0 < len(i) <= 200 for i in ids):
        raise falcon.HTTPBadRequest(
            description=f"Name 1 to {MAX_IDS_PER_POST} dead letters (requestId) or all=1",
            headers=SECURITY_HEADERS)
    return form, ids


class DeadLetterReplay(_FunctionPage):
    auth_scope = "public"

    async def on_post(self, req, resp, name: str) -> None:
        session = await self.session_for(req, resp, name)
        if session is None:
            return
        _, ids = await _form_ids(req, session)
        replayed = await off_loop(self.store, lambda: queue.replay(
            self.store.queue, name, ids, time.time()))
        _redirect_with_flash(req, resp, f"/ui/functions/{name}/dlq",
                             "replayed" if replayed or ids is None else "nothing", len(replayed))


class DeadLetterDiscard(_FunctionPage):
    auth_scope = "public"

    async def on_post(self, req, resp, name: str) -> None:
        session = await self.session_for(req, resp, name)
        if session is None:
            return
        _, ids = await _form_ids(req, session)
        if ids is None:
            raise falcon.HTTPBadRequest(
                description="Discard names its dead letters (requestId): there is no "
                "discard-all", headers=SECURITY_HEADERS)
        discarded = await off_loop(self.store, lambda: queue.discard(self.store.queue, name,
                                                                      ids))
        _redirect_with_flash(req, resp, f"/ui/functions/{name}/dlq",
                             "discarded" if discarded else "nothing", discarded)


# ---------------------------------------------------------------------------- invoke form

# What the page calls each reply status (the names of the records' statuses, and of the
# metrics': a call refused for want of capacity is `throttled`).
STATUS_NAMES = {p.OK: "ok", p.FUNCTION_ERROR: "error", p.INIT_ERROR: "error",
                p.TIMEOUT: "timeout", p.RUNTIME_EXITED: "crashed", p.WORKER_LOST: "crashed",
                p.NO_CAPACITY: "throttled", p.THROTTLED: "throttled",
                p.UNAVAILABLE: "unavailable", p.BAD_REQUEST: "bad request",
                p.NOT_FOUND: "not found"}


class InvokeFailed(Exception):
    """The form's event was not run (bad JSON, too large, unknown qualifier, ...): shown on
    the page with `status`, the HTTP status the Invoke API would answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class InvokeForm(_FunctionPage, InvocationRoute):
    """The Invoke API's RequestResponse path (InvocationRoute.invoke with trigger `invoke`
    and the log tail asked for), with its limits: the body limit, the function's wait, its
    concurrency (a full queue is `throttled`)."""

    auth_scope = "public"

    def __init__(self, ctx):
        _FunctionPage.__init__(self, ctx)
        InvocationRoute.__init__(self, ctx.client, ctx.config, None, ctx.table)

    async def on_get(self, req, resp, name: str) -> None:
        session = await self.session_for(req, resp, name)
        if session is None:
            return
        render(resp, "invoke.html", session=session, function=name, event="{}",
               qualifier="", result=None, error=None)

    async def on_post(self, req, resp, name: str) -> None:
        session = await self.session_for(req, resp, name)
        if session is None:
            return
        # URL-encoding makes a body up to three times its event's size.
        form = await read_form(req, 3 * self.max_body + 4096)
        check_csrf(req, form, session)
        event = _single(form.get("event")) or ""
        qualifier = (_single(form.get("qualifier")) or "").strip()
        result = error = None
        status = 200
        try:
            result = await self.run(req, name, event, qualifier or None)
        except InvokeFailed as exc:
            status, error = exc.status, str(exc)
        render(resp, "invoke.html", http_status=status, session=session, function=name,
               event=event, qualifier=qualifier, result=result, error=error)

    async def run(self, req, name: str, event: str, qualifier: str | None) -> dict:
        payload = event.encode() if event.strip() else b"{}"
        if len(payload) > self.max_body:
            raise InvokeFailed(413, f"The event is {len(payload)} bytes; the limit is "
                               f"{self.max_body} (server.maxBodyBytes)")
        try:
            # orjson as the Invoke API: strict (no NaN), depth-limited (no RecursionError).
            orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise InvokeFailed(400, f"The event is not valid JSON: {exc}") from None
        try:
            fn_name, qualifier = parse_function_name(name, qualifier)
            key, version = self.resolve(fn_name, qualifier)
        except SoraError as exc:
            raise InvokeFailed(exc.status, str(exc)) from None
        request_id = request_id_of(req)
        began = time.monotonic()
        try:
            status, body, *tail = await self.invoke(
                key, request_id.encode(), payload, p.meta(p.TRIGGER_INVOKE, True))
        except BrokerTimeout:
            raise InvokeFailed(504, "No answer from the function's worker in time") from None
        except SoraError as exc:   # no control plane: 503
            raise InvokeFailed(exc.status, str(exc)) from None
        round_trip_ms = (time.monotonic() - began) * 1000
        if status not in (p.OK, p.FUNCTION_ERROR, p.INIT_ERROR, p.TIMEOUT, p.RUNTIME_EXITED,
                          p.WORKER_LOST):
            # Refused before it ran: the Invoke API's 4xx/5xx, with its message.
            message = (self.error_detail.for_caller(fn_name, *p.parse_error(body))
                       if status == p.UNAVAILABLE else p.parse_error(body)[1])
            raise InvokeFailed(p.HTTP_STATUS.get(status, 502),
                               f"{STATUS_NAMES.get(status, 'failed')}: {message}")
        if status == p.INIT_ERROR and self.error_detail.level != FULL:
            error_type, _ = p.parse_error(body)
            if error_type in START_REASONS:   # Sora's config error: names host files
                body = p.error_body(error_type, self.error_detail.for_caller(
                    fn_name, *p.parse_error(body)))
        logs = base64.b64decode(tail[0]).decode("utf-8", "replace") if tail and tail[0] else ""
        output, cut = shorten(_pretty(body), RESULT_SHOWN)
        duration = _reported_duration(logs, request_id)
        return {"requestId": request_id, "status": STATUS_NAMES[status], "version": version,
                "durationMs": duration if duration is not None else round(round_trip_ms, 2),
                "reported": duration is not None, "roundTripMs": round(round_trip_ms, 2),
                "output": output, "outputCut": cut, "outputBytes": len(body), "logs": logs}


def _single(value) -> str | None:
    """One form field's value (the last, when a form repeats it)."""
    if isinstance(value, list):
        return value[-1] if value else None
    return value


def _pretty(body: bytes) -> str:
    try:
        return json.dumps(orjson.loads(body), indent=2, ensure_ascii=False)
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return body.decode("utf-8", "replace")


def _reported_duration(logs: str, request_id: str) -> float | None:
    """The Duration of the invocation's REPORT line, as Lambda reports it. The worker writes
    REPORT last, after anything the function printed, so the last match is the real one (a
    function can print a line that looks like it, never after it)."""
    found = re.findall(rf"^REPORT RequestId: {re.escape(request_id)}\tDuration: "
                       r"([0-9]+(?:\.[0-9]+)?) ms", logs, re.MULTILINE)
    return float(found[-1]) if found else None


def add_action_routes(app, ctx) -> None:
    """C's routes under /ui/ (called by the dashboard's add_routes). `ctx` holds what the
    pages need: `config`, `client` (InvocationClient), `store` (records_api.Store) and
    `table` (FunctionTable)."""
    app.add_route("/ui/functions/{name}/logs", LogsPage(ctx))
    app.add_route("/ui/functions/{name}/logs/stream", LogStream(ctx))
    app.add_route("/ui/functions/{name}/dlq", DeadLetterPage(ctx))
    app.add_route("/ui/functions/{name}/dlq/replay", DeadLetterReplay(ctx))
    app.add_route("/ui/functions/{name}/dlq/discard", DeadLetterDiscard(ctx))
    app.add_route("/ui/functions/{name}/invoke", InvokeForm(ctx))
