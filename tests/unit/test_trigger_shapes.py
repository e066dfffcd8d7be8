"""sora.triggers.shapes: the events pinned to AWS's shapes (EventBridge's Scheduled Event, S3's
event notification version 2.1), and a handler written for S3 gets the file's path back."""
import json
import urllib.parse

import pytest

from sora.config import FileTrigger, ScheduleTrigger
from sora.runtimes.base import ACCOUNT, DEFAULT_REGION
from sora.triggers import shapes


def test_scheduled_event_is_eventbridge_s():
    trigger = ScheduleTrigger("rate(5 minutes)", index=2)
    event = json.loads(shapes.scheduled_event("report", trigger, 1796112000.4, "eu-west-3",
                                              "5f3c-id"))
    assert event == {
        "version": "0", "id": "5f3c-id", "detail-type": "Scheduled Event",
        "source": "aws.events", "account": "000000000000", "time": "2026-12-01T08:00:00Z",
        "region": "eu-west-3",
        "resources": ["arn:aws:events:eu-west-3:000000000000:rule/report-schedule-2"],
        "detail": {}}
    assert list(event) == ["version", "id", "detail-type", "source", "account", "time",
                           "region", "resources", "detail"]      # EventBridge's order


@pytest.mark.parametrize("payload", [{"job": "nightly"}, [1, 2], "text", 0, False])
def test_input_is_sent_verbatim(payload):
    trigger = ScheduleTrigger("rate(5 minutes)", index=0, input=payload)
    assert json.loads(shapes.scheduled_event("f", trigger, 0.0, "us-east-1", "x")) == payload


def lambda_handler(event, context=None):
    """What S3-triggered Lambda code does with the event (the AWS docs' own example)."""
    record = event["Records"][0]
    return record["s3"]["bucket"]["name"], urllib.parse.unquote_plus(record["s3"]["object"]["key"])


def test_s3_event_of_a_created_file():
    trigger = FileTrigger("/srv/drop/inbox", index=1)
    event = json.loads(shapes.s3_event(trigger, shapes.CREATED, "red flower.csv", 1024,
                                       "d41d8cd98f00b204e9800998ecf8427e", "0055AED6DCD90281E5",
                                       1796112000.25, "us-east-1"))
    [record] = event["Records"]
    assert record == {
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-12-01T08:00:00.250Z", "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": shapes.PRINCIPAL},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "0055AED6DCD90281E5",
                             "x-amz-id-2": "0055AED6DCD90281E5"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "sora-file-1",
               "bucket": {"name": "inbox", "ownerIdentity": {"principalId": shapes.PRINCIPAL},
                          "arn": "arn:aws:s3:::inbox"},
               "object": {"key": "red+flower.csv", "size": 1024,
                          "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                          "sequencer": "0055AED6DCD90281E5"}}}
    assert lambda_handler(event) == ("inbox", "red flower.csv")


def test_s3_event_of_a_deleted_file_has_no_size_nor_etag():
    trigger = FileTrigger("/srv/inbox", index=0, bucket="uploads")
    record = json.loads(shapes.s3_event(trigger, shapes.REMOVED, "a.csv", None, None, "02",
                                        0.0, "us-east-1"))["Records"][0]
    assert record["eventName"] == "ObjectRemoved:Delete"
    assert record["s3"]["object"] == {"key": "a.csv", "sequencer": "02"}
    assert record["s3"]["bucket"]["name"] == "uploads"
    assert record["s3"]["bucket"]["arn"] == "arn:aws:s3:::uploads"


@pytest.mark.parametrize("relpath, key", [
    ("red flower.csv", "red+flower.csv"),
    ("a+b.csv", "a%2Bb.csv"),
    ("sub/dir/report 1.csv", "sub/dir/report+1.csv"),
    ("été/données.csv", "%C3%A9t%C3%A9/donn%C3%A9es.csv"),
    ("100% done?.txt", "100%25+done%3F.txt"),
    ("a&b=c#d.txt", "a%26b%3Dc%23d.txt"),
    ("日本語.txt", "%E6%97%A5%E6%9C%AC%E8%AA%9E.txt"),
])
def test_keys_are_encoded_as_s3_encodes_them_and_decode_back(relpath, key):
    trigger = FileTrigger("/srv/inbox", index=0)
    event = json.loads(shapes.s3_event(trigger, shapes.CREATED, relpath, 1, "e", "01", 0.0,
                                       "us-east-1"))
    assert event["Records"][0]["s3"]["object"]["key"] == key
    assert lambda_handler(event)[1] == relpath


def test_function_region_follows_the_function_s_aws_region():
    class Fn:
        env = {"AWS_REGION": "eu-west-3"}
    assert shapes.function_region(Fn()) == "eu-west-3"
    Fn.env = {}
    assert shapes.function_region(Fn()) == DEFAULT_REGION == "us-east-1"


def test_account_lives_in_one_place():
    from sora.gateway import management_api
    from sora.versions import api
    assert management_api.ACCOUNT is ACCOUNT and api.ACCOUNT is ACCOUNT
