"""The AWS Lambda Runtime API, served to one `provided` function instance.

Sora's instances all speak one line protocol (see `sora.worker.instance`). A `provided`
function speaks the Lambda Runtime API instead, so each of its instances is this process: it
serves the Runtime API on a loopback port, runs the function's executable with
AWS_LAMBDA_RUNTIME_API pointing at it, and translates between the two:

    request line on stdin        ->  the body of GET /2018-06-01/runtime/invocation/next
    POST .../{id}/response       ->  "R <id> <body>" on the control fd
    POST .../{id}/error          ->  "E <id> <error>"
    POST .../init/error          ->  "INIT <error>", then the instance ends
    first GET .../next           ->  "READY" (initialisation is over, as on Lambda)
    the executable exits         ->  this process exits with the same status

Like Lambda, it cannot see which lines of the executable's output belong to which invocation,
so it closes both log streams with a marker after each one (lines printed before the result was
posted belong to that invocation).

One thread and one selector loop over stdin, the listening socket, the runtime's connections and
a pidfd of the executable; httptools (the C HTTP/1.1 parser uvicorn uses) reads the requests.
The runtime is the only client and reads every response, so responses are written blocking.

Only the instance's own processes may use its Runtime API: any other function with the host's
network can reach 127.0.0.1, so each accepted connection's peer must be a process of this
instance (`peers.py` beside this file says how and why), else it gets 403 and is closed. One
GET .../next waits at a time: a second, while the first is still open, gets 409 and the first
keeps its place (replacing it would let a newcomer take the next invocation).

Container mode (a Lambda container image, `package: image`; SORA_CONTAINER_PID is set): the
executable is the container, already started by the worker, so nothing is spawned here.
- The listening socket is inherited (SORA_API_LISTEN_FD): with `network: false` the worker made
  it inside the container's network namespace (`sora.containers.netns_listener`, 127.0.0.1:9001,
  what the container's AWS_LAMBDA_RUNTIME_API names), with the host's network it is a loopback
  port of the host, bound before the container was created so its address is in the
  container's environment.
- The container's end is a pidfd of its init (SORA_CONTAINER_PIDFD, inherited; else opened from
  SORA_CONTAINER_PID): readable once the init has exited, and as the init of the container's
  pid namespace its exit ends every process of the container. It is not this process's child,
  so its exit status is not known here: the worker has it from the engine.
- The container's stdout and stderr are FIFOs of its channel folder (`sora.containers.channel`);
  their read ends are inherited (SORA_CONTAINER_STDOUT_FD, SORA_CONTAINER_STDERR_FD) and copied
  to this process's own stdout and stderr. Before an end marker is written they are drained:
  the runtime wrote an invocation's lines before it posted its outcome, so the marker follows
  them, as it does when the runtime's output is this process's own.
"""
import ctypes
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections import deque

import httptools
import orjson

# The adapter runs with -I (no script folder on sys.path); its helper is beside it, in Sora's
# own read-only code.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import OwnPeers  # noqa: E402

API = b"/2018-06-01/runtime"
NEXT_PATH = API + b"/invocation/next"
INIT_ERROR_PATH = API + b"/init/error"
INVOCATION_PATH = re.compile(rb"^%s/invocation/([^/?]+)/(response|error)$" % re.escape(API))
# The worker writes every request line as {"id":"<id>","timeoutMs":<n>,"event":<event>}; the
# event is passed on as it came, not parsed and encoded again.
REQUEST_LINE = re.compile(rb'^\{"id":"([^"\\]+)","timeoutMs":(\d+),"event":(.*)\}\s*$', re.S)
REQUEST_ID = re.compile(rb'^\{"id":"([^"\\ ]+)"')   # of a line REQUEST_LINE does not match
MARKER = b"\x00SORA-END %s\n"
ERROR_TYPE_HEADER = b"lambda-runtime-function-error-type"
CONTROL_FD = int(os.environ.pop("SORA_CONTROL_FD", "3"))
SANDBOXED = os.environ.pop("SORA_SANDBOXED", "") == "1"


def inherited_fd(name):
    """An fd the worker passed, named by an environment variable, or None."""
    value = os.environ.pop(name, "")
    return int(value) if value else None


CONTAINER_PID = inherited_fd("SORA_CONTAINER_PID")   # a pid, not an fd: the same parsing
CONTAINER_PIDFD = inherited_fd("SORA_CONTAINER_PIDFD")
CONTAINER_NETWORK = os.environ.pop("SORA_CONTAINER_NETWORK", "none")
LISTEN_FD = inherited_fd("SORA_API_LISTEN_FD")
CONTAINER_OUTPUT = {fd: out for fd, out in ((inherited_fd("SORA_CONTAINER_STDOUT_FD"), 1),
                                            (inherited_fd("SORA_CONTAINER_STDERR_FD"), 2))
                    if fd is not None}
EXECUTABLE = os.environ.pop("SORA_ENTRYPOINT", None)
RUN_AS = inherited_fd("SORA_RUN_AS_UID")   # a uid: the same parsing
FUNCTION_ARN = "arn:aws:lambda:%s:000000000000:function:%s" % (
    os.environ.get("AWS_REGION", "us-east-1"), os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))
if os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST") != "$LATEST":   # a version's
    FUNCTION_ARN += ":" + os.environ["AWS_LAMBDA_FUNCTION_VERSION"]


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def one_line(body):
    """A response body as one protocol line of valid JSON: JSON keeps its value (newlines in
    it can only be whitespace); any other text becomes a JSON string. That includes NaN and
    Infinity, which json.loads would take but no JSON parser of the caller's accepts: orjson
    is strict (and ~1 µs for a small body)."""
    if not body:
        return b"null"
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return orjson.dumps(body.decode("utf-8", "replace"))
    if b"\n" not in body and b"\r" not in body:
        return body
    return body.replace(b"\r", b" ").replace(b"\n", b" ")


def error_line(body, error_type):
    """An error the runtime posted, in Lambda's shape whatever the runtime sent."""
    try:
        error = json.loads(body) if body else {}
    except ValueError:
        error = {"errorMessage": body.decode("utf-8", "replace")}
    if not isinstance(error, dict):
        error = {"errorMessage": json.dumps(error)}
    error.setdefault("errorType", error_type or "Runtime.Unknown")
    error.setdefault("errorMessage", "The runtime reported an error without a message")
    error.setdefault("stackTrace", [])
    return json.dumps(error, separators=(",", ":")).encode()


def http_response(status, body, headers=b""):
    reason = {200: b"OK", 202: b"Accepted", 400: b"Bad Request", 403: b"Forbidden",
              404: b"Not Found", 409: b"Conflict"}[status]
    return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status, reason, len(body), headers, body)


def refuse(sock):
    """Answer a connection from outside the instance with 403 and close it at once: nothing of
    it is kept, so connecting often cannot use up the adapter's descriptors."""
    try:
        sock.setblocking(False)
        sock.send(http_response(403, b'{"errorType":"AccessDeniedException","errorMessage":'
                                     b'"the Runtime API serves only its own instance"}'))
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1 << 16)   # what it sent already: closing with it unread would reset
    except OSError:
        pass
    sock.close()


class Connection:
    """One connection from the runtime; httptools calls back as a request is parsed."""

    def __init__(self, server, sock):
        self.server = server
        self.sock = sock
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body = []
        self.error_type = None

    def on_message_begin(self):
        self.url, self.body, self.error_type = b"", [], None

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        if name.lower() == ERROR_TYPE_HEADER:
            self.error_type = value.decode("latin-1")

    def on_body(self, body):
        self.body.append(body)

    def on_message_complete(self):
        self.server.handle(self, self.parser.get_method(), self.url, b"".join(self.body))

    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError:
            self.server.drop(self)


class AnyPeer:
    """The peer check of a container with no network (`network: false`): the listening socket
    is in the container's own network namespace, where there is nothing but the container's
    loopback and the container's processes. Nothing outside the container can connect: another
    function's processes (sandboxed, unconfined or in another container) and the host's are in
    other network namespaces, and entering this one takes CAP_SYS_ADMIN over it (root on the
    host, trusted). So whoever connects is the container, and no /proc is read."""

    def is_own(self, sock):
        return True


class ContainerExit:
    """The container as the loop's child: its init's pidfd, signalled through the pidfd (never
    by a pid that may have been reused)."""

    def __init__(self, pidfd):
        self.pidfd = pidfd

    def send(self, sig):
        try:
            signal.pidfd_send_signal(self.pidfd, sig)
        except (ProcessLookupError, PermissionError):
            pass   # exited already (or, unprivileged, not ours: the worker kills it)

    def terminate(self):
        # The init of a pid namespace ignores the signals it has no handler for, even
        # SIGTERM (the RICs set none): only SIGKILL ends it from outside.
        self.send(signal.SIGKILL)

    kill = terminate


class RuntimeApi:
    def __init__(self):
        self.selector = selectors.DefaultSelector()
        if LISTEN_FD is not None:
            self.listener = socket.socket(fileno=LISTEN_FD)
        else:
            self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        if CONTAINER_PID is not None and CONTAINER_NETWORK == "none":
            self.peers = AnyPeer()
        elif CONTAINER_PID is not None:
            # The host's network: any process on it can reach the port, so the peer must be
            # one of the container's, which are its init and the init's descendants (its pid
            # namespace reparents orphans to that init), as the host's /proc sees them.
            self.peers = OwnPeers(False, container_init=CONTAINER_PID)
        else:
            self.peers = OwnPeers(SANDBOXED)
        for fd in CONTAINER_OUTPUT:
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ, "output")
        self.requests = deque()        # (id, timeout ms, event) not yet handed out
        self.stdin_buf = b""
        self.waiting = None            # a connection whose GET .../next is parked
        self.current = None            # request id the runtime is working on
        self.ready = False
        self.child = None
        self.ended = False

    @property
    def address(self):
        return "127.0.0.1:%d" % self.listener.getsockname()[1]

    # --- the worker's side -------------------------------------------------------------------
    def read_stdin(self):
        chunk = os.read(0, 1 << 20)
        if not chunk:
            # The worker closed our stdin: it is done with this instance (or gone).
            self.selector.unregister(0)
            self.child.terminate()
            return
        data = self.stdin_buf + chunk
        *lines, self.stdin_buf = data.split(b"\n")
        for line in lines:
            if line.strip():
                self.requests.append(line)
        self.hand_out()

    def hand_out(self):
        while self.waiting is not None and self.requests:
            line = self.requests.popleft()
            match = REQUEST_LINE.match(line)
            if match is None:
                # Answered here; the runtime never sees a request it could not parse.
                found = REQUEST_ID.match(line)
                self.control(b"E %s %s" % (found.group(1) if found else b"-", error_line(
                    b'{"errorType": "Runtime.InvalidEvent", '
                    b'"errorMessage": "Malformed request line"}', None)))
                continue
            request_id, timeout_ms, event = match.groups()
            conn, self.waiting = self.waiting, None
            self.current = request_id
            deadline = int(time.time() * 1000) + int(timeout_ms)
            conn.send(http_response(200, event, b"".join((
                b"Lambda-Runtime-Aws-Request-Id: %s\r\n" % request_id,
                b"Lambda-Runtime-Deadline-Ms: %d\r\n" % deadline,
                b"Lambda-Runtime-Invoked-Function-Arn: %s\r\n" % FUNCTION_ARN.encode(),
                b"Lambda-Runtime-Trace-Id: Root=1-%08x-%s;Sampled=0\r\n" % (
                    int(time.time()), request_id.replace(b"-", b"")[:24])))))

    def control(self, line):
        write_all(CONTROL_FD, line + b"\n")

    # --- the runtime's side ------------------------------------------------------------------
    def accept(self):
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        if not self.peers.is_own(sock):
            refuse(sock)
            return
        sock.setblocking(True)
        # Small responses and requests: send each at once rather than wait for ACKs.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.selector.register(sock, selectors.EVENT_READ, Connection(self, sock))

    def read(self, conn):
        try:
            data = conn.sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self.drop(conn)
            return
        try:
            conn.parser.feed_data(data)
        except httptools.HttpParserError:
            conn.send(http_response(400, b'{"errorType":"BadRequest","errorMessage":'
                                         b'"malformed HTTP request"}'))
            self.drop(conn)

    def drop(self, conn):
        if self.waiting is conn:
            self.waiting = None
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def still_open(self, conn):
        """Whether the runtime still holds `conn` open (one it closed to ask again on a new one
        may not have been read as closed yet)."""
        try:
            if conn.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                self.drop(conn)
                return False
        except BlockingIOError:
            pass
        except OSError:
            self.drop(conn)
            return False
        return True

    def handle(self, conn, method, url, body):
        if method == b"GET" and url == NEXT_PATH:
            if self.waiting not in (None, conn) and self.still_open(self.waiting):
                conn.send(http_response(409, b'{"errorType":"Runtime.ConcurrentNext",'
                                             b'"errorMessage":"another GET /invocation/next is '
                                             b'already waiting"}'))
                return
            if not self.ready:
                self.ready = True
                self.control(b"READY")  # initialisation is over, as on Lambda
            self.waiting = conn
            self.hand_out()
            return
        if method == b"POST" and url == INIT_ERROR_PATH:
            self.control(b"INIT " + error_line(body, conn.error_type))
            conn.send(http_response(202, b'{"status":"OK"}'))
            # As on Lambda, a runtime that failed to initialise is not given work: end it.
            self.child.kill()
            return
        match = INVOCATION_PATH.match(url) if method == b"POST" else None
        if match is None:
            route = json.dumps("no route %s %s" % (method.decode(), url.decode("latin-1")))
            conn.send(http_response(404, b'{"errorType":"NotFound","errorMessage":%s}'
                                    % route.encode()))
            return
        request_id, kind = match.groups()
        if request_id != self.current:
            conn.send(http_response(400, b'{"errorType":"InvalidRequestID","errorMessage":'
                                         b'"not the invocation in progress"}'))
            return
        self.current = None
        # The runtime printed this invocation's lines before it posted the outcome.
        self.copy_output()
        marker = MARKER % request_id
        os.write(1, marker)
        os.write(2, marker)
        # Each answer names its request (the worker takes it only for the one running).
        if kind == b"response":
            self.control(b"R %s %s" % (request_id, one_line(body)))
        else:
            self.control(b"E %s %s" % (request_id, error_line(body, conn.error_type)))
        conn.send(http_response(202, b'{"status":"OK"}'))

    # --- a container's output ----------------------------------------------------------------
    def copy_output(self, fds=None):
        """Copy what the container has written to its stdout and stderr FIFOs to this process's
        own (all of it that is there now). A FIFO whose writers have all closed is done with,
        but only when the selector says so: before the container has opened it for writing,
        reading finds no writer either."""
        for fd in fds or list(CONTAINER_OUTPUT):
            while True:
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    break
                except OSError:
                    chunk = b""
                if not chunk:
                    if fds is not None:
                        self.selector.unregister(fd)
                        CONTAINER_OUTPUT.pop(fd, None)
                        os.close(fd)
                    break
                write_all(CONTAINER_OUTPUT[fd], chunk)

    # --- the loop ----------------------------------------------------------------------------
    def run(self, child, pidfd=None):
        self.child = child
        if pidfd is None:
            pidfd = os.pidfd_open(child.pid)
        self.selector.register(pidfd, selectors.EVENT_READ, "exit")
        os.set_blocking(0, False)
        self.selector.register(0, selectors.EVENT_READ, "stdin")
        while True:
            for key, _ in self.selector.select():
                what = key.data
                if what == "exit":
                    if isinstance(child, ContainerExit):
                        # Every writer of its FIFOs is gone with it: what is left is its last.
                        self.copy_output()
                        return 1
                    return child.wait()
                if what == "output":
                    self.copy_output([key.fd])
                elif what == "stdin":
                    try:
                        self.read_stdin()
                    except BlockingIOError:
                        pass
                elif what == "accept":
                    self.accept()
                else:
                    self.read(what)


def die_with_parent():  # in the executable's process, between fork and exec
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def drop_privileges(uid):
    """Become the container's own unprivileged uid (the worker, which starts the adapter, is
    root): this process reads HTTP from the function's code. As that uid it can still do all
    it needs: signal the container's init (the same uid), read its processes' /proc/<pid>/fd
    for the peer check (the same uid, and they are not set-uid), and use the descriptors it
    was given. The container's processes cannot reach it in turn: their pid namespace does not
    show it. no_new_privs: nothing it could exec regains privileges."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)   # PR_SET_NO_NEW_PRIVS


def main_container():
    """Container mode: serve the container the worker started, until its init exits. It exits
    with status 1 then (its own status is the engine's to tell), or when it is killed."""
    if RUN_AS is not None and os.geteuid() == 0 and RUN_AS != 0:
        drop_privileges(RUN_AS)
    # Started without a preexec_fn (perhaps by the worker's container thread): the death
    # signal is set here (after the uid changed, which clears it), then the parent checked,
    # so a worker that died meanwhile is seen.
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    parent = os.environ.pop("SORA_PARENT_PID", "")
    if parent and os.getppid() != int(parent):
        return 1
    api = RuntimeApi()
    pidfd = CONTAINER_PIDFD if CONTAINER_PIDFD is not None else os.pidfd_open(CONTAINER_PID)
    return api.run(ContainerExit(pidfd), pidfd)


def main():
    if CONTAINER_PID is not None:
        return main_container()
    api = RuntimeApi()
    env = dict(os.environ)
    env["AWS_LAMBDA_RUNTIME_API"] = api.address
    try:
        # The worker's request lines stay here: the executable's stdin is empty.
        child = subprocess.Popen([EXECUTABLE], env=env, stdin=subprocess.DEVNULL,
                                 preexec_fn=die_with_parent)
    except OSError as exc:
        api.control(b"INIT " + error_line(json.dumps({
            "errorType": "Runtime.InvalidEntrypoint",
            "errorMessage": "Cannot run %s: %s" % (EXECUTABLE, exc.strerror)}).encode(), None))
        return 1
    code = api.run(child)
    if code < 0:
        # Die of the same signal, so the worker reports what really ended the runtime.
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main())
