"""The AWS Lambda function URL format (payload format 2.0): HTTP request -> event, and the
function's result -> HTTP response, following AWS's rules for function URLs, so that web
framework adapters written for Lambda (serverless-http, @vendia/serverless-express, Mangum,
aws-lambda-web-adapter, ...) work unchanged.
"""
from __future__ import annotations

import base64
import time
from urllib.parse import parse_qsl

import orjson

# The function's result -> the HTTP response is sora.function_response (shared with the worker,
# which checks a function URL's result so that its record says what the caller got).

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
