"""Sora's Node.js shim (bootstrap.cjs) on its own, with real Node: how it answers invocations
queued behind one another."""
import os
import select
import subprocess
import time

from sora.runtimes.nodejs import BOOTSTRAP

HANDLER = """
exports.handler = async (event) => {
  if (event.exit) process.exit(3);
  return { n: event.n };
};
"""


def start_shim(tmp_path):
    (tmp_path / "index.js").write_text(HANDLER)
    read_fd, write_fd = os.pipe()
    env = {"PATH": os.environ["PATH"], "SORA_ENTRYPOINT": str(tmp_path / "index.js"),
           "_HANDLER_EXPORT": "handler", "SORA_CONTROL_FD": str(write_fd)}
    proc = subprocess.Popen(["node", BOOTSTRAP], cwd=tmp_path, env=env, stdin=subprocess.PIPE,
                            pass_fds=(write_fd,))
    os.close(write_fd)
    assert read_control(read_fd) == b"READY\n"
    return proc, read_fd


def read_control(fd, deadline_s=20.0):
    """One read of the control pipe (what one write of the shim's put there, or more)."""
    ready, _, _ = select.select([fd], [], [], deadline_s)
    assert ready, "the shim did not answer in time"
    return os.read(fd, 1 << 16)


def requests(*events):
    return b"".join(b'{"id":"r%d","timeoutMs":5000,"event":%s}\n' % (i, e)
                    for i, e in enumerate(events))


def test_answers_to_invocations_queued_together_come_in_one_write(tmp_path):
    proc, control = start_shim(tmp_path)
    try:
        proc.stdin.write(requests(b'{"n":1}', b'{"n":2}', b'{"n":3}'))
        proc.stdin.flush()
        # The three run back to back; their answers leave in one write, so the first read
        # already holds them all (a write per answer would wake the reader for the first).
        assert read_control(control) == b'R r0 {"n":1}\nR r1 {"n":2}\nR r2 {"n":3}\n'
    finally:
        proc.kill()
        proc.wait()
        os.close(control)


def test_an_answer_waiting_to_be_written_survives_the_next_invocation_exiting(tmp_path):
    proc, control = start_shim(tmp_path)
    try:
        proc.stdin.write(requests(b'{"n":1}', b'{"exit":true}'))
        proc.stdin.flush()
        got = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            chunk = read_control(control, deadline - time.monotonic())
            if not chunk:
                break   # the shim exited and closed the pipe
            got += chunk
        assert got == b'R r0 {"n":1}\n'
        assert proc.wait(10) == 3
    finally:
        proc.kill()
        proc.wait()
        os.close(control)


def test_an_answer_names_its_request_even_when_the_line_is_not_json(tmp_path):
    proc, control = start_shim(tmp_path)
    try:
        proc.stdin.write(b'{"id":"r7","timeoutMs":5000,"event":{not json}}\n' + requests(b"{}"))
        proc.stdin.flush()
        got = b""
        deadline = time.monotonic() + 20
        while got.count(b"\n") < 2 and time.monotonic() < deadline:
            got += read_control(control, deadline - time.monotonic())
        bad, good = got.splitlines()
        assert bad.startswith(b'E r7 {"errorType":"Runtime.InvalidEvent"')
        assert good == b"R r0 {}"
    finally:
        proc.kill()
        proc.wait()
        os.close(control)
