"""Sora's Python runtime shim: one long-lived process per instance, one invocation at a time.

It speaks the same line protocol as every Sora runtime (see `sora.worker.instance`): requests
arrive one per line on stdin, `{"id", "timeoutMs", "event"}`; answers go to the file descriptor
named in SORA_CONTROL_FD (`READY`, `INIT <error>`, `R <request id> <result>`,
`E <request id> <error>`: each answer names its request, as the worker takes one only for the
invocation it is running); stdout and stderr are only logs, and a marker line closes what an
invocation printed on each stream.

This file runs on the function's own interpreter (any Python 3.8 or newer) and imports nothing
but the standard library, so the function's packages, not Sora's, are the ones it sees.
"""
import io
import itertools
import json
import logging
import os
import re
import sys
import time
import traceback



def await_assignment():
    """Standby (a container started ahead of need, sora.containers.spares): the interpreter
    has started, no function is known yet. The first line on stdin names it:
    {"cwd": folder, "env": {...}}; the process takes the function's folder and environment
    (and nothing else of its own) and carries on as if it had been started for it. The
    worker writes nothing more before this shim's READY, so the line comes alone; were
    anything after it, it is kept for the request loop (EARLY_INPUT)."""
    got = b""
    while b"\n" not in got:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            sys.exit(0)   # the worker is gone
        got += chunk
    line, _, rest = got.partition(b"\n")
    spec = json.loads(line)
    os.chdir(spec["cwd"])
    os.environ.clear()
    os.environ.update(spec["env"])
    return rest


EARLY_INPUT = await_assignment() if os.environ.get("SORA_STANDBY") == "1" else b""
os.environ.pop("SORA_STANDBY", None)
CONTROL_FD = int(os.environ.pop("SORA_CONTROL_FD", "3"))
ENTRYPOINT = os.environ.pop("SORA_ENTRYPOINT")
HANDLER_NAME = os.environ.pop("_HANDLER_EXPORT", "handler")
TASK_ROOT = os.environ.get("LAMBDA_TASK_ROOT", os.getcwd())
MARKER = b"\x00SORA-END %s\n"
# The worker writes each request line with its id first: a line that is not valid JSON still
# names the request its error answers.
REQUEST_ID = re.compile(rb'^\{"id":"([^"\\]*)"')


def write_control(data):
    view = memoryview(data)
    while view:
        view = view[os.write(CONTROL_FD, view):]


class CountingFileIO(io.FileIO):
    """An output fd that counts what went through it, so an invocation that printed nothing
    costs no marker write."""
    written = 0

    def write(self, b):
        n = super().write(b)
        if n:
            self.written += n
        return n


def log_stream(fd, line_buffering):
    # Python-level writes go through a counting file on the usual fd, which children the
    # function starts write to as well.
    raw = CountingFileIO(fd, "w", closefd=False)
    stream = io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8", errors="backslashreplace",
                              line_buffering=line_buffering)
    return raw, stream


class LambdaContext:
    """The `context` argument, with the attributes and methods Lambda's Python runtime gives."""

    def __init__(self, request_id, deadline_ms):
        self.aws_request_id = request_id
        self._deadline_ms = deadline_ms
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.invoked_function_arn = "arn:aws:lambda:%s:000000000000:function:%s" % (
            os.environ.get("AWS_REGION", "us-east-1"), self.function_name)
        if self.function_version != "$LATEST":   # a published version's: qualified
            self.invoked_function_arn += ":" + self.function_version
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self.identity = None
        self.client_context = None
        self.tenant_id = None

    def get_remaining_time_in_millis(self):
        return max(0, int(self._deadline_ms - time.time() * 1000))

    def log(self, message):
        sys.stdout.write(str(message))

    def __repr__(self):
        return ("LambdaContext([aws_request_id=%s,function_name=%s,function_version=%s,"
                "invoked_function_arn=%s])" % (self.aws_request_id, self.function_name,
                                               self.function_version, self.invoked_function_arn))


class RequestIdFilter(logging.Filter):
    request_id = None

    def filter(self, record):
        record.aws_request_id = RequestIdFilter.request_id
        return True


def install_logging():
    """Lambda's logging set-up: a handler on the root logger printing level, time and request
    id (so a later `logging.basicConfig()` does nothing, as on Lambda)."""
    handler = logging.StreamHandler(sys.stdout)
    formatter = logging.Formatter(
        "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s",
        "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = os.environ.get("AWS_LAMBDA_LOG_LEVEL")
    if level and level.upper() in logging._nameToLevel:
        root.setLevel(level.upper())


def error_payload(exc, error_type=None):
    frames = traceback.extract_tb(exc.__traceback__)
    # Frames of this shim are not the function's business (and would show the caller where
    # Sora is installed).
    frames = [f for f in frames if os.path.abspath(f.filename) != os.path.abspath(__file__)]
    return {
        "errorMessage": str(exc),
        "errorType": error_type or type(exc).__name__,
        "stackTrace": traceback.format_list(frames),
    }


# Lambda's Python runtime logs an error as one record: "[ERROR] <type>: <message>", then
# "Traceback (most recent call last):" and the frames, their indentation made of no-break
# spaces (U+00A0) so that log viewers keep it (awslambdaric's bootstrap.log_error, text format).
LOG_INDENT = "\u00a0"


def log_error(payload):
    description = "[ERROR]"
    if payload.get("errorType"):
        description += " " + payload["errorType"]
    if payload.get("errorMessage"):
        description += (":" if payload.get("errorType") else "") + " " + payload["errorMessage"]
    lines = [description, "Traceback (most recent call last):"]
    for element in payload.get("stackTrace") or []:
        for line in element.splitlines() or [""]:
            stripped = line.lstrip(" ")
            lines.append(LOG_INDENT * (len(line) - len(stripped)) + stripped)
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def folder_relative(path):
    """A path as the function's author knows it: relative to the function folder."""
    rel = os.path.relpath(os.path.abspath(path), TASK_ROOT) if path else ""
    return rel if rel and not rel.startswith("..") else os.path.basename(path or "")


def to_json(value):
    # allow_nan=False: NaN and Infinity are not JSON, and a result holding them would reach
    # the caller as a body no JSON parser accepts; they fail as Runtime.MarshalError instead,
    # like any other value that cannot be serialised.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False,
                      default=_json_default).encode("utf-8")


def _json_default(value):
    # Lambda's runtime serialises Decimal (DynamoDB numbers) as numbers.
    import decimal
    if isinstance(value, decimal.Decimal):
        return float(value) if value % 1 else int(value)
    raise TypeError("Object of type %s is not JSON serializable" % type(value).__name__)


def load_handler():
    module_name = os.path.splitext(ENTRYPOINT)[0].replace(os.sep, ".")
    try:
        import importlib
        module = importlib.import_module(module_name)
    except SyntaxError as exc:
        # Lambda's message, preceded by where the error is: file:line:column, the file
        # relative to the function folder (no host path reaches callers).
        where = ":".join(str(part) for part in (folder_relative(exc.filename), exc.lineno,
                                                exc.offset) if part)
        return None, {"errorMessage": "%s: Syntax error in module '%s': %s" % (
                          where, module_name, exc.msg),
                      "errorType": "Runtime.UserCodeSyntaxError",
                      "stackTrace": ['  File "%s" Line %s\n    %s' % (
                          folder_relative(exc.filename), exc.lineno,
                          (exc.text or "").strip())]}
    except Exception as exc:
        payload = error_payload(exc, "Runtime.ImportModuleError")
        payload["errorMessage"] = "Unable to import module '%s': %s" % (module_name, exc)
        return None, payload
    target = module
    for part in HANDLER_NAME.split("."):
        target = getattr(target, part, None)
    if not callable(target):
        defined = sorted(name for name, value in vars(module).items()
                         if callable(value) and not name.startswith("_") and
                         getattr(value, "__module__", None) == module.__name__)[:10]
        return None, {"errorMessage": "Handler '%s' missing on module '%s' (%s defines %s)" % (
            HANDLER_NAME, module_name, ENTRYPOINT, ", ".join(defined) or "no function"),
            "errorType": "Runtime.HandlerNotFound", "stackTrace": []}
    return target, None


def main():
    # Requests come on a private copy of stdin; the function's own stdin is empty, so nothing
    # it reads can swallow a request.
    requests = io.open(os.dup(0), "rb", buffering=1 << 16)
    if EARLY_INPUT:   # (see await_assignment) whole lines: the worker writes whole lines
        requests = itertools.chain(io.BytesIO(EARLY_INPUT), requests)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    out_raw, sys.stdout = log_stream(1, line_buffering=False)
    err_raw, sys.stderr = log_stream(2, line_buffering=True)
    sys.__stdout__, sys.__stderr__ = sys.stdout, sys.stderr

    # The function folder first on the import path, as /var/task is on Lambda; this shim's own
    # folder not at all.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [TASK_ROOT] + [p for p in sys.path if p and os.path.abspath(p) != here]
    install_logging()

    handler, init_error = load_handler()
    sys.stdout.flush()
    sys.stderr.flush()
    if init_error is not None:
        log_error(init_error)
        write_control(b"INIT " + to_json(init_error) + b"\n")
        sys.exit(1)
    write_control(b"READY\n")

    for line in requests:
        if not line.strip():
            continue
        out_mark, err_mark = out_raw.written, err_raw.written
        request_id = None
        try:
            request = json.loads(line)
            request_id = request["id"]
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            # RecursionError: an event nested deeper than this interpreter's stack (the gateway
            # lets through up to 1,024 levels) is the caller's error, not a crash.
            answer = b"E " + to_json({"errorMessage": "The event is not valid JSON: %s" % exc,
                                      "errorType": "Runtime.InvalidEvent", "stackTrace": []})
        else:
            RequestIdFilter.request_id = request_id
            context = LambdaContext(request_id, time.time() * 1000 + request["timeoutMs"])
            error = None
            try:
                result = handler(request["event"], context)
            except Exception as exc:
                error = error_payload(exc)
            else:
                try:
                    answer = b"R " + to_json(result)
                except (TypeError, ValueError, RecursionError) as exc:
                    error = {"errorMessage": "Unable to marshal response: %s" % exc,
                             "errorType": "Runtime.MarshalError", "stackTrace": []}
            if error is not None:
                log_error(error)
                answer = b"E " + to_json(error)
        sys.stdout.flush()
        sys.stderr.flush()
        if request_id is None:
            found = REQUEST_ID.match(line)
            request_id = found.group(1).decode("ascii", "replace") if found else "-"
        rid = str(request_id).encode()
        marker = MARKER % rid
        if out_raw.written != out_mark:
            os.write(1, marker)
        if err_raw.written != err_mark:
            os.write(2, marker)
        # `R <request id> <result>` (the kind, then the id, then what was built above).
        write_control(b"%s%s %s\n" % (answer[:2], rid, answer[2:]))


if __name__ == "__main__":
    main()
