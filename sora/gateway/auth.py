"""API keys: who may call which route (host-config.yaml `auth.apiKeys`).

Each route says what it needs in its resource's `auth_scope`: `invoke` (the function URL and
the Invoke API, for the function named in the path), `admin` (records, logs, dead letters),
or `public` (health: open, but its details only for an admin key). A function with
`auth: none` in its sora.yaml has a public function URL.

No keys configured: the middleware is not installed at all, so an open host pays nothing per
request. Keys are kept as SHA-256 digests and compared in constant time, against every key
(no early exit that would tell which one came close). A refusal is 401 (no key, or an
unknown one; with `WWW-Authenticate`) or 403 (a key without the scope), as JSON, and is logged
with the key's name, never the key.
"""
from __future__ import annotations

import hmac
import logging

import falcon.asgi

from ..config import ApiKey, HostConfig, key_digest
from .errors import SoraError

log = logging.getLogger("sora.gateway.auth")

API_KEY_HEADER = "X-Api-Key"
# The request headers `presented_key` reads (lower case, as in ASGI): Sora's own on a route
# that needs a key, so they are never passed on to the function (sora.gateway.app).
CREDENTIAL_HEADERS = frozenset({"authorization", API_KEY_HEADER.lower()})


def presented_key(req: falcon.asgi.Request) -> str | None:
    key = req.get_header(API_KEY_HEADER)
    if key:
        return key
    auth = req.get_header("Authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


class Authorizer:
    def __init__(self, keys: tuple[ApiKey, ...], public_functions: set[str]):
        self.keys = keys
        self.public_functions = public_functions

    def identify(self, key: str | None) -> ApiKey | None:
        if not key:
            return None
        digest = key_digest(key)
        found = None
        for candidate in self.keys:
            if hmac.compare_digest(candidate.digest, digest):
                found = candidate
        return found

    async def process_resource(self, req, resp, resource, params) -> None:
        scope = getattr(resource, "auth_scope", "admin")
        given = presented_key(req)
        key = self.identify(given)
        req.context.api_key = key
        if scope == "public":
            return
        params = params or {}
        function_of = getattr(resource, "function_of", None)
        function = function_of(params) if function_of else params.get("name")
        if scope == "invoke" and getattr(resource, "public_urls", False) and \
                function in self.public_functions:
            return
        route = f"{req.method} {req.path}"
        if key is None:
            log.warning("auth: 401 for %s from %s: %s", route, _client(req),
                        "an unknown key" if given else "no key")
            raise SoraError(401, "Sora.Unauthorized", (
                "The API key is not valid" if given else "This route needs an API key: send "
                "'Authorization: Bearer <key>' or 'X-Api-Key: <key>'"),
                {"WWW-Authenticate": 'Bearer realm="sora"'})
        if not key.allows(scope, function):
            log.warning("auth: 403 for %s from %s: key %r has scopes %s", route, _client(req),
                        key.name, ",".join(key.scopes))
            needed = f"invoke:{function}" if scope == "invoke" else scope
            raise SoraError(403, "Sora.Forbidden", (
                f"The API key {key.name!r} does not have the scope this route needs "
                f"({needed})"))


def _client(req) -> str:
    client = req.scope.get("client")
    return client[0] if client else "?"


def authorizer_for(config: HostConfig) -> Authorizer | None:
    if not config.apiKeys:
        return None
    return Authorizer(config.apiKeys, {fn.name for fn in config.functions if fn.auth == "none"})


def is_admin(req) -> bool:
    """Whether the caller may see admin details (always, on a host without keys)."""
    key = getattr(req.context, "api_key", False)
    return key is False or (key is not None and "admin" in key.scopes)
