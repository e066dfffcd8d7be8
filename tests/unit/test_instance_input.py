"""How a worker hands invocations to an instance: what it handed over in one loop turn goes in
one write, and what a dead child never got comes back for another instance."""
import os

from sora.config import load_function_config
from sora.worker.instance import Instance


def instance_on_pipe(tmp_path):
    d = tmp_path / "fn"
    d.mkdir()
    (d / "index.js").write_text("exports.handler = async () => 1;\n")
    (d / "sora.yaml").write_text("name: fn\nlanguage: nodejs\nentrypoint: index.js\n")
    inst = Instance(None, load_function_config(d), 0, None)
    read_fd, write_fd = os.pipe()
    inst.stdin_fd = write_fd   # where start() would put the child's stdin
    return inst, read_fd, write_fd


def test_invocations_handed_over_together_are_written_together(tmp_path):
    inst, read_fd, write_fd = instance_on_pipe(tmp_path)
    inst.send(b"c", b"r1", b'{"a":\n1}')
    inst.send(b"c", b"r2", b"")
    os.set_blocking(read_fd, False)
    try:
        assert os.read(read_fd, 1 << 16) == b""   # nothing written yet
    except BlockingIOError:
        pass
    assert inst.flush_input() == []
    assert os.read(read_fd, 1 << 16) == (
        b'{"id":"r1","timeoutMs":30000,"event":{"a": 1}}\n'
        b'{"id":"r2","timeoutMs":30000,"event":null}\n')
    assert inst.current[:2] == (b"c", b"r1") and [q[1] for q in inst.queued] == [b"r2"]
    assert inst.flush_input() == []   # nothing new: no write
    os.close(read_fd)
    os.close(write_fd)


def test_what_a_dead_child_never_got_is_taken_back(tmp_path):
    inst, read_fd, write_fd = instance_on_pipe(tmp_path)
    inst.send(b"c", b"r1", b"{}")
    assert inst.flush_input() == []
    os.read(read_fd, 1 << 16)
    os.close(read_fd)   # the child is gone
    inst.send(b"c", b"r2", b"{}")
    inst.send(b"c", b"r3", b"{}")
    assert inst.flush_input() == [(b"c", b"r2", b"{}"), (b"c", b"r3", b"{}")]
    # r1 had reached the child: it stays the instance's (and fails with it); r2 and r3 are
    # no longer held by it.
    assert inst.current[1] == b"r1" and not inst.queued and inst.depth == 1
    assert inst.invocations == 1
    os.close(write_fd)
