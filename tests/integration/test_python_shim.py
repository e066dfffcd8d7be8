"""Sora's Python shim (bootstrap.py) on its own, with the function's interpreter: each answer
names the request it answers (issue 14 point 9)."""
import os
import select
import subprocess
import time

from sora.runtimes.python import BOOTSTRAP, default_python

HANDLER = """
def handler(event, context):
    print("printed by", context.aws_request_id)
    return {"n": event["n"]}
"""


def read_until(fd, lines, deadline_s=20.0):
    got = b""
    deadline = time.monotonic() + deadline_s
    while got.count(b"\n") < lines:
        ready, _, _ = select.select([fd], [], [], max(0, deadline - time.monotonic()))
        assert ready, f"the shim did not answer in time: {got!r}"
        chunk = os.read(fd, 1 << 16)
        assert chunk, f"the shim closed the pipe: {got!r}"
        got += chunk
    return got.splitlines()


def test_each_answer_and_marker_names_its_request(tmp_path):
    (tmp_path / "app.py").write_text(HANDLER)
    read_fd, write_fd = os.pipe()
    env = {"PATH": os.environ["PATH"], "SORA_ENTRYPOINT": "app.py", "_HANDLER_EXPORT": "handler",
           "SORA_CONTROL_FD": str(write_fd), "LAMBDA_TASK_ROOT": str(tmp_path)}
    proc = subprocess.Popen([default_python(), "-s", BOOTSTRAP], cwd=tmp_path, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            pass_fds=(write_fd,))
    os.close(write_fd)
    try:
        assert read_until(read_fd, 1) == [b"READY"]
        proc.stdin.write(b'{"id":"r1","timeoutMs":5000,"event":{"n":1}}\n'
                         b'{"id":"r2","timeoutMs":5000,"event":{not json}}\n'
                         # deeper than the interpreter's stack, within the gateway's limit
                         b'{"id":"r3","timeoutMs":5000,"event":' + b"[" * 1020 + b"]" * 1020 +
                         b'}\n')
        proc.stdin.flush()
        bad = read_until(read_fd, 3)
        assert bad[0] == b'R r1 {"n":1}'
        assert bad[1].startswith(b"E r2 ") and b"Runtime.InvalidEvent" in bad[1]
        assert bad[2].startswith(b"E r3 ") and b"Runtime.InvalidEvent" in bad[2]
        proc.stdin.close()
        assert proc.wait(10) == 0
        assert proc.stdout.read() == b"printed by r1\n\x00SORA-END r1\n"
    finally:
        proc.kill()
        proc.wait()
        os.close(read_fd)
