"""A function URL's result -> its HTTP response, following AWS's rules for function URLs.

Used by the gateway (to answer) and by the worker (to check the result of a function URL call
before it records it: a result that cannot become a response is the caller's 502
`Sora.InvalidResponse`, and its record must say so). Pure: no I/O, no process's internals.
"""
from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field

import orjson


@dataclass
class HttpResult:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    content_type: str | None = "application/json"


class BadFunctionResponse(ValueError):
    """The function returned a response object that cannot become an HTTP response."""


# RFC 9110 5.1 and 5.5: a field name is a token; a value is visible characters, spaces and
# tabs (no CR, LF, NUL or other controls, which would split or smuggle a response). gunicorn
# refuses anything else with a bare 500 once the response has started, so the gateway checks
# first and answers 502 as JSON.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# Headers about this one connection (RFC 9110 7.6.1) and the body's framing: the gateway's own
# business. A function's are dropped, not sent beside the gateway's (a second Content-Length
# or a Transfer-Encoding would let the function frame the connection's next response).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                        "transfer-encoding", "upgrade", "content-length"})
# Headers that reach past the function's own URL into the rest of its origin, which is the
# dashboard's too (/ui/): `Service-Worker-Allowed` would let a service worker served from
# /functions/NAME/ claim scope `/`, and watch the admin's dashboard navigations (a worker's
# requests pass the dashboard's Sec-Fetch guard as navigations). Dropped as well.
DROPPED = HOP_BY_HOP | {"service-worker-allowed"}


def _header(name: str, value: str) -> tuple[str, str]:
    if not _HEADER_NAME.fullmatch(name):
        raise BadFunctionResponse(f"header name {name[:100]!r} is not a valid HTTP token")
    if not _HEADER_VALUE.fullmatch(value):
        # The value may carry data the function echoed: name only the header.
        raise BadFunctionResponse(f"the value of header {name!r} has a control character "
                                  f"(CR, LF, NUL, ...) or a character outside Latin-1")
    return name, value


def _json(value, **options) -> str:
    """`value` as JSON text. orjson parses up to 1,024 levels, json.dumps writes fewer (the
    interpreter's recursion limit, ~1,000): a RecursionError here killed the worker checking
    the answer."""
    try:
        return json.dumps(value, **options)
    except RecursionError:
        raise BadFunctionResponse("the body or a header value is nested too deeply to "
                                  "write as JSON") from None


def map_result(result: bytes) -> HttpResult:
    """Map the function's result JSON to an HTTP response the way function URLs do: an object
    with `statusCode` describes the response; any other value is the JSON body of a 200."""
    if b'"statusCode"' not in result:
        return HttpResult(body=result)  # passed through untouched, no re-encoding
    try:
        # orjson: depth-limited (1,024 levels), where json.loads raises RecursionError.
        value = orjson.loads(result)
    except orjson.JSONDecodeError as exc:
        raise BadFunctionResponse(f"the result is not valid JSON: {exc}") from None
    if not isinstance(value, dict) or "statusCode" not in value:
        return HttpResult(body=result)
    status = value["statusCode"]
    if isinstance(status, str) and status.isascii() and status.isdigit():
        # ASCII only: '²' and other Unicode digits pass isdigit() but int() refuses them
        # (a ValueError that killed the worker checking the answer).
        status = int(status)
    # 1xx is not a final response: the caller would wait for one that never comes.
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise BadFunctionResponse(f"statusCode must be a final HTTP status from 200 to 599, "
                                  f"got {status!r}")
    out = HttpResult(status=status, content_type=None)
    headers = value.get("headers")
    headers = {} if headers is None else headers
    if not isinstance(headers, dict):
        raise BadFunctionResponse("headers must be an object of header names to values")
    has_type = False
    for name, val in headers.items():
        if val is None or name.lower() in DROPPED:
            continue
        if name.lower() == "content-type":
            has_type = True
        out.headers.append(_header(name, val if isinstance(val, str) else
                                   _json(val) if isinstance(val, (dict, list)) else
                                   str(val).lower() if isinstance(val, bool) else str(val)))
    multi = value.get("multiValueHeaders") or {}
    if not isinstance(multi, dict):
        raise BadFunctionResponse("multiValueHeaders must be an object of header names to "
                                  "lists of values")
    for name, vals in multi.items():
        if name.lower() in DROPPED:
            continue
        for val in vals if isinstance(vals, list) else [vals]:
            out.headers.append(_header(name, str(val)))
    cookies = value.get("cookies")
    cookies = [] if cookies is None else cookies
    if not isinstance(cookies, list):
        raise BadFunctionResponse("cookies must be a list of Set-Cookie values")
    out.headers.extend(_header("Set-Cookie", str(c)) for c in cookies)
    body = value.get("body")
    if body is None:
        out.body = b""
    elif isinstance(body, str):
        if value.get("isBase64Encoded"):
            try:
                out.body = base64.b64decode(body, validate=True)
            except ValueError as exc:
                raise BadFunctionResponse(f"isBase64Encoded is true but body is not base64: "
                                          f"{exc}") from None
        else:
            out.body = body.encode("utf-8")
    else:
        out.body = _json(body, separators=(",", ":")).encode()
    if not has_type:
        out.content_type = "application/json"
    return out
