"""The CLI's connection to a running host: where it is, the API key, and its errors.

The address comes from `--host`, else $SORA_HOST, else the host config (`--config`, else
$SORA_CONFIG, else `./host-config.yaml`): its HTTP listener, or its HTTPS one trusting the
config's own certificate. The API key comes from `--api-key`, else $SORA_API_KEY, and is sent
as `Authorization: Bearer <key>`.
"""
from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from ..config import ConfigError, load_host_config

DEFAULT_HOST = "http://127.0.0.1:8080"
DEFAULT_CONFIG = "host-config.yaml"


class CliError(Exception):
    """A failure the CLI explains in one message and an exit status."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class HostDown(CliError):
    def __init__(self, url: str, why: str):
        super().__init__(
            f"cannot reach the Sora host at {url} ({why}).\n"
            "Is it running? Start it with `make run` or `sora-supervisor start -c "
            "host-config.yaml`, or point --host / SORA_HOST at it.", exit_code=3)


class ApiError(CliError):
    def __init__(self, status: int, error_type: str, message: str):
        super().__init__(f"{error_type}: {message} (HTTP {status})")
        self.status = status
        self.error_type = error_type


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def config_path(flag: str | None) -> str | None:
    path = flag or os.environ.get("SORA_CONFIG")
    if path is None and os.path.isfile(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    return path


class Host:
    def __init__(self, url: str, api_key: str | None = None, cafile: str | None = None,
                 insecure: bool = False, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        # Kept for the clients that make their own connections (botocore: sora.cli.lambda_api).
        self.cafile = cafile
        self.insecure = insecure
        self.ssl = None
        if self.url.startswith("https:"):
            self.ssl = ssl.create_default_context(cafile=cafile)
            if insecure:
                self.ssl.check_hostname = False
                self.ssl.verify_mode = ssl.CERT_NONE

    @classmethod
    def from_args(cls, args) -> "Host":
        url = args.host or os.environ.get("SORA_HOST")
        cafile = args.cacert
        if url is None:
            path = config_path(args.config)
            if path is not None:
                try:
                    server = load_host_config(path).server
                except ConfigError as exc:
                    raise CliError(f"configuration error\n{exc}", exit_code=2) from None
                shown = "127.0.0.1" if server.bind in ("0.0.0.0", "::", "") else server.bind
                if server.httpPort is not None:
                    url = f"http://{shown}:{server.httpPort}"
                else:
                    url = f"https://{'localhost' if shown == '127.0.0.1' else shown}:" \
                          f"{server.httpsPort}"
                    cafile = cafile or server.sslCertPath
        return cls(url or DEFAULT_HOST, args.api_key or os.environ.get("SORA_API_KEY"),
                   cafile, args.insecure, args.timeout)

    def open(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None, params: dict | None = None,
             timeout: float | None = None):
        """The raw response (for streaming); raises HostDown or ApiError."""
        url = self.url + path
        if params:
            url += "?" + urllib.parse.urlencode(
                {k: v for k, v in params.items() if v is not None}, doseq=True)
        request = urllib.request.Request(url, data=body, method=method)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            return urllib.request.urlopen(request, timeout=timeout or self.timeout,
                                          context=self.ssl)
        except urllib.error.HTTPError as exc:
            raise _api_error(exc.code, exc.read()) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            why = getattr(reason, "strerror", None) or str(reason)
            raise HostDown(self.url, why.lower() if isinstance(why, str) else str(why)) \
                from None
        except (TimeoutError, ConnectionError) as exc:
            raise HostDown(self.url, str(exc) or type(exc).__name__) from None

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None, params: dict | None = None) -> Response:
        with self.open(method, path, body, headers, params) as resp:
            try:
                data = resp.read()
            except (TimeoutError, ConnectionError) as exc:
                raise HostDown(self.url, str(exc) or type(exc).__name__) from None
            return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()},
                            data)

    def get_json(self, path: str, params: dict | None = None):
        return self.call("GET", path, params=params).json()


def _api_error(status: int, body: bytes) -> ApiError:
    try:
        err = json.loads(body)
        return ApiError(status, err.get("errorType") or err.get("Type") or "Error",
                        err.get("errorMessage") or err.get("message") or "")
    except (ValueError, AttributeError):
        return ApiError(status, "Error", body[:500].decode("utf-8", "replace"))
