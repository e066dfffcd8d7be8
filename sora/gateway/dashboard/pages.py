"""The dashboard's read-only pages: the functions list, one function, one invocation.

Everything shown comes from what the JSON APIs already read (the supervisor's STATUS through
the control plane, the records store, queue.db, the versions store, the trigger service), so
a page shows nothing an admin key could not already see; every value reaches the page through
an autoescaped template. The figures of the last hour and the charts come from
sora.store.stats (one grouped query each, not a scan per function).
"""
from __future__ import annotations

import json
import logging
import time

from ...config import FUNCTION_NAME_RE
from ...messaging.client import BrokerTimeout
from ...store import queue, records, stats
from ...triggers import listing
from ...versions.aliases import AliasStore
from ...versions.store import VersionStore
from ..requests import request_id_of
from ..stats_api import StatsThread
from ..triggers_api import ServiceDown
from . import charts
from .session import render, require_session

log = logging.getLogger("sora.gateway.dashboard")

HOUR = 3600
DAY = 24 * HOUR
# Buckets per chart: a minute each over the hour, 15 minutes each over the day.
RANGES = {"hour": (HOUR, 60), "day": (DAY, 96)}
RECENT = 50                  # invocations listed on a function's page
TRIGGER_WAIT = 1.0           # the trigger service answers in milliseconds; a page never waits long
MAX_REQUEST_ID = 200


def instances_of(info: dict) -> str:
    """`2 busy / 1 idle (+1 starting)` from STATUS's `busy`/`idle`/`starting`, else the
    instance count a function reports, else a dash."""
    if "busy" in info or "idle" in info:
        text = f"{int(info.get('busy') or 0)} busy / {int(info.get('idle') or 0)} idle"
        if info.get("starting"):
            text += f" (+{int(info['starting'])} starting)"
        return text
    if info.get("instances") is not None:
        return str(info["instances"])
    return "–"


def versions_of(state_dir: str, name: str) -> dict:
    """The function's published versions and aliases (sora.versions), when it has any."""
    try:
        store = VersionStore(state_dir)
        numbers = store.numbers(name)
        aliases = AliasStore(state_dir, name, store).list()
    except Exception:   # noqa: BLE001 - an unreadable store must not take the page down
        log.exception("dashboard: reading the versions of %s failed", name)
        return {"versions": [], "aliases": []}
    return {"versions": numbers,
            "aliases": [{"name": a.get("Name"), "version": a.get("FunctionVersion"),
                         "weights": (a.get("RoutingConfig") or {}).get(
                             "AdditionalVersionWeights") or {}} for a in aliases]}


def trigger_summary(entry: dict) -> dict:
    """One trigger as a cell shows it: its kind, state, and next run if it has one."""
    nexts = entry.get("next") or []
    return {"kind": entry.get("kind"), "state": entry.get("state"),
            "next": nexts[0] if nexts else None,
            "expression": entry.get("expression"),
            "pattern": (entry.get("watching") or {}).get("pattern")}


class _Page:
    auth_scope = "public"   # the session is checked here (session.py), not by API key

    def __init__(self, ctx, figures: StatsThread | None = None):
        self.ctx = ctx
        self.figures = figures or StatsThread.shared(ctx.config.stateDir, ctx.config.store)

    async def status(self, req) -> dict | None:
        """The supervisor's STATUS (None when the control plane does not answer)."""
        try:
            return json.loads(await self.ctx.client.status(request_id_of(req).encode()))
        except BrokerTimeout:
            return None

    async def trigger_entries(self, names: list[str]) -> dict[str, list[dict]]:
        """Every function's triggers with their next runs: from the trigger service, or from
        the config when it does not answer (listing.configured, state `down`)."""
        now = time.time()
        try:
            answer = await self.ctx.triggers.ask("status", {}, TRIGGER_WAIT)
        except ServiceDown:
            answer = None
        except Exception:   # noqa: BLE001 - the page shows the config's view instead
            log.exception("dashboard: asking the trigger service failed")
            answer = None
        reported = (answer or {}).get("functions") or {}
        out = {}
        for name in names:
            fn = self.ctx.table.get(name)
            if fn is None:
                out[name] = []
            elif answer is None:
                out[name] = listing.configured(fn, self.ctx.store.queue, now)
            else:
                out[name] = listing.merged(fn, reported.get(name) or [], self.ctx.store.queue,
                                           now)
        return out


class FunctionsPage(_Page):
    """`GET /ui/`: every function in one table."""

    async def on_get(self, req, resp) -> None:
        session = await require_session(req, resp)
        if session is None:
            return
        health = await self.status(req)
        functions = (health or {}).get("functions") or {}
        names = sorted(functions)
        now = time.time()
        summary = await self.figures.run(stats.summary, now - HOUR)
        counts = queue.counts(self.ctx.store.queue)
        triggers = await self.trigger_entries(names)
        rows = []
        for name in names:
            info = functions[name] if isinstance(functions[name], dict) else {}
            figures = summary.get(name) or {}
            events = counts.get(name) or dict.fromkeys(queue.EVENT_STATES, 0)
            rows.append({
                "name": name, "state": info.get("state") or "?",
                "reason": info.get("reason") or "", "language": info.get("language") or "",
                "instances": instances_of(info),
                **versions_of(self.ctx.config.stateDir, name),
                "triggers": [trigger_summary(t) for t in triggers.get(name, [])],
                "calls": figures.get("calls", 0), "errors": figures.get("errors", 0),
                "p50": figures.get("p50"), "p99": figures.get("p99"),
                "queued": events.get("queued", 0), "leased": events.get("leased", 0),
                "dead": events.get("dead", 0)})
        render(resp, "functions.html", functions=rows, status=(health or {}).get("status"),
               down=health is None, now=now)


def _range(req) -> str:
    value = req.get_param("range") or "hour"
    return value if value in RANGES else "hour"


def _status_filter(req) -> str | None:
    value = req.get_param("status") or None
    return value if value in records.STATUSES else None


class FunctionPage(_Page):
    """`GET /ui/functions/{name}?range=hour|day&status=`: charts and recent invocations.
    `&partial=invocations` answers the invocations table alone (what refresh.js re-reads
    every 2 s)."""

    async def on_get(self, req, resp, name: str) -> None:
        session = await require_session(req, resp)
        if session is None:
            return
        if not FUNCTION_NAME_RE.match(name) or not await self.ctx.table.known(name):
            render(resp, "not_found.html", http_status=404, what="function", name=name)
            return
        status = _status_filter(req)
        conn = self.ctx.store.conn
        invocations, _ = records.list_invocations(conn, name, status=status, limit=RECENT)
        if req.get_param("partial") == "invocations":
            render(resp, "invocations_table.html", name=name, invocations=invocations)
            return
        span = _range(req)
        seconds, buckets = RANGES[span]
        now = time.time()
        series = await self.figures.run(stats.series, name, now - seconds, now, buckets)
        health = await self.status(req)
        info = ((health or {}).get("functions") or {}).get(name) or {}
        fn = self.ctx.table.get(name)
        render(resp, "function.html", name=name, info=info, instances=instances_of(info),
               language=info.get("language") or (fn.language if fn else ""),
               charts=charts.function_charts(series, seconds, now), range=span,
               status=status, statuses=records.STATUSES, invocations=invocations,
               events=queue.counts(self.ctx.store.queue).get(name) or
               dict.fromkeys(queue.EVENT_STATES, 0),
               **versions_of(self.ctx.config.stateDir, name))


class InvocationPage(_Page):
    """`GET /ui/invocations/{request_id}`: the record, an event's attempts, the log lines."""

    async def on_get(self, req, resp, request_id: str) -> None:
        session = await require_session(req, resp)
        if session is None:
            return
        if len(request_id) > MAX_REQUEST_ID:
            render(resp, "not_found.html", http_status=404, what="invocation",
                   name=request_id[:MAX_REQUEST_ID])
            return
        item = records.get_invocation(self.ctx.store.conn, request_id)
        event = queue.find_event(self.ctx.store.queue, request_id)
        if item is None and event is None:
            render(resp, "not_found.html", http_status=404, what="invocation", name=request_id)
            return
        if item is None:
            # An event that has not run yet, or only failed so far: its place in the queue.
            item = {"requestId": request_id, "function": event["function"],
                    "trigger": event.get("trigger"), "status": event["state"],
                    "logs": records.log_lines(self.ctx.store.conn, event["function"],
                                              request_id=request_id)}
        render(resp, "invocation.html", item=item, event=event, logs=item.get("logs") or [])

