import base64
import json

import pytest

from sora.function_response import BadFunctionResponse, map_result
from sora.gateway.function_url import build_event


def event(**kw):
    args = dict(method="GET", raw_path="/", query_string="", raw_headers=[], body=b"",
                source_ip="10.0.0.1", http_version="1.1", request_id="rid", function="fn")
    args.update(kw)
    return json.loads(build_event(**args))


def test_headers_are_lower_cased_and_repeated_ones_joined():
    e = event(raw_headers=[(b"X-A", b"1"), (b"x-a", b"2"), (b"Host", b"example.com:8443")])
    assert e["headers"] == {"x-a": "1,2", "host": "example.com:8443"}
    assert e["requestContext"]["domainName"] == "example.com"
    assert e["requestContext"]["domainPrefix"] == "example"


def test_cookies_are_split_out_of_headers():
    e = event(raw_headers=[(b"cookie", b"a=1; b=2"), (b"cookie", b"c=3")])
    assert e["cookies"] == ["a=1", "b=2", "c=3"] and "cookie" not in e["headers"]


def test_text_and_binary_bodies():
    assert event(body=b"hi", raw_headers=[(b"content-type", b"text/plain")])["body"] == "hi"
    e = event(body=b"\xff\x00", raw_headers=[(b"content-type", b"text/plain")])
    assert e["isBase64Encoded"] and base64.b64decode(e["body"]) == b"\xff\x00"
    e = event(body=b"abc", raw_headers=[(b"content-type", b"image/png")])
    assert e["isBase64Encoded"] and base64.b64decode(e["body"]) == b"abc"
    e = event(body=b'{"a":1}', raw_headers=[(b"content-type", b"application/vnd.api+json")])
    assert e["body"] == '{"a":1}' and not e["isBase64Encoded"]


def test_query_parameters():
    e = event(query_string="a=1&a=2&b=x%20y&c")
    assert e["queryStringParameters"] == {"a": "1,2", "b": "x y", "c": ""}
    assert e["rawQueryString"] == "a=1&a=2&b=x%20y&c"


def test_plain_values_pass_through_untouched():
    raw = b'{"message":"hi"}'
    out = map_result(raw)
    assert out.status == 200 and out.body is raw and out.content_type == "application/json"


def test_structured_response():
    out = map_result(json.dumps({"statusCode": 302, "headers": {"Location": "/x", "n": 1},
                                 "cookies": ["a=1"], "body": ""}).encode())
    assert out.status == 302
    assert ("Location", "/x") in out.headers and ("n", "1") in out.headers
    assert ("Set-Cookie", "a=1") in out.headers
    assert out.content_type == "application/json"


def test_structured_response_with_content_type_and_base64():
    out = map_result(json.dumps({"statusCode": 200, "headers": {"Content-Type": "image/gif"},
                                 "body": base64.b64encode(b"GIF").decode(),
                                 "isBase64Encoded": True}).encode())
    assert out.body == b"GIF" and out.content_type is None


def test_nested_status_code_is_not_a_response():
    raw = json.dumps({"data": {"statusCode": 500}}).encode()
    assert map_result(raw).status == 200 and map_result(raw).body == raw


@pytest.mark.parametrize("bad", [{"statusCode": "x"}, {"statusCode": 99},
                                 {"statusCode": 200, "headers": []},
                                 {"statusCode": 200, "body": "%%", "isBase64Encoded": True}])
def test_bad_structured_responses(bad):
    with pytest.raises(BadFunctionResponse):
        map_result(json.dumps(bad).encode())


def test_the_event_is_one_line_of_utf8_json_and_keeps_any_text():
    raw = build_event(method="POST", raw_path="/ä", query_string="q=%C3%A9",
                      raw_headers=[(b"x-name", "Zoë".encode("latin-1")),
                                   (b"content-type", b"text/plain; charset=utf-8")],
                      body="line 1\nłódź \u2028 😀".encode(), source_ip="::1",
                      http_version="1.1", request_id="rid", function="fn")
    assert b"\n" not in raw   # the worker passes it to the runtime as one line
    e = json.loads(raw.decode("utf-8"))
    assert e["body"] == "line 1\nłódź \u2028 😀" and e["isBase64Encoded"] is False
    assert e["headers"]["x-name"] == "Zoë" and e["rawPath"] == "/ä"
    assert e["queryStringParameters"] == {"q": "é"}


def test_hidden_headers_are_left_out_of_the_event():
    e = event(raw_headers=[(b"Authorization", b"Bearer k"), (b"X-Api-Key", b"k"),
                           (b"X-Other", b"1")], hidden=frozenset({"authorization", "x-api-key"}))
    assert e["headers"] == {"x-other": "1"}


@pytest.mark.parametrize("name,value", [("X-A\r\nB", "1"), ("X-A\x00", "1"), ("X A", "1"),
                                        (" X-A", "1"), ("X-A ", "1"), ("", "1"), ("X-A:", "1"),
                                        ("X-A", "1\r\nB: 2"), ("X-A", "1\n"), ("X-A", "\x00"),
                                        ("X-A", "\x7f"), ("X-A", "\u20ac")])
def test_headers_that_would_break_the_response_are_refused(name, value):
    with pytest.raises(BadFunctionResponse) as exc:
        map_result(json.dumps({"statusCode": 200, "headers": {name: value}}).encode())
    assert value.strip() == "" or value not in str(exc.value)   # the value is not echoed


def test_tabs_spaces_and_latin1_in_values_are_fine():
    out = map_result(json.dumps({"statusCode": 200, "headers": {
        "X-A": "a b\tc", "X-B": "caf\u00e9"}}).encode())
    assert ("X-A", "a b\tc") in out.headers and ("X-B", "caf\u00e9") in out.headers


def test_hop_by_hop_and_framing_headers_are_dropped():
    out = map_result(json.dumps({"statusCode": 200, "headers": {
        "Connection": "close", "Transfer-Encoding": "chunked", "content-length": "9",
        "X-Kept": "1"}, "multiValueHeaders": {"Keep-Alive": ["timeout=9"], "TE": ["x"]},
        "body": "hi"}).encode())
    assert out.headers == [("X-Kept", "1")] and out.body == b"hi"


def test_a_service_worker_cannot_be_given_the_whole_origin():
    """Service-Worker-Allowed would let a function's worker claim `/`, the dashboard's /ui/
    included (it shares the origin): dropped, in either header form."""
    out = map_result(json.dumps({"statusCode": 200, "headers": {
        "Service-Worker-Allowed": "/", "Content-Type": "text/javascript"},
        "multiValueHeaders": {"service-worker-allowed": ["/ui/"]}, "body": "x"}).encode())
    assert out.headers == [("Content-Type", "text/javascript")]


@pytest.mark.parametrize("raw", [b'{"statusCode":200,"body":NaN}',
                                 b'{"statusCode":200,"body":' + b"[" * 2000 + b"]" * 2000 + b"}"])
def test_a_structured_response_that_is_not_strict_json_is_refused(raw):
    with pytest.raises(BadFunctionResponse):
        map_result(raw)


@pytest.mark.parametrize("status", [100, 101, 103, 199, 600, "99"])
def test_a_status_that_is_not_a_final_response_is_refused(status):
    # 1xx: the caller would wait for a final response that never comes.
    with pytest.raises(BadFunctionResponse, match="from 200 to 599"):
        map_result(json.dumps({"statusCode": status, "body": "x"}).encode())
