"""sora.gateway.management_api: Lambda's request fields to sora.yaml settings, each error
naming its field."""
import base64

import pytest

from sora.deploy.zip_code import ZipLimits
from sora.gateway.invoke_api import InvokeApiError
from sora.gateway.management_api import (function_arn, language_of, parse_name, settings_of,
                                         zip_of)


@pytest.mark.parametrize("runtime,language", [
    ("nodejs18.x", "nodejs"), ("nodejs20.x", "nodejs"), ("nodejs22.x", "nodejs"),
    ("python3.9", "python"), ("python3.12", "python"), ("provided", "provided"),
    ("provided.al2", "provided"), ("provided.al2023", "provided")])
def test_runtimes(runtime, language):
    assert language_of(runtime) == language


@pytest.mark.parametrize("runtime", ["nodejs16.x", "java21", "python2.7", None, "", 3])
def test_other_runtimes_are_refused_naming_runtime(runtime):
    with pytest.raises(InvokeApiError) as caught:
        language_of(runtime)
    assert caught.value.error_type == "InvalidParameterValueException"
    assert str(caught.value).startswith("Runtime:")


def test_create_defaults_are_lambdas():
    config, fields = settings_of({"Runtime": "nodejs20.x", "Handler": "src/app.handler"},
                                 None, creating=True)
    assert config == {"language": "nodejs", "handler": "src/app.handler", "timeout": 3,
                      "memory": 128}
    assert fields == {"Runtime": "nodejs20.x", "Handler": "src/app.handler", "Description": ""}


def test_provided_needs_no_handler():
    config, _ = settings_of({"Runtime": "provided.al2023"}, None, creating=True)
    assert config["language"] == "provided" and config["handler"] == "bootstrap"


@pytest.mark.parametrize("body,field", [
    ({"Handler": "index"}, "Handler"), ({"Handler": "a b.handler"}, "Handler"),
    ({"Timeout": 0}, "Timeout"), ({"Timeout": 901}, "Timeout"), ({"Timeout": 1.5}, "Timeout"),
    ({"MemorySize": 127}, "MemorySize"), ({"MemorySize": 10241}, "MemorySize"),
    ({"Environment": {"Variables": {"1BAD": "x"}}}, "Environment.Variables"),
    ({"Environment": {"Variables": {"AWS_LAMBDA_X": "x"}}}, "Environment.Variables"),
    ({"Environment": {"Variables": {"A": 1}}}, "Environment.Variables"),
    ({"Description": "x" * 257}, "Description"),
    ({"PackageType": "Image"}, "PackageType"), ({"Layers": ["arn:x"]}, "Layers"),
])
def test_invalid_fields_are_named(body, field):
    with pytest.raises(InvokeApiError) as caught:
        settings_of({"Runtime": "nodejs20.x", "Handler": "index.handler", **body}, None,
                    creating=True)
    assert caught.value.status == 400 and str(caught.value).startswith(field + ":")


def test_an_update_changes_only_what_it_names():
    config, fields = settings_of({"Timeout": 10}, "python", creating=False)
    assert config == {"timeout": 10} and fields == {}
    with pytest.raises(InvokeApiError) as caught:
        settings_of({"Runtime": "nodejs20.x"}, "python", creating=False)
    assert str(caught.value).startswith("Runtime:")


def test_names_and_arns():
    assert parse_name("fn") == ("fn", None)
    assert parse_name("fn:live") == ("fn", "live")
    assert parse_name("arn:aws:lambda:eu-west-3:000000000000:function:fn:3") == ("fn", "3")
    with pytest.raises(InvokeApiError) as caught:
        parse_name("My_Function")
    assert str(caught.value).startswith("FunctionName:")
    assert function_arn("fn", "2", "eu-west-3") == \
        "arn:aws:lambda:eu-west-3:000000000000:function:fn:2"


def test_zip_field():
    assert zip_of(base64.b64encode(b"PK..").decode(), ZipLimits()) == b"PK.."
    with pytest.raises(InvokeApiError):
        zip_of("not base64!", ZipLimits())
    with pytest.raises(InvokeApiError):
        zip_of(None, ZipLimits())
    with pytest.raises(InvokeApiError) as caught:   # refused by its size before it is decoded
        zip_of("A" * 4000, ZipLimits(max_zipped=1000))
    assert caught.value.error_type == "RequestTooLargeException" and caught.value.status == 413
