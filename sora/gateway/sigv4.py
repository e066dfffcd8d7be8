"""AWS Signature Version 4 with Sora's API keys: what lets the AWS SDKs and the AWS CLI call Sora.

A key in `auth.apiKeys` is an AWS credential pair: its `name` is the access key id and the key
itself the secret access key (`sora keys` prints both). A caller signs as it would for Lambda
(service `lambda`, any region); `Verifier.verify` recomputes the signature of the request as
received with botocore's own signer (`SigV4Auth`: the canonical request, the string to sign and
the derived signing key are AWS's maintained code, not ours) and compares it in constant time.

What a signature proves, and for how long:
- The secret: an unknown access key id is `UnrecognizedClientException`, a signature that
  does not match (wrong secret, or a request changed after it was signed: method, path, query,
  a signed header, or the body) is `InvalidSignatureException`; so is an x-amz-* or x-sora-*
  header sent but not signed (one added to a signed call would change what it does). All
  that needs no body is checked before the body is read (`claimed_key`).
- The body: it is part of the signature (its SHA-256 is in the canonical request, computed here
  from the bytes read); an `x-amz-content-sha256` header must equal that hash, and
  `UNSIGNED-PAYLOAD` is refused.
- The time: `X-Amz-Date` is signed and must be within 5 minutes of the host's clock, as AWS
  requires, so a signature seen once (a proxy's log, say) is refused once it is older than
  that, and cannot be moved to a fresh date.
- Not uniqueness. A request resent within those 5 minutes is accepted, as AWS accepts it:
  boto3 and the AWS CLI sign only `host` and `x-amz-date` (one-second resolution) besides the
  body, so two identical calls in the same second — a loop invoking a function with the same
  event — carry the same signature, and refusing a signature seen before would refuse them
  (tests/integration/test_sigv4.py checks that they pass). A memory of seen signatures would
  also be per gateway process, so porous with `server.gatewayWorkers` > 1. TLS is what keeps a
  signature from being seen at all.

The secret must be in memory for this (an HMAC is checked by computing it), so an `ApiKey`
keeps its key beside the SHA-256 digest that `Authorization: Bearer` keys are compared with.
"""
from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import hmac
import re
import urllib.parse
from dataclasses import dataclass

from ..config import ApiKey

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "lambda"
MAX_SKEW_SECONDS = 300   # AWS's own bound on X-Amz-Date
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
AMZ_DATE_RE = re.compile(r"^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$")
UNSIGNED_PAYLOADS = ("UNSIGNED-PAYLOAD", "STREAMING-")
# Headers that change what a call does (X-Amz-Invocation-Type, X-Amz-Log-Type: Tail, Sora's
# X-Sora-Invocation-Type) must be signed when sent, as AWS requires of every x-amz-* header:
# else whoever saw a signed call could resend it with one added. X-Amz-Date is in the string
# to sign whether listed or not, and X-Amz-Content-SHA256 is checked against the body.
MUST_SIGN = ("x-amz-", "x-sora-")
CHECKED_UNSIGNED = frozenset({"x-amz-date", "x-amz-content-sha256"})

# `Credential=<access key id>/<yyyymmdd>/<region>/<service>/aws4_request`: the id is a key's
# name, which may hold any character, so the fixed parts are matched from the end.
AUTHORIZATION_RE = re.compile(
    ALGORITHM + r" +Credential=(?P<id>.+)/(?P<date>\d{8})/(?P<region>[^/,]+)/"
    r"(?P<service>[^/,]+)/aws4_request *, *SignedHeaders=(?P<headers>[^, ]+) *, *"
    r"Signature=(?P<signature>[0-9a-f]{64}) *$")


class SignatureRefused(Exception):
    """A signed request that is not let in: `aws_type` is the error type AWS gives for it,
    `reason` what the host's log says (never the key nor the signature)."""

    def __init__(self, aws_type: str, message: str, reason: str):
        super().__init__(message)
        self.aws_type = aws_type
        self.reason = reason


@dataclass(frozen=True)
class SignedRequest:
    """What verification needs of an HTTP request, as it came off the wire."""
    method: str
    raw_path: str          # percent-encoded, as sent (the canonical URI encodes it again)
    query_string: str      # as sent, without '?'
    headers: list[tuple[str, str]]   # (lower-case name, value), in order, repeats kept
    body: bytes


def is_signed(authorization: str | None) -> bool:
    return authorization is not None and authorization.startswith(ALGORITHM)


class Verifier:
    def __init__(self, keys: tuple[ApiKey, ...]):
        # botocore is imported here, not at the module's top: importing it takes ~0.25 s
        # (measured), which only a host with keys pays, once per gateway process at start.
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import HTTPHeaders
        from botocore.credentials import Credentials
        self._signer, self._headers, self._credentials = SigV4Auth, HTTPHeaders, Credentials
        self.keys = {key.name: key for key in keys}

    def verify(self, request: SignedRequest, authorization: str, now: float) -> ApiKey:
        """The key that signed `request`, or SignatureRefused."""
        key, match, amz_date = self.claimed_key(authorization, request.headers, now)
        headers = request.headers
        signed = match["headers"].split(";")
        if "host" not in signed:
            raise SignatureRefused("InvalidSignatureException",
                                   "SignedHeaders must include 'host'",
                                   f"key {key.name!r}: host not signed")
        unsigned = sorted({name for name, _ in headers if name.startswith(MUST_SIGN) and
                           name not in CHECKED_UNSIGNED} - set(signed))
        if unsigned:
            raise SignatureRefused("InvalidSignatureException", (
                f"SignedHeaders must include every x-amz-* header sent: {', '.join(unsigned)} "
                "is not signed"), f"key {key.name!r}: unsigned {', '.join(unsigned)}")
        body_hash = hashlib.sha256(request.body).hexdigest()
        declared = _header(headers, "x-amz-content-sha256")
        if declared is not None and declared != body_hash:
            if declared.startswith(UNSIGNED_PAYLOADS):
                raise SignatureRefused("InvalidSignatureException", (
                    f"x-amz-content-sha256: {declared} is not accepted; sign the body"),
                    f"key {key.name!r}: unsigned body")
            raise SignatureRefused("InvalidSignatureException", (
                "The body does not match its signed SHA-256 (x-amz-content-sha256): it "
                "changed after it was signed"), f"key {key.name!r}: body changed")
        expected = self._signature(key, match, request, signed, amz_date)
        if not hmac.compare_digest(expected, match["signature"]):
            raise SignatureRefused("InvalidSignatureException", (
                "The request signature we calculated does not match the signature you "
                f"provided: sign with access key id {key.name!r} and its key as the secret "
                "access key, and send the request as it was signed"),
                f"key {key.name!r}: signature does not match")
        return key

    def claimed_key(self, authorization: str, headers: list[tuple[str, str]],
                    now: float) -> tuple[ApiKey, re.Match, str]:
        """The key a signature claims, its parts and its X-Amz-Date, once all that needs no
        body checks out: the header's shape, the access key id, the service and the time. The
        gateway asks this before it reads the body (sora.gateway.auth), so a caller with no key
        of this host costs it no body (up to server.maxBodyBytes, read and hashed) and no wait
        for one: the same as an unknown Bearer key."""
        match = AUTHORIZATION_RE.match(authorization)
        if match is None:
            raise SignatureRefused("IncompleteSignatureException", (
                f"Authorization: expected '{ALGORITHM} Credential=<access key id>/<date>/"
                "<region>/lambda/aws4_request, SignedHeaders=<names>, Signature=<64 hex "
                "digits>'"), "a malformed signature")
        access_key_id = match["id"]
        key = self.keys.get(access_key_id)
        if key is None:
            raise SignatureRefused("UnrecognizedClientException", (
                f"The access key id {access_key_id!r} is not a key of this host: a key's "
                "access key id is its name in auth.apiKeys (`sora keys` on the host prints "
                "them)"), "an unknown access key id")
        if match["service"] != SERVICE:
            raise SignatureRefused("InvalidSignatureException", (
                f"Credential should be scoped to correct service: '{SERVICE}' (got "
                f"{match['service']!r})"), f"key {key.name!r}: signed for another service")
        amz_date = _header(headers, "x-amz-date")
        signed_at = _parse_amz_date(amz_date)
        if signed_at is None:
            raise SignatureRefused("IncompleteSignatureException", (
                f"X-Amz-Date: expected the signing time as YYYYMMDD'T'HHMMSS'Z', got "
                f"{amz_date!r}"), f"key {key.name!r}: no X-Amz-Date")
        if match["date"] != amz_date[:8]:
            raise SignatureRefused("InvalidSignatureException", (
                f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of "
                f"date from HTTP: {match['date']!r} != {amz_date[:8]!r}"),
                f"key {key.name!r}: credential date differs from X-Amz-Date")
        _check_time(signed_at, amz_date, now, key)
        return key, match, amz_date

    def _signature(self, key: ApiKey, match: re.Match, request: SignedRequest, signed: list[str],
                   amz_date: str) -> str:
        """botocore's signature of `request` with `key`, over the headers the caller signed."""
        aws_request = _SignerRequest(request.method, "http://sora" + (request.raw_path or "/"),
                                     self._headers(), _query_pairs(request.query_string),
                                     {"timestamp": amz_date}, request.body)
        wanted = set(signed)
        for name, value in request.headers:
            if name in wanted:
                aws_request.headers[name] = value   # a repeated header is added again
        missing = wanted - {name.lower() for name in aws_request.headers.keys()}
        if missing:
            raise SignatureRefused("InvalidSignatureException", (
                f"SignedHeaders names {', '.join(sorted(missing))}, which the request does "
                "not have"), f"key {key.name!r}: a signed header is missing")
        signer = self._signer(self._credentials(key.name, key.secret), match["service"],
                              match["region"])
        if signer.signed_headers(signer.headers_to_sign(aws_request)) != ";".join(signed):
            # botocore never signs hop-by-hop headers (connection, user-agent, ...): a
            # signature over one cannot be checked, and no AWS SDK makes one.
            raise SignatureRefused("InvalidSignatureException", (
                f"SignedHeaders: {match['headers']} names a header that is not signed (such as "
                "user-agent or connection), or is not sorted"),
                f"key {key.name!r}: unsignable SignedHeaders")
        canonical = signer.canonical_request(aws_request)
        return signer.signature(signer.string_to_sign(aws_request, canonical), aws_request)


@dataclass
class _SignerRequest:
    """What botocore's SigV4Auth reads of a request (botocore's AWSRequest would build a whole
    prepared request each time its `body` is read: a third of a check's time, measured)."""
    method: str
    url: str
    headers: object     # botocore's HTTPHeaders: repeated names kept, looked up in any case
    params: list[tuple[str, str]]
    context: dict
    body: bytes


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for given, value in headers:
        if given == name:
            return value
    return None


def _parse_amz_date(value: str | None) -> float | None:
    match = AMZ_DATE_RE.match(value or "")
    if match is None:
        return None
    try:
        return calendar.timegm(dt.datetime(*map(int, match.groups())).timetuple())
    except ValueError:   # month 13 and the like
        return None


def _check_time(signed_at: float, amz_date: str, now: float, key: ApiKey) -> None:
    """AWS's bound on clock skew, with AWS's messages (the JavaScript SDK reads
    `InvalidSignatureException` with the answer's `Date` header to correct its clock)."""
    if abs(now - signed_at) <= MAX_SKEW_SECONDS:
        return
    stamp = lambda t: dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime(AMZ_DATE_FORMAT)
    if signed_at < now:
        message = (f"Signature expired: {amz_date} is now earlier than "
                   f"{stamp(now - MAX_SKEW_SECONDS)} ({stamp(now)} - 5 min.)")
    else:
        message = (f"Signature not yet current: {amz_date} is still later than "
                   f"{stamp(now + MAX_SKEW_SECONDS)} ({stamp(now)} + 5 min.)")
    raise SignatureRefused("InvalidSignatureException", message,
                           f"key {key.name!r}: signed {int(now - signed_at)} s from now")


def _query_pairs(query_string: str) -> list[tuple[str, str]]:
    """The query's names and values, decoded: botocore's signer encodes them again, in the
    canonical way, whatever encoding the caller sent. Decoded as the function reads them
    (a '+' is a space, as in parse_qsl: sora.gateway.function_url), so that a query signed
    with `%2B` cannot be resent with `+` to mean something else under the same signature;
    the SDKs send a space as `%20` and a '+' as `%2B`."""
    pairs = []
    for part in query_string.split("&") if query_string else ():
        name, _, value = part.partition("=")
        pairs.append((urllib.parse.unquote_plus(name), urllib.parse.unquote_plus(value)))
    return pairs
