"""The CLI's client of the host's Lambda management API: botocore's own, signed with SigV4.

The host's address, TLS settings and API key are found as for every other command
(sora.cli.host.Host.from_args). SigV4 also needs the key's *name*, the access key id
(sora.gateway.sigv4): `--key-name`, else $SORA_API_KEY_NAME, else the name the host config
gives that key (when the config is at hand and readable), else $AWS_ACCESS_KEY_ID (what
`eval "$(sora keys NAME)"` exports). A host with no API keys takes any credentials.
"""
from __future__ import annotations

import contextlib
import hmac
import json
import os

from ..config import ConfigError, load_host_config
from .host import ApiError, CliError, Host, HostDown, config_path

# What a host without API keys is sent: it takes any credentials.
OPEN_HOST_CREDENTIALS = ("sora", "sora")
DEFAULT_REGION = "us-east-1"


def credentials(args) -> tuple[str, str]:
    """(access key id, secret access key) for SigV4."""
    secret = args.api_key or os.environ.get("SORA_API_KEY")
    if secret is None and os.environ.get("AWS_ACCESS_KEY_ID"):
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not secret:
        return OPEN_HOST_CREDENTIALS
    name = getattr(args, "key_name", None) or os.environ.get("SORA_API_KEY_NAME") or \
        _name_in_config(args, secret) or os.environ.get("AWS_ACCESS_KEY_ID")
    if not name:
        raise CliError("cannot tell the API key's name, which signing a management call "
                       "needs (it is the access key id): pass --key-name NAME, set "
                       "SORA_API_KEY_NAME, or `eval \"$(sora keys NAME)\"`", 2)
    return name, secret


def _name_in_config(args, secret: str) -> str | None:
    path = config_path(args.config)
    if path is None:
        return None
    try:
        keys = load_host_config(path, read_functions=False).apiKeys
    except (ConfigError, OSError):
        return None       # not ours to read, or not this host's: the other sources remain
    for key in keys:
        if key.secret and hmac.compare_digest(key.secret.encode(), secret.encode()):
            return key.name
    return None


def lambda_client(args, host: Host | None = None):
    """A botocore Lambda client for the host `args` name."""
    import botocore.session
    from botocore.config import Config
    host = host or Host.from_args(args)
    key_id, secret = credentials(args)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or \
        DEFAULT_REGION
    session = botocore.session.get_session()
    verify = False if host.insecure else (host.cafile or None)
    if verify is False:
        import urllib3
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    # No retries: a management call that failed is reported, not made again behind the
    # user's back (an UpdateFunctionCode retried after a read timeout would upload twice).
    config = Config(retries={"max_attempts": 0}, connect_timeout=min(host.timeout, 30),
                    read_timeout=host.timeout)
    client = session.create_client("lambda", region_name=region, endpoint_url=host.url,
                                   aws_access_key_id=key_id, aws_secret_access_key=secret,
                                   verify=verify, config=config)
    client.sora_url = host.url
    return client


@contextlib.contextmanager
def api_errors(url: str):
    """botocore's exceptions as the CLI's: an API error (exit 1), a host that cannot be
    reached (exit 3), parameters the API's model refuses (exit 2)."""
    from botocore import exceptions as bx
    try:
        yield
    except bx.ClientError as exc:
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        raise ApiError(status, error.get("Code") or "Error", error.get("Message") or "") \
            from None
    except bx.ReadTimeoutError:
        raise CliError(f"the Sora host at {url} took the call but did not answer within "
                       "--timeout; it may still be done (see `sora ls`)", 3) from None
    except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.SSLError,
            bx.ConnectionClosedError) as exc:
        raise HostDown(url, str(exc)) from None
    except bx.ParamValidationError as exc:
        raise CliError(str(exc), 2) from None


def raw_answer(client, operation: str, **params) -> tuple[dict, dict]:
    """(botocore's parsed answer, the JSON body as sent): for fields Sora adds that Lambda's
    model does not have, which botocore's parser leaves out."""
    kept = {}
    event = f"after-call.lambda.{operation}"

    def keep(http_response, **_):
        kept["body"] = http_response.content
    client.meta.events.register(event, keep)
    try:
        method = getattr(client, _snake(operation))
        parsed = method(**params)
    finally:
        client.meta.events.unregister(event, keep)
    try:
        raw = json.loads(kept.get("body") or b"{}")
    except ValueError:
        raw = {}
    return parsed, raw if isinstance(raw, dict) else {}


def _snake(operation: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in operation).lstrip("_")
