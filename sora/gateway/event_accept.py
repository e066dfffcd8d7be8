"""Accepting an asynchronous event on any route: the checks and errors every route shares."""
from __future__ import annotations

from ..config import HostConfig
from ..events.intake import EventIntake, EventNotStored
from .errors import SoraError

RETRY_AFTER = "1"


async def accept_event(intake: EventIntake, config: HostConfig, name: str,
                       request_id: str, trigger: str, payload: bytes,
                       error: type[SoraError] = SoraError) -> None:
    """Store the event or raise `error` (the route's error class): 404 for an unknown
    function, 503 for a broken one or when the event could not be stored."""
    if config.function(name) is None:
        broken = next((b for b in config.broken if b.name == name), None)
        if broken is None:
            raise error(404, "ResourceNotFoundException", f"Function not found: {name}")
        raise error(503, "Sora.FunctionUnavailable", f"Function {name} cannot run: "
                    f"{broken.reason}")
    try:
        await intake.accept(request_id, name, trigger, payload)
    except EventNotStored as exc:
        raise error(503, "Sora.EventNotStored", (
            f"The event could not be stored, so it was not accepted: {exc}"),
            {"Retry-After": RETRY_AFTER}) from None
