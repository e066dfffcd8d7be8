"""API keys: who may call which route (host-config.yaml `auth.apiKeys`).

Each route says what it needs in its resource's `auth_scope`: `invoke` (the function URL and
the Invoke API, for the function named in the path), `admin` (records, logs, dead letters),
or `public` (health: open, but its details only for an admin key). A function with
`auth: none` in its sora.yaml has a public function URL (a function only a joined host serves
too, by the config that host sent: sora.function_table).

No keys configured: the middleware is not installed at all, so an open host pays nothing per
request. A key sent as it is (`Authorization: Bearer`, `X-Api-Key`) is compared by its SHA-256
digest in constant time, against every key (no early exit that would tell which one came
close). A refusal is 401 (no key, or an
unknown one; with `WWW-Authenticate`) or 403 (a key without the scope), as JSON, and is logged
with the key's name, never the key.

A request signed with AWS Signature Version 4 (the AWS SDKs, the AWS CLI) is let in as the key
whose name is its access key id, once its signature, time and body check out (sora.gateway.sigv4;
its body is read here for that, and handed on to the route). Every refusal carries the error
type AWS would give in `x-amzn-ErrorType` (`MissingAuthenticationTokenException`,
`UnrecognizedClientException`, `InvalidSignatureException`, `AccessDeniedException`), and the
Invoke API answers it in Lambda's error format, which the SDKs read and print.
"""
from __future__ import annotations

import hmac
import logging
import time
import urllib.parse

import falcon.asgi

from ..config import ApiKey, HostConfig, key_digest
from ..function_table import FunctionTable
from .errors import SoraError
from .requests import keep_body, read_body
from .sigv4 import SignatureRefused, SignedRequest, Verifier, is_signed

log = logging.getLogger("sora.gateway.auth")

API_KEY_HEADER = "X-Api-Key"
# The request headers `presented_key` reads (lower case, as in ASGI): Sora's own on a route
# that needs a key, so they are never passed on to the function (sora.gateway.app). With them
# the session token an AWS SDK sends beside its signature when its environment has one: a real
# AWS credential's part, never meant for the function.
CREDENTIAL_HEADERS = frozenset({"authorization", API_KEY_HEADER.lower(),
                                "x-amz-security-token"})


def identify(keys: tuple[ApiKey, ...], given: str | None) -> ApiKey | None:
    """The key `given` is: compared by its SHA-256 digest in constant time, against every key
    (no early exit that would tell which one came close)."""
    if not given:
        return None
    digest = key_digest(given)
    found = None
    for candidate in keys:
        if hmac.compare_digest(candidate.digest, digest):
            found = candidate
    return found


def presented_key(req: falcon.asgi.Request) -> str | None:
    key = req.get_header(API_KEY_HEADER)
    if key:
        return key
    auth = req.get_header("Authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


class Authorizer:
    def __init__(self, keys: tuple[ApiKey, ...], functions: FunctionTable,
                 max_body: int = 6 << 20, body_timeout: float = 10.0):
        self.keys = keys
        self.functions = functions
        self.verifier = Verifier(keys)
        self.max_body = max_body
        self.body_timeout = body_timeout

    def identify(self, key: str | None) -> ApiKey | None:
        return identify(self.keys, key)

    async def process_resource(self, req, resp, resource, params) -> None:
        scope = getattr(resource, "auth_scope", "admin")
        params = params or {}
        function_of = getattr(resource, "function_of", None)
        function = function_of(params) if function_of else params.get("name")
        if scope == "invoke" and getattr(resource, "public_urls", False):
            if function and not self.functions.knows(function):
                await self.functions.settled(function)   # perhaps a joined host's
            if self.functions.is_public(function):
                # Sora consumes no credential here: a signature (or a key) is the function's.
                req.context.api_key = None
                return
        given = presented_key(req)
        refused = None
        if given is None and is_signed(authorization := req.get_header("Authorization")):
            given = "a signature"
            try:
                key = await self.signer_of(req, authorization,
                                           getattr(resource, "max_body", self.max_body))
            except SignatureRefused as exc:
                key, refused = None, exc
            except SoraError as exc:
                error = getattr(resource, "refusal_error", None)
                if exc.status != 413 or error is None:
                    raise
                # The body was too large to check its signature: in Lambda's format.
                raise error(413, "RequestTooLargeException", str(exc)) from None
        else:
            key = self.identify(given)
        req.context.api_key = key
        if scope == "public":
            return
        route = f"{req.method} {_loggable(req.path)}"
        if key is None:
            if refused is not None:
                why, aws_type, message = refused.reason, refused.aws_type, str(refused)
            elif given:
                why, aws_type = "an unknown key", "UnrecognizedClientException"
                message = "The API key is not valid"
            else:
                why, aws_type = "no key", "MissingAuthenticationTokenException"
                message = ("This route needs an API key: send 'Authorization: Bearer <key>' "
                           "or 'X-Api-Key: <key>', or sign the request with AWS Signature "
                           "Version 4 (access key id: the key's name; secret access key: "
                           "the key)")
            log.warning("auth: 401 for %s from %s: %s", route, _client(req), why)
            raise _refusal(resource, 401, "Sora.Unauthorized", aws_type, message,
                           {"WWW-Authenticate": 'Bearer realm="sora"'})
        if not key.allows(scope, function):
            log.warning("auth: 403 for %s from %s: key %r has scopes %s", route, _client(req),
                        key.name, ",".join(key.scopes))
            needed = f"invoke:{function}" if scope == "invoke" else scope
            raise _refusal(resource, 403, "Sora.Forbidden", "AccessDeniedException", (
                f"The API key {key.name!r} does not have the scope this route needs "
                f"({needed})"))

    async def signer_of(self, req, authorization: str, max_body: int) -> ApiKey:
        """The key that signed this request (SigV4), or SignatureRefused. Reads the body,
        which the signature covers, and hands it on to the route: only once the key it
        claims exists and its time is right, so that a caller without a key is refused as soon
        as its headers are in, never reads a body into the gateway."""
        scope = req.scope
        headers = [(name.decode("latin-1").lower(), value.decode("latin-1"))
                   for name, value in scope["headers"]]
        self.verifier.claimed_key(authorization, headers, time.time())
        # The route's own limit where it has one (the management API's takes a zip).
        body = await read_body(req, max_body, self.body_timeout)
        keep_body(req, body)
        request = SignedRequest(
            method=req.method,
            raw_path=(scope.get("raw_path") or b"").decode("latin-1") or
            urllib.parse.quote(scope["path"]),
            query_string=scope.get("query_string", b"").decode("latin-1"),
            headers=headers, body=body)
        return self.verifier.verify(request, authorization, time.time())


def _refusal(resource, status: int, sora_type: str, aws_type: str, message: str,
             headers: dict | None = None) -> SoraError:
    """A 401 or 403: in Lambda's error format on a route that has it (the Invoke API, whose
    callers are the AWS SDKs), else Sora's JSON; AWS's error type in `x-amzn-ErrorType` on
    both."""
    headers = {**(headers or {}), "x-amzn-ErrorType": aws_type}
    error = getattr(resource, "refusal_error", None)
    if error is not None:
        return error(status, aws_type, message, headers)
    return SoraError(status, sora_type, message, headers)


def _loggable(path: str) -> str:
    """The path as the log may show it: decoded, it is the caller's text, and a newline (%0A)
    in it would start a log line of the caller's making."""
    return path if path.isprintable() else path.encode("unicode_escape").decode("ascii")


def _client(req) -> str:
    client = req.scope.get("client")
    return client[0] if client else "?"


def authorizer_for(config: HostConfig, functions: FunctionTable | None = None
                   ) -> Authorizer | None:
    if not config.apiKeys:
        return None
    return Authorizer(config.apiKeys, functions if functions is not None else
                      FunctionTable(config), config.server.maxBodyBytes,
                      config.server.bodyTimeout)


def is_admin(req) -> bool:
    """Whether the caller may see admin details (always, on a host without keys)."""
    key = getattr(req.context, "api_key", False)
    return key is False or (key is not None and "admin" in key.scopes)
