"""gunicorn settings for one Sora listener, from the host config.

The supervisor runs one gunicorn master per listener (plain HTTP and HTTPS), because gunicorn
applies TLS to every socket it binds. Each reads $SORA_CONFIG (the host config) and
$SORA_LISTENER (`http` or `https`). `deploy/gunicorn.conf.py` imports this module, so running
the gateway by hand uses the same settings:

    SORA_CONFIG=host-config.yaml SORA_LISTENER=https \\
        gunicorn -c deploy/gunicorn.conf.py 'sora.gateway.app:create_app()'

Under the supervisor, the listener's socket is already bound (sora.supervisor.listeners) and
passed as $SORA_LISTEN_FD; run by hand, gunicorn binds the configured port itself.
"""
import math
import os
import ssl

from sora.config import load_host_config
# Imported under private names: gunicorn reads this module's public names as its settings
# (`protocol` is one).
from sora.gateway import draining as _draining
from sora.gateway.reason_phrases import install as _install_reason_phrases
from sora.gateway.request_tail import guard_request_tail
from sora.gateway.slow_clients import guard_slow_clients
from sora.hotpath import quiet_gc
from sora.parent_death import die_with_parent
from sora.protocol import gateway_ready_path as _gateway_ready_path

_config = load_host_config(os.environ["SORA_CONFIG"], read_functions=False)  # server only
_server = _config.server
_listener = os.environ.get("SORA_LISTENER", "https" if _server.httpPort is None else "http")
_port = _server.httpsPort if _listener == "https" else _server.httpPort
if _port is None:
    raise SystemExit(f"{_config.path}: server.{_listener}Port is not set")
_host = f"[{_server.bind}]" if ":" in _server.bind else _server.bind

wsgi_app = "sora.gateway.app:create_app()"
worker_class = "asgi"
workers = _server.gatewayWorkers
_listen_fd = os.environ.get("SORA_LISTEN_FD")
bind = [f"fd://{_listen_fd}"] if _listen_fd else [f"{_host}:{_port}"]
proc_name = f"sora-gateway-{_listener}"
graceful_timeout = max(1, round(_server.gracefulTimeout))
# Idle keep-alive connections hold up a graceful stop until they time out: keep it short.
keepalive = 2
# Request line and headers: at most 100 fields of 8 KiB (431 past either).
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
# A function's answer being written that stalls this long is dropped. A stalled request body
# is answered 408 by the gateway itself after `server.bodyTimeout` (sora.gateway.requests);
# gunicorn's own body wait (which would end the body quietly) is kept longer than that.
timeout = max(30, math.ceil(_server.bodyTimeout) + 5)
backlog = 2048
accesslog = None
errorlog = "-"
loglevel = "warning"

if _listener == "https":
    certfile = _server.sslCertPath
    keyfile = _server.sslKeyPath


def ssl_context(conf, default_ssl_context_factory):
    """TLS 1.2 minimum; forward-secret AEAD suites only (TLS 1.3's are all AEAD)."""
    context = default_ssl_context_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    return context


def post_fork(server, worker):
    """A worker dies with its master, as the master dies with the supervisor (PDEATHSIG does
    not pass through a fork): a worker left without them serves calls nothing answers.
    gunicorn's own check of the parent pid comes only on the worker's next heartbeat (up to
    ~11 s were measured after a kill -9 of the supervisor)."""
    die_with_parent(server.pid)


_install_reason_phrases()   # here, in the master: the workers it forks inherit it


def post_worker_init(worker):
    _draining.watch(worker)   # endless answers (the live log tail) end on a graceful stop
    guard_slow_clients(_server.headerTimeout)
    guard_request_tail()
    quiet_gc()
    if _listen_fd:
        # Tells the supervisor this listener's gateway answers (protocol.gateway_ready_path).
        with open(_gateway_ready_path(_config.stateDir, _listener), "w"):
            pass
