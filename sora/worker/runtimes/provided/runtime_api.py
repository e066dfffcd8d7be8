"""The AWS Lambda Runtime API, served to one `provided` function instance.

Sora's instances all speak one line protocol (see `sora.worker.instance`). A `provided`
function speaks the Lambda Runtime API instead, so each of its instances is this process: it
serves the Runtime API on a loopback port, runs the function's executable with
AWS_LAMBDA_RUNTIME_API pointing at it, and translates between the two:

    request line on stdin        ->  the body of GET /2018-06-01/runtime/invocation/next
    POST .../{id}/response       ->  "R <body>" on the control fd
    POST .../{id}/error          ->  "E <error>"
    POST .../init/error          ->  "INIT <error>", then the instance ends
    first GET .../next           ->  "READY" (initialisation is over, as on Lambda)
    the executable exits         ->  this process exits with the same status

Like Lambda, it cannot see which lines of the executable's output belong to which invocation,
so it closes both log streams with a marker after each one (lines printed before the result was
posted belong to that invocation).

Standard library only: it runs on the Python that runs Sora, with nothing imported from Sora.
"""
import ctypes
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API = "/2018-06-01/runtime"
INVOCATION_PATH = re.compile(r"^%s/invocation/([^/]+)/(response|error)$" % API)
MARKER = b"\x00SORA-END %s\n"
CONTROL_FD = int(os.environ.pop("SORA_CONTROL_FD", "3"))
EXECUTABLE = os.environ.pop("SORA_ENTRYPOINT")


def write_control(data):
    view = memoryview(data)
    while view:
        view = view[os.write(CONTROL_FD, view):]


def one_line(body):
    """A response body as one protocol line: valid JSON keeps its value (newlines in it can
    only be whitespace); any other text becomes a JSON string."""
    if b"\n" not in body and b"\r" not in body:
        return body or b"null"
    try:
        json.loads(body)
    except ValueError:
        return json.dumps(body.decode("utf-8", "replace")).encode()
    return body.replace(b"\r", b" ").replace(b"\n", b" ")


def error_line(body, header_type):
    """An error the runtime posted, in Lambda's shape whatever the runtime sent."""
    try:
        error = json.loads(body) if body else {}
    except ValueError:
        error = {"errorMessage": body.decode("utf-8", "replace")}
    if not isinstance(error, dict):
        error = {"errorMessage": json.dumps(error)}
    error.setdefault("errorType", header_type or "Runtime.Unknown")
    error.setdefault("errorMessage", "The runtime reported an error without a message")
    error.setdefault("stackTrace", [])
    return json.dumps(error, separators=(",", ":")).encode()


class Invocations:
    """The hand-over between the worker's lines on stdin and the runtime's HTTP calls."""

    def __init__(self):
        self.waiting = queue.Queue()
        self.lock = threading.Lock()
        self.current = None       # request id the runtime is working on
        self.child = None         # the function's executable (subprocess.Popen)
        self.ready = False
        self.function_arn = "arn:aws:lambda:%s:000000000000:function:%s" % (
            os.environ.get("AWS_REGION", "us-east-1"), os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))

    def read_requests(self, stream):
        for line in stream:
            if line.strip():
                self.waiting.put(line)
        # The worker closed our stdin: it is done with this instance (or gone).
        self.waiting.put(None)
        self.child.terminate()

    def next(self):
        """Block until there is an invocation; return (id, deadline ms, event bytes)."""
        with self.lock:
            if not self.ready:
                self.ready = True
                write_control(b"READY\n")
        line = self.waiting.get()
        if line is None:
            self.waiting.put(None)
            return None
        try:
            request = json.loads(line)
            request_id = request["id"]
            event = json.dumps(request["event"], separators=(",", ":"), ensure_ascii=False)
        except (ValueError, KeyError, TypeError) as exc:
            # Answered here; the runtime never sees an event it could not parse.
            write_control(b"E " + error_line(json.dumps({
                "errorType": "Runtime.InvalidEvent",
                "errorMessage": "The event is not valid JSON: %s" % exc}).encode(), "") + b"\n")
            return self.next()
        with self.lock:
            self.current = request_id
        deadline = int(time.time() * 1000 + request["timeoutMs"])
        return request_id, deadline, event.encode("utf-8")

    def finish(self, request_id, line):
        with self.lock:
            if request_id != self.current:
                return False
            self.current = None
        # The runtime printed this invocation's lines before it posted the outcome.
        marker = MARKER % request_id.encode()
        os.write(1, marker)
        os.write(2, marker)
        write_control(line + b"\n")
        return True


class RuntimeApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as the runtime interface clients expect
    server_version = "Sora-RuntimeAPI"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm and
    # the client's delayed ACK hold the body back some 40 ms.
    disable_nagle_algorithm = True
    invocations = None              # set on the class before serving

    def log_message(self, format, *args):  # the runtime's logs are its own output only
        pass

    def reply(self, status, payload, headers=()):
        body = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        length = self.headers.get("Content-Length")
        if length is not None:
            return self.rfile.read(int(length))
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return b""

    def do_GET(self):
        if self.path != API + "/invocation/next":
            self.reply(404, {"errorType": "NotFound", "errorMessage": "no route " + self.path})
            return
        item = self.invocations.next()
        if item is None:
            self.reply(410, {"errorType": "ShuttingDown", "errorMessage": "instance is ending"})
            return
        request_id, deadline, event = item
        self.reply(200, event, (
            ("Lambda-Runtime-Aws-Request-Id", request_id),
            ("Lambda-Runtime-Deadline-Ms", str(deadline)),
            ("Lambda-Runtime-Invoked-Function-Arn", self.invocations.function_arn),
            ("Lambda-Runtime-Trace-Id", "Root=1-%08x-%s;Sampled=0" % (
                int(time.time()), request_id.replace("-", "")[:24])),
        ))

    def do_POST(self):
        body = self.read_body()
        if self.path == API + "/init/error":
            write_control(b"INIT " + error_line(
                body, self.headers.get("Lambda-Runtime-Function-Error-Type")) + b"\n")
            self.reply(202, {"status": "OK"})
            # As on Lambda, a runtime that failed to initialise is not given work: end it.
            self.invocations.child.kill()
            return
        match = INVOCATION_PATH.match(self.path)
        if not match:
            self.reply(404, {"errorType": "NotFound", "errorMessage": "no route " + self.path})
            return
        request_id, kind = match.groups()
        if kind == "response":
            line = b"R " + one_line(body)
        else:
            line = b"E " + error_line(body, self.headers.get("Lambda-Runtime-Function-Error-Type"))
        if not self.invocations.finish(request_id, line):
            self.reply(400, {"errorType": "InvalidRequestID",
                             "errorMessage": "%s is not the invocation in progress" % request_id})
            return
        self.reply(202, {"status": "OK"})


def die_with_parent():  # in the executable's process, between fork and exec
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def main():
    invocations = Invocations()
    RuntimeApiHandler.invocations = invocations
    server = ThreadingHTTPServer(("127.0.0.1", 0), RuntimeApiHandler)
    server.daemon_threads = True
    env = dict(os.environ)
    env["AWS_LAMBDA_RUNTIME_API"] = "127.0.0.1:%d" % server.server_address[1]
    # The worker's request lines stay here; the executable's stdin is empty.
    requests = os.fdopen(os.dup(0), "rb")
    try:
        child = subprocess.Popen([EXECUTABLE], env=env, stdin=subprocess.DEVNULL,
                                 preexec_fn=die_with_parent)
    except OSError as exc:
        write_control(b"INIT " + error_line(json.dumps({
            "errorType": "Runtime.InvalidEntrypoint",
            "errorMessage": "Cannot run %s: %s" % (EXECUTABLE, exc.strerror)}).encode(), "")
            + b"\n")
        return 1
    invocations.child = child
    threading.Thread(target=server.serve_forever, daemon=True).start()
    threading.Thread(target=invocations.read_requests, args=(requests,), daemon=True).start()
    code = child.wait()
    if code < 0:
        # Die of the same signal, so the worker reports what really ended the runtime.
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main())
