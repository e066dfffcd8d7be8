"""The web dashboard under /ui/: server-rendered pages (Jinja2, autoescaped), no build step, no
CDN; the only scripts are the static files under /ui/static/.

    GET  /ui/                        every function: state, instances, versions, triggers,
                                     the last hour's calls/errors/p50/p99, async queue
    GET  /ui/functions/{name}        charts of the last hour or day, recent invocations
    GET  /ui/invocations/{id}        one invocation: record, event attempts, log lines
    GET  /ui/login, POST /ui/login   the admin key, once, into a session cookie
    POST /ui/logout
    GET  /ui/static/{file}           CSS and the pages' small scripts
    (and C's routes, sora.gateway.dashboard.actions: live log tail, dead letters, invoke form)

Every route is `auth_scope = "public"` for the API-key middleware (a browser sends no key
header) and checks the session cookie itself (session.py). `server.dashboard: false` leaves
all of it out.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import falcon

from ...config import HostConfig
from ...function_table import FunctionTable
from ...messaging.client import InvocationClient
from ..records_api import Store
from ..triggers_api import TriggerService
from . import session as sessions
from .login import LoginResource, LogoutResource
from .static import StaticResource, UiRootRedirect


@dataclass
class DashboardContext:
    """What the dashboard's resources share (B's pages and C's actions)."""
    config: HostConfig
    client: InvocationClient
    store: Store
    table: FunctionTable
    triggers: TriggerService
    ui: sessions.Dashboard


def add_routes(app: falcon.asgi.App, config: HostConfig, client: InvocationClient,
               store: Store, table: FunctionTable,
               triggers: TriggerService | None = None) -> DashboardContext:
    from ..stats_api import StatsThread
    from .pages import FunctionPage, FunctionsPage, InvocationPage

    ui = sessions.Dashboard(config)
    sessions.configure(ui)
    ctx = DashboardContext(config, client, store, table,
                           triggers or TriggerService(config.stateDir), ui)
    app.add_route("/ui", UiRootRedirect())
    figures = StatsThread.shared(config.stateDir, config.store)   # /api/stats' thread too
    app.add_route("/ui/", FunctionsPage(ctx, figures))
    app.add_route("/ui/functions/{name}", FunctionPage(ctx, figures))
    app.add_route("/ui/invocations/{request_id}", InvocationPage(ctx))
    app.add_route("/ui/login", LoginResource(ui))
    app.add_route("/ui/logout", LogoutResource(ui))
    app.add_route("/ui/static/{file}", StaticResource())
    if importlib.util.find_spec(f"{__name__}.actions") is not None:
        # C's pages (live log tail, dead letters, invoke form), when they are there.
        from .actions import add_action_routes
        add_action_routes(app, ctx)
    return ctx
