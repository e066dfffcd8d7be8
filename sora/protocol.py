"""Frames and message types shared by the control plane, the workers and their clients.

All messages are ZeroMQ multipart messages whose first frame is a one-byte command (Paranoid
Pirate style). Payloads travel as opaque bytes: the event JSON made by the gateway is parsed only
by the runtime, and the result JSON made by the runtime is passed back untouched.

The data path (docs/architecture.md, "Control plane and data path"): every client process (a
gateway's gunicorn worker, the dispatcher, `sora invoke --local`) opens one DEALER per worker it
knows of, to the worker's own ROUTER (`worker_data_endpoint`); no other process sees the call.

    client -> worker (DEALER -> ROUTER, the ROUTER prepends the client's identity)
        [HELLO]                             first message of a connection: asks for a window
        [REQUEST, request_id, payload, (meta)]
        [HEARTBEAT]                         every HEARTBEAT_INTERVAL while connected
        [BYE]                               the client is closing this connection
    worker -> client
        [CREDIT, delta]                     window change: the first after HELLO is the whole
                                            window, a negative one takes credits back (each
                                            client gets the same window; the calls of all
                                            clients wait in one FIFO in arrival order)
        [REPLY, request_id, status, body, (log tail)]   returns one credit
        [HEARTBEAT]                         every interval, to each client heard from lately
        [DISCONNECT]                        the worker is stopping: send nothing more (what it
                                            holds is still answered)

The control plane (`control_endpoint`, a thread in the supervisor, no per-call work):

    worker -> control (DEALER -> ROUTER, identity b"<function>/<pid>")
        [READY, function, endpoint, instances]  its data endpoint is bound and its instances up
        [GROW, n]                           asks to start n more instances (autoscaling)
        [SHRINK, n]                         has stopped n idle instances
        [HEARTBEAT, instances, held, busy, idle, starting, queued]
                                            every interval; held: invocations running +
                                            waiting; busy/idle/starting: its instances by
                                            state; queued: invocations waiting for one (what
                                            /healthz, /api/functions and /metrics show)
        [DISCONNECT]                        it is stopping (a member until it has exited)
    control -> worker
        [GRANT, k]                          may start k (<= n) instances: the function's
                                            concurrency and the host's limits allow that many
        [HEARTBEAT]
        [DISCONNECT]                        "I do not know you": announce again (READY)
    client -> control (DEALER -> ROUTER)
        [SUBSCRIBE]                         -> MEMBERS now and after every change
        [HEARTBEAT]                         every interval (an unknown client's subscribes it)
        [STATUS, request_id]                -> [REPLY, request_id, OK, health JSON]
        [WAKE, key]                         a call waits for published version `NAME:N`,
                                            which has no worker: the arbiter starts one
        [BYE]
    control -> client
        [MEMBERS, json]                     {"version": n, "functions": {name: {"available",
                                            "reason", "maxQueued", "maxWait", "workers": [{"id",
                                            "endpoint", "host", "serverKey"}]}}}
        [HEARTBEAT]                         every interval to each subscriber
        [REPLY, request_id, OK, body]       the answer to STATUS

The admin channel (`admin_endpoint`, served by the control plane thread, answered by the
arbiter; sora/control/admin.py):

    requester -> supervisor (DEALER -> ROUTER)
        [ADMIN, request_id, op, json args]  op: `reload`, `publish`, ... (Arbiter.admin_ops)
    supervisor -> requester
        [ADMIN, request_id, json answer]    the op's result, or {"error": {"type", "message"}}

A peer silent for HEARTBEAT_LIVENESS intervals is forgotten by the other side.

`meta` says how the invocation came (`meta()`): its trigger, and whether the caller wants the
tail of its log back (the Invoke API's `X-Amz-Log-Type: Tail`), which the worker then adds as
a last frame of its REPLY (base64 of the last 4 KB). A plain function URL request carries no
meta frame: that is the hot path, and one frame less per hop is measurable.
"""
from __future__ import annotations

import json
import os
import re

REQUEST = b"\x01"
REPLY = b"\x02"
READY = b"\x03"
HEARTBEAT = b"\x04"
DISCONNECT = b"\x05"
STATUS = b"\x06"
CREDIT = b"\x07"
GROW = b"\x08"
GRANT = b"\x09"
SHRINK = b"\x0a"
# The direct data path (issue 16, docs/architecture.md): clients talk to workers' own ROUTERs,
# and learn which workers serve which function from the control plane.
HELLO = b"\x0b"        # client -> worker: first message of a connection, asks for a window
BYE = b"\x0c"          # client -> worker: this connection is closing
SUBSCRIBE = b"\x0d"    # client -> control plane: send me MEMBERS now and on every change
MEMBERS = b"\x0e"      # control plane -> client: [MEMBERS, json] (see the module docstring)
# The join link between hosts (sora/cluster/link.py; docs/architecture.md, "Cluster link"):
# joined host (DEALER, CURVE client) -> main host's cluster.listen (ROUTER, CURVE server)
#     [JOIN, name, json]   announces the host and what it serves; [MEMBERS, json] on every
#                          change of it; [HEARTBEAT] every 1 s; [DISCONNECT] when leaving
# main host -> joined host
#     [HEARTBEAT] every 1 s; [DISCONNECT] "I do not know you: join again";
#     [REFUSED, reason]    the join is refused (e.g. another host already has that name)
JOIN = b"\x0f"
REFUSED = b"\x10"
# The admin channel (issue 17): [ADMIN, request_id, op, json] and its answer [ADMIN,
# request_id, json] (see the module docstring and sora/control/admin.py).
ADMIN = b"\x11"
# client -> control plane: [WAKE, key] a call waits for `NAME:N`, a published version with no
# worker: the arbiter starts one (sora.supervisor.versions). Sent at most once a second per key.
WAKE = b"\x12"

# Invocation meta: the trigger, then optional flags after "+".
TRIGGER_HTTP = b"http"          # the function URL route
TRIGGER_INVOKE = b"invoke"      # the Lambda Invoke API, RequestResponse
TRIGGER_EVENT = b"event"        # an asynchronous event, sent by the dispatcher
FLAG_TAIL = b"+tail"
LOG_TAIL_BYTES = 4096
# The largest result a function may return (Lambda's synchronous payload limit); a larger one
# is answered Sora.ResponseTooLarge. A printed line longer than MAX_LOG_LINE is cut there.
MAX_RESULT_BYTES = 6 * 1024 * 1024
MAX_LOG_LINE = 256 * 1024


def meta(trigger: bytes, tail: bool = False) -> bytes:
    return trigger + FLAG_TAIL if tail else trigger


# Heartbeats both ways; a peer silent for LIVENESS intervals is forgotten.
HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_LIVENESS = 3

# Reply status: one byte, mapped to an HTTP status by the gateway.
OK = b"0"
FUNCTION_ERROR = b"1"     # the handler threw or rejected
TIMEOUT = b"2"            # the handler ran past the function's timeout
NO_CAPACITY = b"3"        # nothing freed up within the function's timeout (a full queue is THROTTLED)
NOT_FOUND = b"4"          # no function of that name
UNAVAILABLE = b"5"        # the function exists but cannot serve (setup failed, FATAL)
RUNTIME_EXITED = b"6"     # the runtime process died while serving the invocation
WORKER_LOST = b"7"        # the worker died or fell silent while holding the invocation
INIT_ERROR = b"8"         # the function's module failed to load
BAD_REQUEST = b"9"        # the event could not be delivered as given
THROTTLED = b"T"          # the function's queue is full (its concurrency is all in use)

HTTP_STATUS = {
    OK: 200,
    FUNCTION_ERROR: 502,
    TIMEOUT: 504,
    NO_CAPACITY: 503,
    NOT_FOUND: 404,
    UNAVAILABLE: 503,
    RUNTIME_EXITED: 502,
    WORKER_LOST: 502,
    INIT_ERROR: 502,
    BAD_REQUEST: 400,
    THROTTLED: 429,
}


# What a request id may be: printable ASCII without space, quote or backslash, at most 200
# bytes (the gateways' UUIDs, the dispatcher's, `local-<hex>`). The worker writes the id into
# the JSON line it hands a runtime and into log lines as text, so an id from a peer that is
# anything else is refused (BAD_REQUEST) rather than spliced.
_REQUEST_ID = re.compile(rb"[!#-\[\]-~]{1,200}")


def valid_request_id(request_id: bytes) -> bool:
    return _REQUEST_ID.fullmatch(request_id) is not None


def error_body(error_type: str, message: str, **extra) -> bytes:
    """The JSON error every failed invocation returns: {"errorType", "errorMessage", ...}."""
    return json.dumps({"errorType": error_type, "errorMessage": message, **extra},
                      separators=(",", ":")).encode()


BAD_REQUEST_ID = error_body("Sora.BadRequest", "The request id is not printable ASCII of at "
                            "most 200 bytes without space, quote or backslash")


def parse_error(body: bytes) -> tuple[str, str]:
    """(errorType, errorMessage) of an error body, the inverse of error_body(); a body that is
    not such JSON is ("Error", its first 1,000 characters). So is one nested deeper than
    json.loads reads (RecursionError): a function's error can be (Node: an Error whose
    `message` is an array 1,500 deep), and the worker reading it died of it."""
    try:
        err = json.loads(body)
        return str(err.get("errorType") or "Error"), str(err.get("errorMessage") or "")
    except (ValueError, AttributeError, RecursionError):
        return "Error", body[:1000].decode("utf-8", "replace")


def timeout_message(seconds: float) -> str:
    return f"Task timed out after {seconds:.2f} seconds"


def worker_identity(function: str, pid: int) -> bytes:
    return f"{function}/{pid}".encode()


def identity_pid(identity: bytes) -> int | None:
    try:
        return int(identity.rsplit(b"/", 1)[1])
    except (IndexError, ValueError):
        return None


def run_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "run")


def make_run_dir(state_dir: str) -> str:
    """The run folder, mode 0700 whatever the umask or an older Sora left: every ipc endpoint
    (the control plane's, each worker's) is in it, and a socket file's own mode is not what
    guards it. No sandbox binds it (sora.isolation.sandbox binds only what a function needs)."""
    path = run_dir(state_dir)
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def control_endpoint(state_dir: str) -> str:
    """The control plane's ROUTER (workers announce themselves, clients subscribe)."""
    return "ipc://" + os.path.join(run_dir(state_dir), "control.sock")


def worker_data_endpoint(state_dir: str, pid: int) -> str:
    """A worker's own ROUTER on its host (short: an ipc path is limited to ~107 bytes)."""
    return "ipc://" + os.path.join(run_dir(state_dir), f"w-{pid}.sock")


def ipc_path(endpoint: str) -> str | None:
    """The socket file of an ipc:// endpoint (None for another transport)."""
    return endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None


def admin_endpoint(state_dir: str) -> str:
    """The supervisor's admin channel (sora.control.admin): operators' requests (`reload`,
    ...) from the CLI and the gateways. In the 0700 run folder, which no sandbox binds: a
    function can neither reach it nor steer a reload."""
    return "ipc://" + os.path.join(run_dir(state_dir), "admin.sock")


def events_endpoint(state_dir: str) -> str:
    """Where gateways nudge the dispatcher after storing an event (its socket file exists
    once the dispatcher listens)."""
    return "ipc://" + os.path.join(run_dir(state_dir), "events.sock")


def events_socket(state_dir: str) -> str:
    """The dispatcher's socket file: it exists once the dispatcher listens."""
    return events_endpoint(state_dir)[len("ipc://"):]


def gateway_ready_path(state_dir: str, listener: str) -> str:
    """Made by a gateway's gunicorn worker once it can answer (the supervisor removes it before
    it starts that listener's gateway): the listener's socket accepts connections from the
    start, so a connection succeeding says nothing about the gateway being up."""
    return os.path.join(run_dir(state_dir), f"gateway-{listener}.ready")


# A worker that cannot boot its function (the module fails to load) exits with this code after
# writing its reason to `boot_error_path`; the supervisor backs off and, after repeated failures,
# parks the function as FATAL with that reason instead of restarting it forever.
EXIT_BOOT_ERROR = 3
# A published version's worker that stayed without instances or calls for its idleTimeout
# exits with this code after draining (DISCONNECT): the supervisor forgets it rather than
# restart it, and the version's next call starts a worker again (WAKE).
EXIT_IDLE = 4


def boot_error_path(state_dir: str, function: str) -> str:
    return os.path.join(run_dir(state_dir), f"worker-{function}.boot-error")


def take_boot_error(state_dir: str, function: str) -> str | None:
    """The reason a worker wrote before exiting with EXIT_BOOT_ERROR, as "type: message"
    (the file is removed: a reason is told once), or None if there is none to read."""
    path = boot_error_path(state_dir, function)
    try:
        with open(path, "rb") as fh:
            body = json.loads(fh.read())
        os.unlink(path)
        return f"{body.get('errorType')}: {body.get('errorMessage')}"
    except (OSError, ValueError, AttributeError):
        return None
