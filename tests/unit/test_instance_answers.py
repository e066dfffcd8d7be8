"""What a worker takes from an instance's control and log pipes (issue 14 point 9): an answer
counts only for the invocation the instance is running, and an end marker closes lines only for
an invocation it is running or has just run. The function's code can write both itself."""
import os
import time
from collections import deque
from types import SimpleNamespace

import pytest

from sora import protocol as p
from sora.config import load_function_config
from sora.worker.instance import RAN_KEPT, Instance, State
from sora.worker.main import Worker


class Log:
    """Records what the instance stores, as (request id, stream, lines)."""

    def __init__(self):
        self.written = []

    def write(self, request_id, stream, lines):
        self.written.append((request_id, stream, list(lines)))

    def tail(self, request_id):
        return b""


@pytest.fixture
def fn(tmp_path):
    d = tmp_path / "fn"
    d.mkdir()
    (d / "index.js").write_text("exports.handler = async () => 1;\n")
    (d / "sora.yaml").write_text("name: fn\nlanguage: nodejs\nentrypoint: index.js\n")
    return load_function_config(d)


@pytest.fixture
def inst(fn):
    """An instance whose child is the test: it writes the child's stdout and control pipe."""
    inst = Instance(None, fn, 0, Log())
    fds = []
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    control_r, control_w = os.pipe()
    in_r, in_w = os.pipe()
    fds += [out_r, out_w, err_r, err_w, control_r, control_w, in_r, in_w]
    inst.proc = SimpleNamespace(stdout=SimpleNamespace(fileno=lambda: out_r),
                                stderr=SimpleNamespace(fileno=lambda: err_r), pid=-1)
    inst.stdin_fd, inst.control_fd = in_w, control_r
    for fd in (out_r, err_r, control_r):
        os.set_blocking(fd, False)
    inst._log_bufs = {out_r: b"", err_r: b""}
    inst._pending_lines = {out_r: [], err_r: []}
    inst.child_stdout, inst.child_control = out_w, control_w
    yield inst
    for fd in fds:
        os.close(fd)


def test_a_marker_naming_a_request_it_did_not_run_is_ordinary_output(inst):
    inst.send(b"c", b"r1", b"{}")
    inst.send(b"c", b"r2", b"{}")   # queued behind r1: its own, it runs next
    os.write(inst.child_stdout, b"mine\n\x00SORA-END another-functions-id\n"
                                b"\x00SORA-END r1\nof r2\n\x00SORA-END r2\n")
    inst.drain_logs()
    assert inst.log.written == [("r1", "stdout", [b"mine", b"\x00SORA-END another-functions-id"]),
                                ("r2", "stdout", [b"of r2"])]


def test_a_marker_read_after_its_answer_still_closes_its_lines(inst):
    inst.send(b"c", b"r1", b"{}")
    inst.send(b"c", b"r2", b"{}")
    inst.advance()   # r1 answered before its marker was read; r2 runs
    os.write(inst.child_stdout, b"of r1\n\x00SORA-END r1\nof r2\n")
    inst.drain_logs()
    assert inst.log.written == [("r1", "stdout", [b"of r1"]), ("r2", "stdout", [b"of r2"])]


def test_only_the_last_invocations_run_are_remembered(inst):
    for n in range(RAN_KEPT + 1):
        inst.send(b"c", b"r%d" % n, b"{}")
        inst.advance()
    assert not inst.ran_here(b"r0") and inst.ran_here(b"r1")
    assert inst.ran_here(b"r%d" % RAN_KEPT)


def control_lines(inst, line):
    view = memoryview(line)
    got = []
    while view:   # the pipe takes it in pieces; the worker reads as it comes
        try:
            view = view[os.write(inst.child_control, view[:1 << 16]):]
        except BlockingIOError:
            pass
        got += inst.read_control() or []
    return got


@pytest.mark.parametrize("request_id", [b"r1", b"0" * 200])
def test_an_answer_at_the_limit_is_taken_whole(inst, request_id):
    body = b'"' + b"x" * (p.MAX_RESULT_BYTES - 2) + b'"'
    assert control_lines(inst, b"R %s %s\n" % (request_id, body)) == [
        b"R %s %s" % (request_id, body)]


def test_an_answer_too_large_still_names_its_request(inst):
    inst.send(b"c", b"r1", b"{}")
    body = b'"' + b"x" * (p.MAX_RESULT_BYTES - 1) + b'"'
    got = control_lines(inst, b"R r1 " + body + b"\n")
    assert len(got) == 1 and got[0].startswith(b"E r1 ")
    assert p.parse_error(got[0][5:]) == ("Sora.ResponseTooLarge", (
        f"The function's response is {len(body)} bytes; the limit is "
        f"{p.MAX_RESULT_BYTES} bytes"))


# --- the worker's side: Worker.handle_control_line ------------------------------------------
class Records:
    def __init__(self):
        self.recorded = []

    def record(self, request_id, *args, **kwargs):
        self.recorded.append(request_id)


@pytest.fixture
def worker(fn, inst):
    """A worker with no broker, pool or processes: what it answers is in `replies`, and an
    instance it replaces is in `replaced`."""
    w = Worker.__new__(Worker)
    w.fn, w.fn_name, w.log, w.records = fn, b"fn", inst.log, Records()
    w.meta, w.replies, w.pending, w.idle, w.ends, w.unrecorded = {}, [], deque(), [], [], []
    w.avg_duration, w.credits_per_instance, w.sock = 1.0, 1, None
    w.replaced = []
    w.replace_instance = lambda i, kill: w.replaced.append((i, kill))
    inst.state = State.IDLE
    return w


def answers(w):
    return [(frames[2], frames[3], p.parse_error(frames[4])[0] if frames[3] != p.OK
             else frames[4]) for frames in w.replies]


def test_answers_count_for_the_invocation_running(worker, inst):
    inst.send(b"c", b"r1", b"{}")
    inst.send(b"c", b"r2", b"{}")
    worker.handle_control_line(inst, b"R r1 1")
    worker.handle_control_line(inst, b"E r2 " + p.error_body("TypeError", "no"))
    assert answers(worker) == [(b"r1", p.OK, b"1"), (b"r2", p.FUNCTION_ERROR, "TypeError")]
    assert inst.state is State.IDLE and not worker.replaced


@pytest.mark.parametrize("line", [
    b"R r2 {\"forged\":true}",     # a request it holds, queued behind the one running
    b"R r9 {\"forged\":true}",     # a request it does not hold
    b"R {\"forged\":true}",         # the old protocol's answer: no id
    b"E  {}",                      # an empty id
    b"READY",                      # ready twice
    b"INIT {}",                    # an init error after init
    b"hello",                      # no message at all
])
def test_anything_else_drops_the_line_and_replaces_the_instance(worker, inst, line):
    inst.send(b"c", b"r1", b"{}")
    inst.send(b"c", b"r2", b"{}")
    worker.handle_control_line(inst, line)
    # The invocation it was running fails; the one queued goes back, for another instance.
    assert answers(worker) == [(b"r1", p.RUNTIME_EXITED, "Sora.ProtocolError")]
    assert [item[1] for item in worker.pending] == [b"r2"]
    assert worker.replaced == [(inst, True)] and inst.current is None


def test_an_early_answer_of_its_own_is_its_answer_and_the_second_is_refused(worker, inst):
    inst.send(b"c", b"r1", b"{}")
    worker.handle_control_line(inst, b"R r1 \"early\"")   # the function wrote it itself
    assert answers(worker) == [(b"r1", p.OK, b"\"early\"")] and not worker.replaced
    inst.send(b"c", b"r2", b"{}")
    worker.handle_control_line(inst, b"R r1 \"from the shim\"")
    assert answers(worker)[1:] == [(b"r2", p.RUNTIME_EXITED, "Sora.ProtocolError")]
    assert worker.replaced == [(inst, True)]


def test_an_uncaught_error_between_invocations_ends_the_instance(worker, inst):
    inst.send(b"c", b"r1", b"{}")
    inst.send(b"c", b"r2", b"{}")
    worker.handle_control_line(inst, b"X - " + p.error_body("TypeError", "later"))
    # Nothing answered yet: r1 fails when its pipe closes (a crash); r2 goes back.
    assert not worker.replies and inst.state is State.EXITING
    assert inst.current[1] == b"r1" and [item[1] for item in worker.pending] == [b"r2"]
    assert not worker.replaced


def test_an_idle_instance_that_says_it_is_exiting_gets_no_more_work(worker, inst):
    worker.idle.append(inst)
    worker.handle_control_line(inst, b"X - " + p.error_body("TypeError", "later"))
    assert inst.state is State.EXITING and worker.idle == [] and not worker.replaced


def test_ready_before_any_work(worker, inst):
    inst.state = State.BOOTING
    worker.init_failures = 2
    worker.handle_control_line(inst, b"READY")
    assert inst.state is State.IDLE and worker.idle == [inst] and worker.init_failures == 0
    assert time.monotonic() - inst.idle_since < 5
