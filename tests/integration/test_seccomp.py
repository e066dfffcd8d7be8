"""Issue 14 point 11: a sandboxed function, and its setup, try what the sandbox's seccomp filter
(sora.isolation.seccomp) refuses, as an attacker would: a nested user namespace (`unshare -Ur`
and unshare(CLONE_NEWUSER) and clone(CLONE_NEWUSER) directly), mounts, the keyring, bpf, perf,
ptrace of a process of its own, kexec, io_uring, a personality without ASLR. Each must fail
with EPERM (clone3 with ENOSYS, so that libc falls back to clone), while what functions do
every day (fork, threads, subprocesses, sockets) still works. Every attempt runs in a forked
child of the handler, so one that succeeds (on a host without the filter) harms nothing.
Node, Python, Go and the runtime interface clients are test_examples.py's and
test_languages.py's, which run sandboxed too."""
from __future__ import annotations

import json
import socket
import threading

import pytest

from sora.isolation import sandbox
from tests.support import json_of, served, write_function

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not sandbox.available(), reason="bubblewrap is not installed")]

ATTACKED = ("unshare", "clone", "clone3", "setns", "mount", "umount2", "fsopen", "open_tree",
            "keyctl", "add_key", "bpf", "perf_event_open", "ptrace", "process_vm_readv",
            "kexec_load", "init_module", "io_uring_setup", "userfaultfd", "personality",
            "syslog", "acct")

PROBE = r"""
import ctypes
import errno
import json
import os
import socket
import subprocess
import threading

NR = json.loads(os.environ["SYSCALLS"])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
CLONE_NEWUSER, CLONE_NEWNET, SIGCHLD = 0x10000000, 0x40000000, 17
ADDR_NO_RANDOMIZE = 0x0040000
PTRACE_ATTACH, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING = 16, 0, -3
BUFFER = ctypes.create_string_buffer(256)   # zeroed: an empty attr/params for bpf, perf, ...


def syscall(name, *args):
    return libc.syscall(ctypes.c_long(NR[name]), *[ctypes.c_long(a) for a in args])


def in_child(attempt):
    # The attempt in a forked child: a success (a new namespace, a traced process) stays there.
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            result = attempt()
        except BaseException as exc:
            result = f"raised {exc!r}"
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        out = fh.read()
    os.waitpid(pid, 0)
    try:
        return json.loads(out) if out else "child died"
    except ValueError:
        return out.decode()


def outcome(ret):
    return "ok" if ret >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")


def raw(name, *args):
    def attempt():
        ret = syscall(name, *args)
        if ret == 0 and name in ("clone", "clone3"):
            os._exit(0)   # the clone itself: not this process
        return outcome(ret)
    return in_child(attempt)


def clone3():
    # struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size,
    # tls (8 bytes each): a plain fork through clone3.
    args = (ctypes.c_uint64 * 8)(0, 0, 0, 0, SIGCHLD, 0, 0, 0)
    return raw("clone3", ctypes.addressof(args), ctypes.sizeof(args))


def ptrace_own():
    def attempt():
        target = os.fork()
        if target == 0:
            try:
                while True:
                    os.pause()
            finally:
                os._exit(0)
        try:
            traced = outcome(syscall("ptrace", PTRACE_ATTACH, target, 0, 0))
            local = ctypes.create_string_buffer(8)
            iov_local = (ctypes.c_void_p * 2)(ctypes.addressof(local), 8)
            iov_remote = (ctypes.c_void_p * 2)(ctypes.addressof(BUFFER), 8)
            read = outcome(syscall("process_vm_readv", target, ctypes.addressof(iov_local), 1,
                                   ctypes.addressof(iov_remote), 1, 0))
            return [traced, read]
        finally:
            os.kill(target, 9)
            os.waitpid(target, 0)
    return in_child(attempt)


def command(argv):
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    return {"status": done.returncode, "out": (done.stdout + done.stderr).strip()}


def everyday(port):
    got = []
    thread = threading.Thread(target=lambda: got.append("thread"))
    thread.start()
    thread.join()
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    forked = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"hello")
        echoed = conn.recv(5).decode()
    return {"thread": got, "fork": forked, "subprocess": command(["sh", "-c", "echo sub"]),
            "socket": echoed}


def handler(event, context):
    q = event.get("queryStringParameters") or {}
    if "setup" in q:
        with open("unshare.txt") as fh:
            return {"setup": fh.read()}
    if "everyday" in q:
        return everyday(int(q["everyday"]))
    return {
        "unshare -Ur": command(["unshare", "-Ur", "id", "-u"]),
        "unshare": raw("unshare", CLONE_NEWUSER),
        "unshare net": raw("unshare", CLONE_NEWNET),
        "clone": raw("clone", CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0),
        "clone3": clone3(),
        "setns": in_child(lambda: outcome(syscall(
            "setns", os.open("/proc/self/ns/uts", os.O_RDONLY), 0))),
        "mount": raw("mount", ctypes.addressof(ctypes.create_string_buffer(b"none")),
                     ctypes.addressof(ctypes.create_string_buffer(b"/tmp")),
                     ctypes.addressof(ctypes.create_string_buffer(b"tmpfs")), 0, 0),
        "umount2": raw("umount2", ctypes.addressof(ctypes.create_string_buffer(b"/tmp")), 0),
        "fsopen": raw("fsopen", ctypes.addressof(ctypes.create_string_buffer(b"tmpfs")), 0),
        "open_tree": raw("open_tree", -100, ctypes.addressof(ctypes.create_string_buffer(b"/")),
                         1),
        "keyctl": raw("keyctl", KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 1),
        "add_key": raw("add_key", ctypes.addressof(ctypes.create_string_buffer(b"user")),
                       ctypes.addressof(ctypes.create_string_buffer(b"sora")),
                       ctypes.addressof(BUFFER), 4, KEY_SPEC_SESSION_KEYRING),
        "bpf": raw("bpf", 0, ctypes.addressof(BUFFER), 72),
        "perf_event_open": perf_event_open(),
        "ptrace": ptrace_own(),
        "kexec_load": raw("kexec_load", 0, 0, 0, 0),
        "init_module": raw("init_module", ctypes.addressof(BUFFER), 16,
                           ctypes.addressof(BUFFER)),
        "io_uring_setup": raw("io_uring_setup", 1, ctypes.addressof(BUFFER)),
        "userfaultfd": raw("userfaultfd", 0),
        "syslog": raw("syslog", 10, 0, 0),   # SYSLOG_ACTION_SIZE_BUFFER
        "acct": raw("acct", 0),
        "personality": raw("personality", ADDR_NO_RANDOMIZE),
        "personality query": raw("personality", 0xFFFFFFFF),
    }


def perf_event_open():
    attr = ctypes.create_string_buffer(128)
    ctypes.c_uint32.from_buffer(attr, 0).value = 1     # PERF_TYPE_SOFTWARE
    ctypes.c_uint32.from_buffer(attr, 4).value = 128   # size
    ctypes.c_uint64.from_buffer(attr, 40).value = 0b1100000   # exclude_kernel, exclude_hv
    return raw("perf_event_open", ctypes.addressof(attr), 0, -1, -1, 0)
"""

SETUP = "unshare -Ur id -u > unshare.txt 2>&1; echo status $? >> unshare.txt"


def syscall_numbers() -> dict[str, int]:
    """This machine's numbers, resolved where the test runs (the function has no libseccomp)."""
    import pyseccomp
    numbers = {name: pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
               for name in ATTACKED}
    assert all(n >= 0 for n in numbers.values()), numbers
    return numbers


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("seccomp")
    dirs = [write_function(base / "fns", "attacker", {"app.py": PROBE}, name="attacker",
                           language="python", entrypoint="app.py", timeout=30,
                           env={"SYSCALLS": json.dumps(syscall_numbers())}, setup=[SETUP])]
    yield from served(base, dirs, https=False)


def test_what_reaches_past_the_sandbox_is_refused(host):
    r = host.invoke("attacker")
    assert r.status_code == 200, r.text
    tried = json_of(r)
    nested = tried.pop("unshare -Ur")
    assert nested["status"] != 0 and "Operation not permitted" in nested["out"], nested
    assert tried.pop("clone3") == "ENOSYS"   # libc falls back to clone, which is filtered
    assert tried.pop("personality query") == "ok"
    assert tried.pop("ptrace") == ["EPERM", "EPERM"]
    refused = {name: result for name, result in tried.items() if result != "EPERM"}
    assert not refused, refused


def test_setup_cannot_make_a_user_namespace_either(host):
    made = json_of(host.invoke("attacker", params={"setup": "1"}))["setup"]
    assert "Operation not permitted" in made and "status 1" in made, made


def test_everyday_calls_still_work(host):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(20)
        port = listener.getsockname()[1]

        def echo():
            conn, _ = listener.accept()
            with conn:
                conn.sendall(conn.recv(5))
        server = threading.Thread(target=echo)
        server.start()
        r = host.invoke("attacker", params={"everyday": str(port)})
        server.join(20)
    assert r.status_code == 200, r.text
    assert json_of(r) == {"thread": ["thread"], "fork": 7,
                          "subprocess": {"status": 0, "out": "sub"}, "socket": "hello"}
