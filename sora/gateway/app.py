"""The gateway: a Falcon ASGI app, served by gunicorn's native `asgi` worker class.

`create_app()` builds it from the host config named in $SORA_CONFIG (or from the objects given,
for tests). Resources get their dependencies in `__init__`; errors become JSON
`{"errorType", "errorMessage"}` with the status of protocol.HTTP_STATUS.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os

import falcon
import falcon.asgi

from .. import protocol as p
from ..config import FUNCTION_NAME_RE, HostConfig
from ..config_snapshot import load_host_config_of_child
from ..events.intake import EventIntake
from ..function_table import FunctionTable
from ..store import backend as store_backend
from .auth import CREDENTIAL_HEADERS, authorizer_for, is_admin
from ..messaging.client import InvocationClient, BrokerTimeout, host_keys
from .error_detail import NONE, plain_text
from .errors import SoraError
from .invocation_route import RETRY_AFTER, InvocationRoute
from .requests import REQUEST_ID_HEADER, read_body, request_id_of
from ..function_response import BadFunctionResponse, map_result
from .function_url import build_event
from . import dashboard, management_api
from .invoke_api import InvokeApiError, InvokeResource, handle_invoke_api_error
from .reload_api import ReloadResource
from .stats_api import StatsResource
from .metrics_route import CountedApp, MetricsResource
from ..metrics import registry as metrics_registry
from .triggers_api import (HEALTH_WAIT, ServiceDown, TriggerFireResource, TriggerService,
                           TriggersResource)
from ..triggers.listing import health_summary
from ..versions.routing import split_name
from .records_api import (DeadLetterReplayResource, DeadLetterResource, FunctionListResource,
                          InvocationListResource, InvocationResource, LogsResource, Store)

log = logging.getLogger("sora.gateway")


def _send_error(req, resp, status: int, body: bytes, headers=None) -> None:
    resp.status = status
    resp.content_type = "application/json"
    resp.data = body
    resp.set_header(REQUEST_ID_HEADER, request_id_of(req))
    for name, value in (headers or {}).items():
        resp.set_header(name, value)


async def handle_sora_error(req, resp, ex: SoraError, params) -> None:
    _send_error(req, resp, ex.status, p.error_body(ex.error_type, str(ex)), ex.headers)


async def handle_http_error(req, resp, ex: falcon.HTTPError, params) -> None:
    # Falcon's own errors (unknown route, bad method, ...) in Sora's JSON shape.
    error_type = {404: "Sora.NotFound", 405: "Sora.MethodNotAllowed",
                  413: "Sora.RequestTooLarge"}.get(ex.status_code, f"Sora.HTTP{ex.status_code}")
    message = ex.description or ex.title
    _send_error(req, resp, ex.status_code, p.error_body(error_type, message),
                dict(ex.headers or {}))


async def handle_store_error(req, resp, ex: store_backend.StoreError, params) -> None:
    """A store that cannot be reached (PostgreSQL down, restarting, its pool exhausted) is a
    503 the caller may retry; the details (the store's URL, its password as ***) go to the
    host's log only."""
    log.error("%s %s: %s", req.method, req.path, ex)
    if isinstance(ex, store_backend.StoreUnavailable):
        _send_error(req, resp, 503, p.error_body(
            "Sora.StoreUnavailable", "The store did not answer in time; try again"),
            {"Retry-After": "1"})
        return
    _send_error(req, resp, 500, p.error_body("Sora.StoreError", "The store failed"))


async def handle_unexpected(req, resp, ex: Exception, params) -> None:
    _send_error(req, resp, 500, p.error_body("Sora.InternalError",
                                             f"The gateway failed: {type(ex).__name__}"))


INVOCATION_TYPE_HEADER = "X-Sora-Invocation-Type"


class FunctionUrlResource(InvocationRoute):
    """`ANY /functions/{name}` and `ANY /functions/{name}/{path}`: the HTTP trigger; `name`
    may be `NAME:QUALIFIER` (a published version or an alias, sora.versions), and the answer
    says which version ran in `X-Amz-Executed-Version`.

    With `X-Sora-Invocation-Type: Event` the request is stored as an asynchronous event and
    answered 202 `{"requestId": ...}` at once; the function's answer is not returned.
    """

    auth_scope = "invoke"
    public_urls = True   # a function with `auth: none` is open here (sora.gateway.auth)

    @staticmethod
    def function_of(params: dict) -> str | None:
        """The function a key must cover and whose `auth` applies: NAME of NAME:QUALIFIER."""
        return params.get("name", "").partition(":")[0] or None

    def __init__(self, client: InvocationClient, config: HostConfig, intake: EventIntake,
                 functions: FunctionTable | None = None):
        super().__init__(client, config, intake, functions)
        # On a host with keys, the key a caller presents to reach a function is Sora's, not
        # the function's: it never reaches the function (a function called with the admin
        # key could otherwise use it against /api). `auth: none` functions, where Sora
        # consumed nothing, get all their callers' headers.
        self.keyed = bool(config.apiKeys)
        if self.error_detail.level == NONE:
            # Only then: the warm path of the other levels keeps its one coroutine.
            for method in falcon.constants.COMBINED_METHODS:
                setattr(self, f"on_{method.lower()}", self.handle_plain)

    async def handle_plain(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                           name: str, path: str = "") -> None:
        """`errorDetail: none`: the gateway's own failures (5xx) as plain text too; 4xx, about
        the caller's own request, keep their message."""
        try:
            await self.handle(req, resp, name, path)
        except SoraError as exc:
            if exc.status < 500:
                raise
            _send_error(req, resp, exc.status, plain_text(exc.status), exc.headers)
            resp.content_type = "text/plain"

    async def handle(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str,
                     path: str = "") -> None:
        name, qualifier = split_name(name)
        fn = self.functions.get(name)
        if not FUNCTION_NAME_RE.match(name) or fn is not None and not fn.http:
            # A function without an `http` trigger has no URL (as a Lambda function without
            # one): the same 404 as an unknown name; the Invoke API still reaches it.
            raise SoraError(404, "ResourceNotFoundException", f"Function not found: {name}")
        key, version = self.resolve(name, qualifier)
        if path and ("\x00" in path or ".." in path and ".." in path.split("/")):
            # Decoded already (%2e%2e, %00): a function that maps its path to files must never
            # be handed one that climbs out of its folder.
            raise SoraError(400, "Sora.InvalidPath", "The path may not contain '..' segments "
                            "or NUL characters")
        request_id = request_id_of(req)
        body = await read_body(req, self.max_body, self.body_timeout)
        scope = req.scope
        client = scope.get("client")
        event = build_event(
            method=req.method, raw_path="/" + path, query_string=scope.get("query_string",
                                                                           b"").decode("latin-1"),
            raw_headers=scope["headers"], body=body, source_ip=client[0] if client else "",
            http_version=scope.get("http_version", "1.1"), request_id=request_id,
            function=name,
            hidden=CREDENTIAL_HEADERS if self.keyed and not self.functions.is_public(name)
            else ())
        kind = req.get_header(INVOCATION_TYPE_HEADER)
        if kind is not None and kind != "RequestResponse":
            if kind != "Event":
                raise SoraError(400, "Sora.InvalidInvocationType", (
                    f"{INVOCATION_TYPE_HEADER}: expected RequestResponse or Event, got "
                    f"{kind!r}"))
            await self.accept_event(key, request_id, "http", event)
            resp.status = falcon.HTTP_202
            resp.set_header(REQUEST_ID_HEADER, request_id)
            resp.content_type = "application/json"
            resp.data = b'{"requestId":"%s","status":"queued"}' % request_id.encode()
            return
        try:
            status, result, *_ = await self.invoke(key, request_id.encode(), event,
                                                   p.TRIGGER_HTTP)
        except BrokerTimeout:
            raise SoraError(504, "Sora.GatewayTimeout",
                            "No answer from the function's worker in time") from None
        resp.set_header(REQUEST_ID_HEADER, request_id)
        resp.set_header("X-Amz-Executed-Version", version)
        if status != p.OK:
            headers = {}
            if status == p.NO_CAPACITY or status == p.THROTTLED:
                headers["Retry-After"] = RETRY_AFTER
            elif status in (p.FUNCTION_ERROR, p.INIT_ERROR):
                headers["X-Amz-Function-Error"] = "Unhandled"
            http_status = p.HTTP_STATUS[status]
            body, content_type = self.error_detail.function_url_error(name, http_status,
                                                                      result)
            _send_error(req, resp, http_status, body, headers)
            resp.content_type = content_type
            return
        try:
            mapped = map_result(result)
        except BadFunctionResponse as exc:
            # The worker checks a function URL's result (and records the failure); this is
            # the gateway's own guard.
            raise SoraError(502, "Sora.InvalidResponse", str(exc)) from None
        resp.status = mapped.status
        for header, value in mapped.headers:
            resp.append_header(header, value)
        if mapped.content_type:
            resp.content_type = mapped.content_type
        resp.data = mapped.body


for _method in falcon.constants.COMBINED_METHODS:
    setattr(FunctionUrlResource, f"on_{_method.lower()}", FunctionUrlResource.handle)


class HealthResource:
    """`GET /healthz`: open to all (probes), but only an admin key (or a host without keys)
    sees the functions, processes and their reasons; the `triggers` process's entry gets what
    the trigger service says of its scheduler and each file watcher
    (sora.triggers.listing.health_summary; `scheduler: {"state": "down"}` when it does not
    answer within HEALTH_WAIT)."""

    auth_scope = "public"

    def __init__(self, client: InvocationClient, triggers: TriggerService | None = None):
        self.client = client
        self.triggers = triggers

    async def on_get(self, req, resp) -> None:
        request_id = request_id_of(req)
        admin = is_admin(req)
        # Asked beside the control plane, not after it: a probe waits for the slower only.
        asked = (asyncio.ensure_future(self.trigger_status())
                 if admin and self.triggers is not None else None)
        try:
            body = await self.client.status(request_id.encode())
        except BrokerTimeout:
            if asked is not None:
                asked.cancel()
            raise SoraError(503, "Sora.BrokerUnavailable",
                            "The supervisor's control plane did not answer") from None
        resp.set_header(REQUEST_ID_HEADER, request_id)
        resp.content_type = "application/json"
        if not admin:
            body = json.dumps({"status": json.loads(body).get("status")}).encode()
        elif asked is not None:
            health = json.loads(body)
            if isinstance(health.get("triggers"), dict):
                # The supervisor's entry for the `triggers` process (state, pid, restarts),
                # with what the process itself says. A joined host has no such process.
                health["triggers"].update(health_summary(await asked))
                body = json.dumps(health).encode()
            else:
                asked.cancel()
        resp.data = body

    async def trigger_status(self) -> dict | None:
        try:
            return await self.triggers.ask("status", {}, HEALTH_WAIT)
        except ServiceDown:
            return None
        except Exception:   # noqa: BLE001 - /healthz answers whatever the service does
            log.exception("healthz: asking the trigger service failed")
            return None


def create_app(config: HostConfig | None = None,
               client: InvocationClient | None = None) -> falcon.asgi.App:
    # Counted only in a real gateway process (gunicorn's worker, config from $SORA_CONFIG):
    # it takes a metric slot for its life (sora.metrics.registry); tests that build apps in
    # their own process serve /metrics without counting.
    counting = config is None
    if config is None:
        config = load_host_config_of_child(os.environ["SORA_CONFIG"])
    if client is None:
        client = InvocationClient(p.control_endpoint(config.stateDir), config.stateDir,
                                  host_keys(config))
    # This host's functions and those only joined hosts serve (learnt from MEMBERS).
    table = FunctionTable(config, client)
    # No middleware but API keys, and those only when the host has keys: every responder and
    # error handler sets X-Sora-Request-Id itself, which keeps a per-request middleware call
    # off the hot path of an open host.
    authorizer = authorizer_for(config, table)
    app = falcon.asgi.App(middleware=[authorizer] if authorizer else [])
    app.req_options.strip_url_path_trailing_slash = False
    intake = EventIntake(config.stateDir, config.minFreeDiskMB)
    functions = FunctionUrlResource(client, config, intake, table)
    app.add_route("/functions/{name}", functions)
    app.add_route("/functions/{name}/{path:path}", functions)
    triggers = TriggerService(config.stateDir)
    app.add_route("/healthz", HealthResource(client, triggers))
    app.add_route("/2015-03-31/functions/{name}/invocations",
                  InvokeResource(client, config, intake, table))
    management_api.add_routes(app, config, table)
    store = Store(config.stateDir, config.store)
    app.add_route("/api/functions", FunctionListResource(client, store))
    app.add_route("/api/stats", StatsResource(client, store, config.stateDir))
    app.add_route("/api/functions/{name}/invocations",
                  InvocationListResource(store, config, table))
    app.add_route("/api/functions/{name}/logs", LogsResource(store, config, table))
    app.add_route("/api/functions/{name}/dlq", DeadLetterResource(store, config, table))
    app.add_route("/api/functions/{name}/dlq/replay",
                  DeadLetterReplayResource(store, config, table))
    app.add_route("/api/invocations/{request_id}", InvocationResource(store))
    app.add_route("/api/functions/{name}/triggers",
                  TriggersResource(store, config, table, triggers))
    app.add_route("/api/functions/{name}/triggers/{index}/fire",
                  TriggerFireResource(store, config, table, triggers))
    app.add_route("/api/reload", ReloadResource(config))
    if config.server.dashboard:
        dashboard.add_routes(app, config, client, store, table, triggers)
    if config.server.metrics:
        app.add_route("/metrics", MetricsResource(client, store, config.stateDir))
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(SoraError, handle_sora_error)
    app.add_error_handler(store_backend.StoreError, handle_store_error)
    app.add_error_handler(InvokeApiError, handle_invoke_api_error)
    if counting and config.server.metrics:
        listener = os.environ.get("SORA_LISTENER", "http")
        return CountedApp(app, metrics_registry.start(config.stateDir, f"gateway-{listener}"))
    return app

