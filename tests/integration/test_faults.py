"""The fault and abuse suite: each case breaks something on purpose and asserts the caller's
clear error, that the other functions still serve, and (at the end) that no accepted async
event was lost. One host for all; the cases run in order."""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from sora.isolation import cgroups
from tests.integration import functions as F
from tests.support import json_of, wait_for, write_function, SoraHost

pytestmark = pytest.mark.integration

VICTIM = r"""
const fs = require('fs');
exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  if (q.exit) process.exit(Number(q.exit));
  if (q.signal) process.kill(process.pid, q.signal);
  if (q.loop) for (;;) {}
  if (q.hang) return new Promise(() => {});
  if (q.uncaught) { setTimeout(() => { throw new TypeError('thrown later'); }, 1); return new Promise(() => {}); }
  if (q.reject) { Promise.reject(new Error('nobody catches this')); return new Promise(() => {}); }
  if (q.closefds) { for (let fd = 3; fd < 64; fd++) { try { fs.closeSync(fd); } catch (e) {} } return { closed: true }; }
  if (q.fake) {
    process.stdout.write('R {"fake":true}\nREADY\nX {"errorType":"Fake"}\n');
    process.stderr.write('\u0000SORA-END not-a-real-id\n');
    return { real: true };
  }
  if (q.mb) { const held = []; for (let i = 0; i < Number(q.mb); i++) held.push(Buffer.alloc(1 << 20, 1)); return { held: held.length }; }
  if (q.kb) return { data: 'y'.repeat(Number(q.kb) * 1024) };
  if (q.lines) { const line = 'z'.repeat(1000) + '\n'; for (let i = 0; i < Number(q.lines); i++) process.stdout.write(line); return { printed: Number(q.lines) }; }
  if (q.longline) { process.stdout.write('w'.repeat(Number(q.longline) * 1024) + '\n'); return { ok: true }; }
  if (q.daemon) { require('child_process').spawn('sleep', ['300'], { detached: false }).unref(); return { spawned: true }; }
  if (q.env) return { env: Object.keys(process.env) };
  if (q.read) { try { return { read: fs.readdirSync(q.read).length }; } catch (e) { return { read: e.code }; } }
  if (q.write) { try { fs.writeFileSync(q.write, 'x'); return { wrote: q.write }; } catch (e) { return { wrote: e.code }; } }
  if (q.closestdin) { process.stdin.destroy(); return { closed: 'stdin' }; }
  // issue 14 point 2: its cases' branches
  // issue 14 point 3: its cases' branches
  // issue 14 point 4: its cases' branches
  // issue 14 point 6: its cases' branches
  // issue 14 point 7: its cases' branches
  // issue 14 point 8: its cases' branches
  if (q.mark) { console.log('mark ' + q.mark); return { mark: q.mark }; }
  // issue 14 point 9: its cases' branches
  // issue 14 point 10: its cases' branches
  // issue 14 point 11: its cases' branches
  return { instance: process.env.AWS_LAMBDA_LOG_STREAM_NAME, body: event.body === undefined ? null : event.body, b64: event.isBase64Encoded };
};
"""

CASES = []


def case(fn):
    CASES.append(fn)
    return fn


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    fns = base / "fns"
    marks = base / "marks"
    marks.mkdir()
    dirs = [write_function(fns, "victim", {"index.js": VICTIM}, name="victim", timeout=2,
                           memory=256, instances=2, env={"VICTIM_ONLY": "1"}),
            write_function(fns, "bystander", {"index.js": F.ECHO}, name="bystander"),
            # Leaves marks in a folder of the host's (so not sandboxed): no event is lost.
            write_function(fns, "sink", {"index.js": F.EVENT_SINK}, name="sink",
                           env={"MARKS": str(marks)}, instances=2, isolation="none")]
    h = SoraHost(base, dirs, https=False, server={"maxBodyBytes": 1 << 20})
    h.marks = marks
    h.events = []
    h.start()
    yield h
    assert h.stop() == 0
    assert not h.leftovers(), h.leftovers()


def call(host, **params):
    return host.invoke("victim", params=params)


def error_of(r, status, error_type, text=""):
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = json_of(r)
    assert body["errorType"] == error_type, body
    assert text in body["errorMessage"], body
    assert "Traceback" not in r.text


def send_event(host):
    """An async event to the sink; remembered, and checked at the end."""
    key = uuid.uuid4().hex
    for attempt in range(3):
        try:
            r = host.invoke("sink", method="POST", data=key,   # the sink's key is the body
                            headers={"X-Sora-Invocation-Type": "Event"})
            break
        except requests.ConnectionError:   # a gateway process killed by a case: send again
            if attempt == 2:
                raise
    assert r.status_code == 202, r.text
    host.events.append(key)


def kill_role(host, match) -> int:
    for proc in host.descendants():
        try:
            if match(proc):
                proc.kill()
                return proc.pid
        except psutil.Error:
            continue
    raise AssertionError("no such process")


def cmd(proc) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:   # exited meanwhile (a zombie until its parent reaps it)
        return ""


@case
def exits_with_a_status(host):
    error_of(call(host, exit="3"), 502, "Sora.RuntimeExited", "exit status 3")


@case
def kills_itself_with_a_signal(host):
    error_of(call(host, signal="SIGKILL"), 502, "Sora.RuntimeExited", "SIGKILL")


@case
def infinite_loop(host):
    error_of(call(host, loop="1"), 504, "Sora.Timeout", "Task timed out after 2.00 seconds")


@case
def never_answers(host):
    error_of(call(host, hang="1"), 504, "Sora.Timeout")


@case
def uncaught_exception_later(host):
    error_of(call(host, uncaught="1"), 502, "TypeError", "thrown later")


@case
def unhandled_rejection(host):
    error_of(call(host, reject="1"), 502, "Runtime.UnhandledPromiseRejection")


@case
def closes_its_protocol_fd(host):
    r = call(host, closefds="1")
    assert r.status_code in (502, 504), r.text
    assert json_of(r)["errorType"] in ("Sora.RuntimeExited", "Sora.Timeout")


@case
def prints_fake_protocol_messages(host):
    r = call(host, fake="1")
    assert r.status_code == 200 and json_of(r) == {"real": True}


@case
def memory_bomb(host):
    if cgroups.detect() is None:
        pytest.skip("no cgroups here")
    error_of(call(host, mb="600"), 502, "Sora.OutOfMemory", "256 MB")


@case
def huge_response(host):
    error_of(call(host, kb="7000"), 502, "Sora.ResponseTooLarge")


@case
def closes_the_request_pipe(host):
    r = call(host, closestdin="1")
    assert r.status_code == 200 or json_of(r)["errorType"], r.text


@case
def large_event_near_the_limit(host):
    payload = json.dumps({"blob": "q" * (900 * 1024)})
    r = host.invoke("victim", method="POST", data=payload,
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and json.loads(json_of(r)["body"])["blob"] == "q" * (900 * 1024)


@case
def huge_log_output(host):
    r = call(host, lines="20000")   # 20 MB of lines
    assert r.status_code == 200 and json_of(r)["printed"] == 20000


@case
def endless_log_line(host):
    assert call(host, longline="4096").status_code == 200


@case
def leaves_a_daemon_behind(host):
    assert call(host, daemon="1").status_code == 200


@case
def binary_garbage_as_event(host):
    r = host.invoke("victim", method="POST", data=os.urandom(4096),
                    headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200 and json_of(r)["b64"] is True


@case
def invalid_utf8_as_text(host):
    r = host.invoke("victim", method="POST", data=b"caf\xe9 \xff\xfe",
                    headers={"Content-Type": "text/plain"})
    assert r.status_code == 200 and json_of(r)["b64"] is True


@case
def binary_garbage_to_the_invoke_api(host):
    r = host.session.post(f"{host.url}/2015-03-31/functions/victim/invocations",
                          data=b"\x00\xff garbage")
    error_of(r, 400, "InvalidRequestContentException")


@case
def binary_garbage_as_an_async_event(host):
    r = host.invoke("victim", method="POST", data=os.urandom(512),
                    headers={"X-Sora-Invocation-Type": "Event",
                             "Content-Type": "application/octet-stream"})
    assert r.status_code == 202


@case
def traversal_attempt(host):
    error_of(host.session.get(f"{host.url}/functions/victim/%2e%2e/%2e%2e/etc/passwd"), 400,
             "Sora.InvalidPath")


@case
def nul_in_the_name(host):
    error_of(host.session.get(f"{host.url}/functions/vic%00tim"), 404,
             "ResourceNotFoundException")


@case
def oversized_body(host):
    # Answered from the headers, before the body is read (a client that insists on sending
    # all of it first may see the connection close instead: the body is never buffered).
    with socket.create_connection(("127.0.0.1", host.http_port)) as s:
        s.sendall(b"POST /functions/victim HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                  b"\r\n" % (2 << 20) + b"x" * 65536)
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413") and b"Sora.RequestTooLarge" in answer


@case
def too_many_headers(host):
    with socket.create_connection(("127.0.0.1", host.http_port)) as s:
        s.sendall(b"GET /functions/victim HTTP/1.1\r\nHost: x\r\n" +
                  b"".join(b"X-%d: v\r\n" % i for i in range(300)) + b"\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 431")


@case
def reads_another_functions_env(host):
    env = json_of(host.invoke("bystander"))["event"]
    assert "VICTIM_ONLY" not in json.dumps(env)
    victim_env = json_of(call(host, env="1"))["env"]
    assert "VICTIM_ONLY" in victim_env and "MARKS" not in victim_env


@case
def reads_another_functions_folder(host):
    # Sandboxed (the default): another function's folder, the state dir and the host config
    # are not there at all; the same paths exist on the host.
    for path in (host.base / "fns" / "bystander", host.base / "state", host.config_path):
        assert path.exists()
        assert json_of(call(host, read=str(path)))["read"] == "ENOENT", path
    assert json_of(call(host, read=str(host.base / "fns" / "victim")))["read"] >= 2
    assert host.invoke("bystander").status_code == 200


@case
def writes_outside_its_sandbox(host):
    for path, refused in ((host.base / "fns" / "victim" / "index.js", "EROFS"),   # own code
                          ("/etc/sora-fault-test", "EROFS"),
                          ("/usr/sora-fault-test", "EROFS"),
                          (host.base / "fns" / "bystander" / "index.js", "ENOENT")):
        assert json_of(call(host, write=str(path)))["wrote"] == refused, path
    assert not os.path.exists("/etc/sora-fault-test")
    assert "exports.handler" in (host.base / "fns" / "bystander" / "index.js").read_text()
    assert json_of(call(host, write="/tmp/scratch"))["wrote"] == "/tmp/scratch"   # its /tmp
    assert host.invoke("bystander").status_code == 200


# --- issue 14 point 1: attacks on it (cases below this line) ---


# --- issue 14 point 2: attacks on it (cases below this line) ---


# --- issue 14 point 3: attacks on it (cases below this line) ---


# --- issue 14 point 4: attacks on it (cases below this line) ---


# --- issue 14 point 5: attacks on it (cases below this line) ---


# --- issue 14 point 6: attacks on it (cases below this line) ---


# --- issue 14 point 7: attacks on it (cases below this line) ---


# --- issue 14 point 8: attacks on it (cases below this line) ---


def _record_or_none(host, request_id):
    r = host.session.get(f"{host.url}/api/invocations/{request_id}", timeout=5)
    return r.json() if r.status_code == 200 else None


@case
def kill9_recorder_loses_no_record(host):
    """The recorder is killed while records stream in: every invocation that got an answer
    (calls and async events alike) has its record once the recorder is back, and no record
    holds a line twice (what was resent to the new recorder was not stored again)."""
    answered: dict[str, str] = {}   # request id -> the mark its invocation printed
    events: dict[str, str] = {}     # request id -> the sink's key
    stop = threading.Event()

    def caller(n):
        i = 0
        while not stop.is_set():
            mark = f"{n}.{i}.{uuid.uuid4().hex[:8]}"
            i += 1
            try:
                r = call(host, mark=mark)
            except requests.ConnectionError:
                continue
            if r.status_code == 200:
                answered[r.headers["X-Sora-Request-Id"]] = mark

    def event():
        key = uuid.uuid4().hex
        r = host.invoke("sink", method="POST", data=key,
                        headers={"X-Sora-Invocation-Type": "Event"})
        assert r.status_code == 202, r.text
        host.events.append(key)
        events[json_of(r)["requestId"]] = key

    with ThreadPoolExecutor(8) as pool:
        callers = [pool.submit(caller, n) for n in range(6)]
        try:
            wait_for(lambda: len(answered) >= 100, timeout=30, what="calls under way")
            for _ in range(5):
                event()
            before = len(answered)
            kill_role(host, lambda p: "sora.store.recorder" in cmd(p))
            for _ in range(5):
                event()
            # Load goes on while the recorder is gone and while it comes back.
            wait_for(lambda: len(answered) >= before + 300, timeout=60,
                     what="calls while the recorder is down")
        finally:
            stop.set()
            for c in callers:
                c.result()
    wait_for(lambda: host.health()["recorder"]["state"] == "RUNNING", timeout=30,
             what="the recorder back")
    wait_for(lambda: all((host.marks / f"{key}.1.end").exists() for key in events.values()),
             timeout=60, what="the events to run")
    missing = dict(answered)
    missing.update(events)
    records = {}

    def all_recorded():
        for request_id in list(missing):
            rec = _record_or_none(host, request_id)
            if rec is not None:
                records[request_id] = rec
                del missing[request_id]
        return not missing
    try:
        wait_for(all_recorded, timeout=30, interval=0.5, what="every record")
    except AssertionError:
        raise AssertionError(f"{len(missing)} of {len(answered) + len(events)} answered "
                             f"invocations have no record: {sorted(missing)[:5]}") from None
    for request_id, mark in answered.items():
        lines = [x["line"] for x in records[request_id]["logs"]]
        assert lines.count(f"mark {mark}") == 1, (request_id, lines)
    for request_id in events:
        lines = [x["line"] for x in records[request_id]["logs"]]
        assert len(lines) == len(set(lines)) and lines, (request_id, lines)



# --- issue 14 point 9: attacks on it (cases below this line) ---


# --- issue 14 point 10: attacks on it (cases below this line) ---


# --- issue 14 point 11: attacks on it (cases below this line) ---


@case
def unknown_function(host):
    error_of(host.invoke("nobody-here"), 404, "ResourceNotFoundException")


def under_load(host, action, resets_ok=False):
    """Run `action` while calls to the victim and events to the sink are in flight. Each call
    is served or fails with a clear JSON error; with `resets_ok` (the HTTP server process
    itself is killed) a call on that process may also see its connection reset."""
    def one():
        try:
            return call(host, pid="1")
        except requests.ConnectionError:
            if not resets_ok:
                raise
            return None
    with ThreadPoolExecutor(8) as pool:
        calls = [pool.submit(one) for _ in range(16)]
        for _ in range(5):
            send_event(host)
        action()
        results = [c.result() for c in calls]
    for r in results:
        assert r is None or r.status_code == 200 or json_of(r)["errorType"], r.text


@case
def kill9_victim_worker_under_load(host):
    under_load(host, lambda: os.kill(host.function_state("victim")["pid"], signal.SIGKILL))
    wait_for(lambda: call(host).status_code == 200, timeout=30, what="victim back")


@case
def kill9_runtime_instance_under_load(host):
    under_load(host, lambda: kill_role(host, lambda p: "node" in p.name() and
                                       p.cwd().endswith("/victim")))


@case
def kill9_gateway_worker_under_load(host):
    def kill_gateway():
        masters = [p for p in host.descendants() if "gunicorn" in cmd(p) and
                   p.ppid() == host.proc.pid]
        masters[0].children()[0].kill()
    under_load(host, kill_gateway, resets_ok=True)
    wait_for(lambda: host.invoke("bystander").status_code == 200, timeout=30,
             what="the gateway back")


@case
def kill9_dispatcher(host):
    under_load(host, lambda: kill_role(host, lambda p: "sora.events.dispatcher" in cmd(p)))


@case
def kill9_recorder(host):
    under_load(host, lambda: kill_role(host, lambda p: "sora.store.recorder" in cmd(p)))


@case
def kill9_a_prestarted_runtime(host):
    under_load(host, lambda: kill_role(host, lambda p: "node" in p.name() and p.cwd() == "/"))


@pytest.mark.parametrize("fault", CASES, ids=[c.__name__ for c in CASES])
def test_fault(host, fault):
    send_event(host)
    fault(host)
    r = host.invoke("bystander")
    assert r.status_code == 200, (fault.__name__, r.text)
    wait_for(lambda: call(host).status_code == 200, timeout=30,
             what=f"the victim to serve again after {fault.__name__}")


def test_no_accepted_event_was_lost(host):
    assert len(host.events) >= len(CASES)

    def all_ran():
        done = {f.split(".")[0] for f in os.listdir(host.marks) if f.endswith(".end")}
        return not (set(host.events) - done)
    try:
        wait_for(all_ran, timeout=90, what="every accepted event to run")
    except AssertionError:
        done = {f.split(".")[0] for f in os.listdir(host.marks) if f.endswith(".end")}
        missing = set(host.events) - done
        dlq = host.session.get(f"{host.url}/api/functions/sink/dlq").text
        funcs = host.session.get(f"{host.url}/api/functions").text
        raise AssertionError(f"{len(missing)} of {len(host.events)} events never ran: "
                             f"{sorted(missing)[:5]}\ndlq: {dlq[:1500]}\nfunctions: "
                             f"{funcs[:1500]}\nlog: {host.log()[-3000:]}") from None
