"""`POST /api/reload`: the live reload of issue 17, asked of the supervisor through the admin
channel (sora/control/admin.py). Admin scope (the default of every `/api` route, see auth.py).

The body is optional JSON: `{"functions": [names] | null, "setup": "auto" | "skip" |
"force"}` (no body: everything, setup as its cache decides). The answer is the reload's
report, once every switch it started has finished or failed: 200 with
`{"functions": {name: {"action", "reason"?}}, "needsRestart": [...], "errors": [...]}`
(a function that failed to reload is in it with `"action": "failed"`: the host did what it
was asked and says what it found), 400 for arguments the supervisor refuses, 503 when no
supervisor answers.
"""
from __future__ import annotations

import json

from ..config import HostConfig
from ..control import admin
from .errors import SoraError
from .requests import REQUEST_ID_HEADER, read_body, request_id_of

# A reload waits for setups (npm install) and new workers.
RELOAD_TIMEOUT = 900.0
MAX_BODY = 64 * 1024


class ReloadResource:
    auth_scope = "admin"

    def __init__(self, config: HostConfig, timeout: float = RELOAD_TIMEOUT):
        self.state_dir = config.stateDir
        self.body_timeout = config.server.bodyTimeout
        self.timeout = timeout

    async def on_post(self, req, resp) -> None:
        body = await read_body(req, MAX_BODY, self.body_timeout)
        try:
            args = json.loads(body) if body.strip() else {}
        except ValueError:
            args = None
        if not isinstance(args, dict):
            raise SoraError(400, "InvalidParameterValueException",
                            "The body must be a JSON object: {\"functions\": [names] | null, "
                            "\"setup\": \"auto\" | \"skip\" | \"force\"}")
        request = {"functions": args.get("functions"), "setup": args.get("setup", "auto")}
        try:
            answer = await admin.request_async(self.state_dir, admin.OP_RELOAD, request,
                                               self.timeout)
        except admin.AdminUnavailable as exc:
            raise SoraError(503, "Sora.SupervisorUnavailable", str(exc),
                            {"Retry-After": "1"}) from None
        if "error" in answer:
            error = answer["error"]
            raise SoraError(400, error.get("type", "InvalidParameterValueException"),
                            error.get("message", ""))
        resp.set_header(REQUEST_ID_HEADER, request_id_of(req))
        resp.content_type = "application/json"
        resp.data = json.dumps(answer).encode()
