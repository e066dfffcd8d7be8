"""What the two invocation routes (function URLs and the Invoke API) share: the invocation
client, the host config, the table of functions (this host's and those only joined hosts serve,
sora.function_table), the body limit and call waits, and accepting an asynchronous event."""
from __future__ import annotations

import logging

from .. import protocol as p
from ..config import HostConfig
from ..events.intake import EventIntake, EventNotStored, LowDisk, QueueFull, StoreDown
from ..function_table import FunctionTable
from ..messaging.client import InvocationClient, BrokerUnavailable
from ..metrics import registry as metrics_registry
from ..versions.qualifier import LATEST
from ..versions.routing import Resolver
from ..versions.store import VersionError
from .error_detail import ErrorDetail
from .errors import SoraError

log = logging.getLogger("sora.gateway")
RETRY_AFTER = "1"
# Answers of a call refused before it ran (no record is made): counted here as `throttled`.
REFUSED = (p.THROTTLED, p.NO_CAPACITY)
# While the disk is low: long enough for an operator (or pruning) to free space, short enough
# that callers come back soon after.
LOW_DISK_RETRY_AFTER = "10"


class InvocationRoute:
    def __init__(self, client: InvocationClient, config: HostConfig, intake: EventIntake,
                 functions: FunctionTable | None = None):
        self.client = client
        self.config = config
        self.intake = intake
        self.functions = functions if functions is not None else FunctionTable(config)
        self.max_body = config.server.maxBodyBytes
        self.body_timeout = config.server.bodyTimeout
        self.max_event = config.server.maxEventBytes
        self.error_detail = ErrorDetail.of(config, self.functions)
        self.resolver = Resolver(config.stateDir, store=config.store)   # versions and aliases

    def resolve(self, name: str, qualifier: str | None,
                error: type[SoraError] = SoraError) -> tuple[str, str]:
        """(data path key, version) of one call to `name` with `qualifier`: an alias picks
        its version now (weights per call); 400 for a malformed qualifier, 404 for a version
        or alias that does not exist (as `error`, the route's error class)."""
        if qualifier is None or qualifier == LATEST:
            return name, LATEST
        try:
            return self.resolver.resolve(name, qualifier)
        except VersionError as exc:
            raise error(exc.status, exc.error_type, str(exc)) from None

    async def invoke(self, name: str, request_id: bytes, payload: bytes, meta: bytes,
                     error: type[SoraError] = SoraError,
                     error_type: str = "Sora.BrokerUnavailable") -> list[bytes]:
        """`InvocationClient.invoke`, except that what only a missing control plane explains
        is the caller's 503 with Retry-After (`error_type`): no control plane connected and no
        known worker to take the call (the supervisor is gone or restarting), or a control
        plane that does not know a function this gateway's config has (one just started,
        before it learned the functions). A configured function is never reported as not
        found, nor is a function a joined host served while none serves it now (its hosts
        are lost or restarting). Raises BrokerTimeout as the client does."""
        try:
            frames = await self.client.invoke(name, request_id, payload,
                                              self.functions.wait(name), meta)
        except BrokerUnavailable:
            raise error(503, error_type, "The host's control plane is not running (the "
                        "supervisor is stopping or restarting)", {"Retry-After": RETRY_AFTER}) from None
        if frames[0] == p.NOT_FOUND and self.functions.knows(name):
            if self.functions.is_remote(name):
                raise error(503, error_type, f"No host that serves function {name} is "
                            "connected now (lost or restarting)", {"Retry-After": RETRY_AFTER})
            raise error(503, error_type, f"The host does not know function {name} "
                        "yet (the supervisor is starting)", {"Retry-After": RETRY_AFTER})
        if frames[0] in REFUSED and (metrics := metrics_registry.current()) is not None:
            metrics.count_throttled(name, meta.partition(b"+")[0].decode())
        return frames

    async def accept_event(self, name: str, request_id: str, trigger: str, payload: bytes,
                           error: type[SoraError] = SoraError) -> None:
        """Store the event or raise `error` (the route's error class): 404 for an unknown
        function, 503 for a broken one or when the event could not be stored (the disk low
        among the reasons), 413 for an event over `maxEventBytes`, 429 when the function has
        as many events stored as its caps allow. Nothing is stored unless this returns."""
        key, name = name, name.partition(":")[0]   # a version's key: its function's settings
        if await self.functions.lookup(name) is None:
            broken = self.functions.broken.get(name)
            if broken is None:
                raise error(404, "ResourceNotFoundException", f"Function not found: {name}")
            # The reason names files of the host (the config, a setup log): for `full` only.
            raise error(503, "Sora.FunctionUnavailable", self.error_detail.for_caller(
                name, "Sora.FunctionUnavailable", f"Function {name} cannot run: "
                f"{broken.reason}"))
        if len(payload) > self.max_event:
            raise error(413, "RequestEntityTooLargeException", (
                f"The event is {len(payload)} bytes; asynchronous invocations take at most "
                f"{self.max_event} bytes (server.maxEventBytes)"))
        try:
            await self.intake.accept(request_id, key, trigger, payload,
                                     self.functions.event_caps(name))
        except QueueFull as exc:
            raise error(429, "TooManyRequestsException", (
                f"The event was not accepted: {exc}"), {"Retry-After": RETRY_AFTER}) from None
        except LowDisk:
            raise error(503, "Sora.LowDisk", (
                "The host is low on disk space, so asynchronous events are not accepted "
                "until space is freed"), {"Retry-After": LOW_DISK_RETRY_AFTER}) from None
        except (StoreDown, EventNotStored) as exc:
            # StoreDown: the store's server is down or restarting; the pool reconnects by
            # itself, so the caller tries again shortly. The text names the store by its
            # display URL (no password), and an OSError's text names its file in the state
            # dir: the log keeps it, the caller (on a function URL, anyone) gets it redacted
            # but under `full`.
            log.warning("event for %s not stored: %s", name, exc)
            error_type, what = (("Sora.StoreUnavailable", "The event store cannot be reached")
                                if isinstance(exc, StoreDown) else
                                ("Sora.EventNotStored", "The event could not be stored"))
            reason = self.error_detail.for_caller(name, error_type, str(exc))
            raise error(503, error_type, f"{what}, so the event was not accepted: {reason}",
                        {"Retry-After": RETRY_AFTER}) from None
