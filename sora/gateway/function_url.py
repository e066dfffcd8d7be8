"""The AWS Lambda function URL format (payload format 2.0): HTTP request -> event, and the
function's result -> HTTP response, following AWS's rules for function URLs, so that web
framework adapters written for Lambda (serverless-http, @vendia/serverless-express, Mangum,
aws-lambda-web-adapter, ...) work unchanged.
"""
from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import orjson

# Bodies of these types go to the function as text; anything else is base64 (as on AWS).
_TEXT_TYPES = ("text/", "application/json", "application/javascript", "application/xml",
               "application/x-www-form-urlencoded", "application/graphql", "+json", "+xml")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _is_text(content_type: str) -> bool:
    ct = content_type.split(";", 1)[0].strip().lower()
    return any(ct.startswith(t) if t.endswith("/") else (ct == t or ct.endswith(t))
               for t in _TEXT_TYPES)


_clf_cache: list = [-1, ""]


def _clf_time(epoch: float) -> str:
    """`12/Mar/2020:19:03:58 +0000`, formatted once per second."""
    second = int(epoch)
    if _clf_cache[0] != second:
        t = time.gmtime(second)
        _clf_cache[:] = [second, f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
                                 f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"]
    return _clf_cache[1]


def build_event(*, method: str, raw_path: str, query_string: str,
                raw_headers: list[tuple[bytes, bytes]], body: bytes, source_ip: str,
                http_version: str, request_id: str, function: str,
                hidden: frozenset[str] | tuple = ()) -> bytes:
    """The event JSON for one HTTP request. `raw_path` is the path below the function's own
    prefix, as the function would see it behind its own URL. Headers named (lower case) in
    `hidden` are left out: the credentials Sora consumed for its own auth."""
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name_b, value_b in raw_headers:
        name = name_b.decode("latin-1").lower()
        if hidden and name in hidden:
            continue
        value = value_b.decode("latin-1")
        if name == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    now = time.time()
    host = headers.get("host", "localhost").split(":", 1)[0]
    event: dict = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": query_string,
        "headers": headers,
    }
    if cookies:
        event["cookies"] = cookies
    if query_string:
        params: dict[str, str] = {}
        for key, value in parse_qsl(query_string, keep_blank_values=True):
            params[key] = f"{params[key]},{value}" if key in params else value
        event["queryStringParameters"] = params
    event["requestContext"] = {
        "accountId": "anonymous",
        "apiId": function,
        "authentication": None,
        "domainName": host,
        "domainPrefix": host.split(".", 1)[0],
        "http": {
            "method": method,
            "path": raw_path,
            "protocol": f"HTTP/{http_version}",
            "sourceIp": source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": request_id,
        "routeKey": "$default",
        "stage": "$default",
        "time": _clf_time(now),
        "timeEpoch": int(now * 1000),
    }
    if body:
        text = None
        content_type = headers.get("content-type", "")
        if not content_type or _is_text(content_type):
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                text = None
        if text is None:
            event["body"] = base64.b64encode(body).decode("ascii")
            event["isBase64Encoded"] = True
        else:
            event["body"] = text
            event["isBase64Encoded"] = False
    else:
        event["isBase64Encoded"] = False
    # As in AWS's published function URL example: present, and null.
    event["pathParameters"] = None
    event["stageVariables"] = None
    return orjson.dumps(event)


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


def _header(name: str, value: str) -> tuple[str, str]:
    if not _HEADER_NAME.fullmatch(name):
        raise BadFunctionResponse(f"header name {name[:100]!r} is not a valid HTTP token")
    if not _HEADER_VALUE.fullmatch(value):
        # The value may carry data the function echoed: name only the header.
        raise BadFunctionResponse(f"the value of header {name!r} has a control character "
                                  f"(CR, LF, NUL, ...) or a character outside Latin-1")
    return name, value


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
    if isinstance(status, str) and status.isdigit():
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
        if val is None or name.lower() in HOP_BY_HOP:
            continue
        if name.lower() == "content-type":
            has_type = True
        out.headers.append(_header(name, val if isinstance(val, str) else
                                   json.dumps(val) if isinstance(val, (dict, list)) else
                                   str(val).lower() if isinstance(val, bool) else str(val)))
    multi = value.get("multiValueHeaders") or {}
    if not isinstance(multi, dict):
        raise BadFunctionResponse("multiValueHeaders must be an object of header names to "
                                  "lists of values")
    for name, vals in multi.items():
        if name.lower() in HOP_BY_HOP:
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
        out.body = json.dumps(body, separators=(",", ":")).encode()
    if not has_type:
        out.content_type = "application/json"
    return out
