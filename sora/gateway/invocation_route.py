"""What the two invocation routes (function URLs and the Invoke API) share: the broker client,
the host config, the body limit and broker waits, and accepting an asynchronous event."""
from __future__ import annotations

from ..config import HostConfig
from ..events.intake import EventIntake, EventNotStored
from .client import BrokerClient, broker_waits
from .errors import SoraError

RETRY_AFTER = "1"


class InvocationRoute:
    def __init__(self, client: BrokerClient, config: HostConfig, intake: EventIntake):
        self.client = client
        self.config = config
        self.intake = intake
        self.max_body = config.server.maxBodyBytes
        self.body_timeout = config.server.bodyTimeout
        self.waits = broker_waits(config)

    async def accept_event(self, name: str, request_id: str, trigger: str, payload: bytes,
                           error: type[SoraError] = SoraError) -> None:
        """Store the event or raise `error` (the route's error class): 404 for an unknown
        function, 503 for a broken one or when the event could not be stored."""
        if self.config.function(name) is None:
            broken = next((b for b in self.config.broken if b.name == name), None)
            if broken is None:
                raise error(404, "ResourceNotFoundException", f"Function not found: {name}")
            raise error(503, "Sora.FunctionUnavailable", f"Function {name} cannot run: "
                        f"{broken.reason}")
        try:
            await self.intake.accept(request_id, name, trigger, payload)
        except EventNotStored as exc:
            raise error(503, "Sora.EventNotStored", (
                f"The event could not be stored, so it was not accepted: {exc}"),
                {"Retry-After": RETRY_AFTER}) from None
