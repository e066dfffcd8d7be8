"""The AWS Lambda Invoke API: `POST /2015-03-31/functions/{name}/invocations`.

Point an AWS SDK or the AWS CLI at Sora (`endpoint_url`) and `invoke` works: the body is the
event and the response body is the function's result, as on Lambda.

- `X-Amz-Invocation-Type`: `RequestResponse` (default, 200), `Event` (202 once the event is
  stored durably; it runs later, at least once, see `sora.events`) or `DryRun` (204 once the
  function is known to exist).
- Function errors, timeouts and crashes are 200 with `X-Amz-Function-Error: Unhandled` and the
  error JSON as the body, as Lambda answers them.
- `X-Amz-Log-Type: Tail` returns the last 4 KB of the invocation's log, base64, in
  `X-Amz-Log-Result`.
- `name`, `name:qualifier`, a function ARN, and `?Qualifier=` are accepted: `$LATEST`, a
  published version's number or an alias (sora.versions; an alias with weights picks per
  call). `X-Amz-Executed-Version` says which version ran. A malformed qualifier is 400
  `InvalidParameterValueException`, one that does not exist 404.
- Errors of the API itself follow Lambda's: the type in the `x-amzn-ErrorType` header and the
  body `{"Type": "User", "message": ...}` (with Sora's `errorType`/`errorMessage` beside them).
  So do its 401 and 403 on a host with keys (sora.gateway.auth), where the SDKs sign their
  requests with a key (sora.gateway.sigv4).
"""
from __future__ import annotations

import json
import re

import falcon
import orjson

from .. import protocol as p
from ..config import FUNCTION_NAME_RE
from ..messaging.client import BrokerTimeout
from .error_detail import FULL, START_REASONS
from .errors import SoraError
from .invocation_route import RETRY_AFTER, InvocationRoute
from .requests import REQUEST_ID_HEADER, read_body, request_id_of

ARN_RE = re.compile(r"^arn:aws[a-z-]*:lambda:[^:]*:[^:]*:function:(?P<rest>.+)$")


class InvokeApiError(SoraError):
    """An error of the Invoke API itself, answered in Lambda's error format."""


async def handle_invoke_api_error(req, resp, ex: InvokeApiError, params) -> None:
    resp.status = ex.status
    resp.content_type = "application/json"
    resp.set_header("x-amzn-ErrorType", ex.error_type)
    resp.set_header("x-amzn-RequestId", request_id_of(req))
    resp.set_header(REQUEST_ID_HEADER, request_id_of(req))
    for name, value in ex.headers.items():
        resp.set_header(name, value)
    resp.data = json.dumps({"Type": "User", "message": str(ex), "errorType": ex.error_type,
                            "errorMessage": str(ex)}).encode()


def parse_function_name(raw: str, qualifier: str | None) -> tuple[str, str | None]:
    """(the function's name, its qualifier or None) from `name`, `name:qualifier` or an ARN,
    and the `Qualifier` parameter (both given: they must agree, as Lambda checks)."""
    match = ARN_RE.match(raw)
    rest = match.group("rest") if match else raw
    name, sep, inline = rest.partition(":")
    if not FUNCTION_NAME_RE.match(name):
        raise InvokeApiError(404, "ResourceNotFoundException",
                             f"Function not found: {ascii(raw[:200])[1:-1]}")
    if sep and qualifier is not None and inline != qualifier:
        raise InvokeApiError(400, "InvalidParameterValueException", (
            "The derived qualifier from the function name does not match the specified "
            "qualifier."))
    return name, (inline if sep else qualifier)


class InvokeResource(InvocationRoute):
    auth_scope = "invoke"
    refusal_error = InvokeApiError   # 401/403 in Lambda's format, for the SDKs (gateway.auth)

    def sora_message(self, function: str, body: bytes) -> str:
        """The message of an error Sora made (not the function): why a function cannot start
        names host files, shown only with `errorDetail: full`."""
        return self.error_detail.for_caller(function, *p.parse_error(body))

    @staticmethod
    def function_of(params: dict) -> str | None:
        """The function an invoke key must cover (the path may hold an ARN or a qualifier);
        None when the path names no valid function (its error comes after auth)."""
        match = ARN_RE.match(params.get("name", ""))
        name = (match.group("rest") if match else params.get("name", "")).partition(":")[0]
        return name if FUNCTION_NAME_RE.match(name) else None

    async def on_post(self, req, resp, name: str) -> None:
        request_id = request_id_of(req)
        fn_name, qualifier = parse_function_name(name, req.get_param("Qualifier"))
        kind = req.get_header("X-Amz-Invocation-Type") or "RequestResponse"
        if kind not in ("RequestResponse", "Event", "DryRun"):
            raise InvokeApiError(400, "InvalidParameterValueException", (
                f"X-Amz-Invocation-Type: expected RequestResponse, Event or DryRun, "
                f"got {kind!r}"))
        if not await self.functions.known(fn_name):
            raise InvokeApiError(404, "ResourceNotFoundException",
                                 f"Function not found: {fn_name}")
        key, version = self.resolve(fn_name, qualifier, InvokeApiError)
        payload = await read_body(req, self.max_body, self.body_timeout) or b"{}"
        try:
            # orjson is strict where json.loads is not: NaN and Infinity (not JSON) are
            # refused, and nesting past 1,024 levels is a parse error, not RecursionError.
            orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise InvokeApiError(400, "InvalidRequestContentException", (
                f"Could not parse request body into json: {exc}")) from None
        resp.set_header(REQUEST_ID_HEADER, request_id)
        resp.set_header("x-amzn-RequestId", request_id)
        if kind == "DryRun":
            resp.status = falcon.HTTP_204
            return
        if kind == "Event":
            await self.accept_event(key, request_id, "invoke", payload, InvokeApiError)
            resp.status = falcon.HTTP_202
            return
        tail = (req.get_header("X-Amz-Log-Type") or "None") == "Tail"
        try:
            status, body, *log_tail = await self.invoke(
                key, request_id.encode(), payload, p.meta(p.TRIGGER_INVOKE, tail),
                InvokeApiError, "ServiceException")
        except BrokerTimeout:
            raise InvokeApiError(504, "ServiceException",
                                 "No answer from the function's worker in time") from None
        if status == p.NOT_FOUND:
            raise InvokeApiError(404, "ResourceNotFoundException",
                                 f"Function not found: {fn_name}")
        if status == p.NO_CAPACITY or status == p.THROTTLED:
            raise InvokeApiError(429, "TooManyRequestsException", p.parse_error(body)[1],
                                 {"Retry-After": RETRY_AFTER})
        if status == p.UNAVAILABLE:
            raise InvokeApiError(502, "ResourceNotReadyException",
                                 self.sora_message(fn_name, body))
        if status == p.BAD_REQUEST:
            raise InvokeApiError(400, "InvalidRequestContentException", p.parse_error(body)[1])
        if tail:
            resp.set_header("X-Amz-Log-Result", (log_tail or [b""])[0].decode("ascii"))
        resp.set_header("X-Amz-Executed-Version", version)
        if status != p.OK:
            # The function ran and failed (error, timeout, crash): 200, as Lambda answers.
            resp.set_header("X-Amz-Function-Error", "Unhandled")
            if status == p.INIT_ERROR and self.error_detail.level != FULL:
                error_type, _ = p.parse_error(body)
                if error_type in START_REASONS:   # Sora's config error: names host files
                    body = p.error_body(error_type, self.sora_message(fn_name, body))
        resp.content_type = "application/json"
        resp.data = body

