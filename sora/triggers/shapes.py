"""The events a triggered run receives, in AWS's shapes, so Lambda code written for them runs
unchanged:

- `scheduled_event`: EventBridge's "Scheduled Event" (what a rule with a schedule expression
  sends to its Lambda target), or the trigger's `input` verbatim when given, as EventBridge's
  "constant (JSON text)" input does.
- `s3_event`: S3's event notification (`Records[0]`, event version 2.1) for a file in a watched
  folder, the bucket being the folder and the object key its path relative to the folder,
  URL-encoded as S3 encodes keys in notifications (a space as `+`, `/` kept), so the handler's
  usual `urllib.parse.unquote_plus(record["s3"]["object"]["key"])` gives the path back.
"""
from __future__ import annotations

import json
import time
import urllib.parse

from ..config import FileTrigger, FunctionConfig, ScheduleTrigger
from ..runtimes.base import ACCOUNT, DEFAULT_REGION

CREATED = "ObjectCreated:Put"
REMOVED = "ObjectRemoved:Delete"
# S3's principal ids in a notification are the caller's and the bucket owner's; Sora has one
# account and no callers: fixed stand-ins of S3's form.
PRINCIPAL = "SORA"
SOURCE_IP = "127.0.0.1"


def function_region(fn: FunctionConfig) -> str:
    """The region a function's ARNs name: its `AWS_REGION` if its env sets one, else Sora's."""
    return fn.env.get("AWS_REGION") or DEFAULT_REGION


def rule_arn(fn_name: str, trigger: ScheduleTrigger, region: str) -> str:
    """The ARN naming a schedule trigger, as an EventBridge rule's (`resources[0]`)."""
    return f"arn:aws:events:{region}:{ACCOUNT}:rule/{fn_name}-schedule-{trigger.index}"


def utc_seconds(when: float) -> str:
    """EventBridge's `time`: UTC to the second, `2026-12-01T09:00:00Z`."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def utc_millis(when: float) -> str:
    """S3's `eventTime`: UTC to the millisecond, `2026-12-01T09:00:00.123Z`."""
    whole = int(when)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + \
        ".%03dZ" % min(999, int(round((when - whole) * 1000)))


def scheduled_event(fn_name: str, trigger: ScheduleTrigger, due: float, region: str,
                    event_id: str) -> bytes:
    """The payload of one firing of `trigger` due at `due`."""
    if trigger.input is not None:
        return json.dumps(trigger.input).encode()
    return json.dumps({
        "version": "0",
        "id": event_id,
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": utc_seconds(due),
        "region": region,
        "resources": [rule_arn(fn_name, trigger, region)],
        "detail": {},
    }).encode()


def object_key(relpath: str) -> str:
    """S3's notification encoding of an object key: form-encoded (a space is `+`, a `+` is
    `%2B`, non-ASCII as UTF-8 `%XX`), the `/` between folders kept."""
    return urllib.parse.quote_plus(relpath, safe="/")


def s3_event(trigger: FileTrigger, event_name: str, key: str, size: int | None,
             etag: str | None, sequencer: str, event_time: float, region: str) -> bytes:
    """The notification of one settled change to the file `key` (its path relative to the
    watched folder, not encoded) in `trigger`'s folder. Deletes carry no size nor eTag, as
    S3's own."""
    bucket = trigger.bucket_name
    obj: dict = {"key": object_key(key)}
    if event_name != REMOVED:
        obj["size"] = size
        obj["eTag"] = etag
    obj["sequencer"] = sequencer
    return json.dumps({"Records": [{
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": utc_millis(event_time),
        "eventName": event_name,
        "userIdentity": {"principalId": PRINCIPAL},
        "requestParameters": {"sourceIPAddress": SOURCE_IP},
        "responseElements": {"x-amz-request-id": sequencer, "x-amz-id-2": sequencer},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": f"sora-file-{trigger.index}",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": PRINCIPAL},
                       "arn": f"arn:aws:s3:::{bucket}"},
            "object": obj,
        },
    }]}).encode()
