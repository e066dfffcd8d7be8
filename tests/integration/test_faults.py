"""The fault and abuse suite: each case breaks something on purpose and asserts the caller's
clear error, that the other functions still serve, and (at the end) that no accepted async
event was lost. One host for all; the cases run in order."""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from sora.isolation import cgroups
from sora.store.db import QUEUE_FILE, db_path
from tests.integration import functions as F
from tests.support import json_of, processes_in, wait_for, write_function, SoraHost

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
  if (q.closefds) { for (let fd = 3; fd < 1024; fd++) { try { fs.closeSync(fd); } catch (e) {} } return { closed: true }; }
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
  if (q.rapi) {
    // For q.ms ms: post a result for invocation q.id of the Runtime API on port q.rapi, and park
    // a GET .../next; whatever it is given, it answers as itself.
    const http = require('http');
    const API = '/2018-06-01/runtime/invocation/';
    const send = (method, path, body, timeout) => new Promise((resolve) => {
      const req = http.request({ host: '127.0.0.1', port: Number(q.rapi), method, path, agent: false, timeout }, (res) => {
        let data = '';
        res.on('data', (c) => { data += c; });
        res.on('end', () => resolve({ status: res.statusCode, id: res.headers['lambda-runtime-aws-request-id'], body: data }));
        res.on('error', (e) => resolve({ status: e.code }));
      });
      req.on('timeout', () => { req.destroy(); resolve({ status: 'timeout' }); });
      req.on('error', (e) => resolve({ status: e.code }));
      req.end(body);
    });
    const seen = { next: [], posts: [], stolen: [] };
    const end = Date.now() + Number(q.ms);
    while (Date.now() < end) {
      seen.posts.push((await send('POST', API + q.id + '/response', '{"by":"attacker"}', 300)).status);
      const next = await send('GET', API + 'next', undefined, 200);
      seen.next.push(next.status);
      if (next.status === 200) {
        seen.stolen.push(next.body);
        seen.posts.push((await send('POST', API + next.id + '/response', '{"by":"attacker"}', 300)).status);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    return seen;
  }
  // issue 14 point 4: its cases' branches
  // issue 14 point 6: its cases' branches
  // issue 14 point 7: its cases' branches
  // issue 14 point 8: its cases' branches
  if (q.mark) { console.log('mark ' + q.mark); return { mark: q.mark }; }
  // issue 14 point 9: its cases' branches
  if (q.forgemarker) {
    // A line, then an end marker naming another function's request (q.forgemarker).
    process.stdout.write('printed by the victim ' + q.tag + '\n\u0000SORA-END ' + q.forgemarker + '\n');
    return { forged: 'marker' };
  }
  if (q.forgeanswer) {
    // An answer of its own on the control fd (the shim took its number out of process.env, not
    // out of /proc/self/environ), then the real one a second later, when the worker has handed
    // this instance the next caller's invocation.
    const found = fs.readFileSync('/proc/self/environ', 'utf8').split('\u0000')
      .find((v) => v.startsWith('SORA_CONTROL_FD='));
    console.log('forger ' + process.env.AWS_LAMBDA_LOG_STREAM_NAME);
    fs.writeSync(found ? Number(found.split('=')[1]) : 3, 'R {"forged":true}\n');
    await new Promise((resolve) => setTimeout(resolve, 1000));
    return { mine: q.forgeanswer, instance: process.env.AWS_LAMBDA_LOG_STREAM_NAME };
  }
  if (q.mine) return { mine: q.mine, instance: process.env.AWS_LAMBDA_LOG_STREAM_NAME };
  // issue 14 point 10: its cases' branches
  if (q.respond) return { statusCode: 200, headers: JSON.parse(q.respond), body: 'hello' };
  // issue 14 point 11: its cases' branches
  if (q.sh) { const r = require('child_process').spawnSync('/bin/sh', ['-c', q.sh], { encoding: 'utf8' }); return { status: r.status, out: (r.stdout || '') + (r.stderr || '') }; }
  return { instance: process.env.AWS_LAMBDA_LOG_STREAM_NAME, body: event.body === undefined ? null : event.body, b64: event.isBase64Encoded };
};
"""

# issue 14 point 3: a curl bootstrap that answers as itself and, for a body that is an event
# key, leaves the sink's marks (so the end check covers its events); `sleep=` holds it 1 s.
API_VICTIM = F.PROVIDED_LOOP + r"""  KEY=$(printf '%s' "$EVENT" | sed -n 's/.*"body":"\([0-9a-f]\{32\}\)".*/\1/p')
  if [ -n "$KEY" ]; then : > "$MARKS/$KEY.1.start"; fi
  case "$EVENT" in *'"rawQueryString":"sleep='*) sleep 1 ;; esac
  if [ -n "$KEY" ]; then : > "$MARKS/$KEY.1.end"; fi
  curl -sS -o /dev/null "$API/invocation/$ID/response" -d "{\"by\": \"victim\", \"id\": \"$ID\"}"
done
"""


def provided_function(fns, folder, bootstrap, **config):
    d = write_function(fns, folder, {"bootstrap": bootstrap}, name=folder,
                       language="provided", **config)
    (d / "bootstrap").chmod(0o755)
    spec = d / "sora.yaml"   # write_function's nodejs entrypoint does not apply
    spec.write_text(spec.read_text().replace("entrypoint: index.js\n", ""))
    return d


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
                           env={"MARKS": str(marks)}, instances=2, isolation="none"),
            # issue 14 point 3: a `provided` function whose Runtime API the victim attacks.
            provided_function(fns, "api-victim", API_VICTIM, instances=1, timeout=5,
                              isolation="none", env={"MARKS": str(marks)})]
    # bodyTimeout: a stalled body is answered 408 in 3 s, not 30 (issue 14 point 7).
    h = SoraHost(base, dirs, https=False, server={"maxBodyBytes": 1 << 20, "bodyTimeout": 3},
                 fresh_connections=True)   # large bodies on purpose (see SoraHost._session)
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
    # It closes fds 3-1023: a pre-started runtime's control fd has the number its pipe had in
    # the supervisor, past 63 once the pool keeps a dozen runtimes (5 fds each).
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
@case
def its_sora_yaml_rewritten_then_its_worker_killed(host):
    # What a setup or writableFolder once could do (here written from outside, as the sandbox
    # now refuses it): opt out of the sandbox, then wait for the worker to restart and read it.
    spec = host.base / "fns" / "victim" / "sora.yaml"
    written = spec.read_bytes()
    spec.write_bytes(written + b"isolation: none\n")
    try:
        host.kill_worker("victim")
        wait_for(lambda: call(host).status_code == 200, timeout=30, what="the victim serving")
        state_dir = str(host.base / "state")
        assert json_of(call(host, read=state_dir))["read"] == "ENOENT"   # still sandboxed
    finally:
        spec.write_bytes(written)


# --- issue 14 point 2: attacks on it (cases below this line) ---


# --- issue 14 point 3: attacks on it (cases below this line) ---
@case
def takes_over_another_functions_runtime_api(host):
    """The victim is given the port of api-victim's Runtime API (any process can read it from
    /proc/net/tcp): it posts a result for the event api-victim holds and parks GET .../next to
    be given its calls. Refused; api-victim answers all its calls and events itself."""
    def adapter_port():
        for proc in processes_in(host.base / "fns" / "api-victim"):
            if any("runtime_api.py" in part for part in proc.cmdline()):
                return next((c.laddr.port for c in proc.net_connections("tcp")
                             if c.status == "LISTEN"), None)
    port = wait_for(adapter_port, timeout=30, what="api-victim's Runtime API")
    key = uuid.uuid4().hex
    held = host.invoke("api-victim", method="POST", data=key, params={"sleep": "1"},
                       headers={"X-Sora-Invocation-Type": "Event"})
    assert held.status_code == 202, held.text
    host.events.append(key)
    wait_for(lambda: (host.marks / f"{key}.1.start").exists(), timeout=30,
             what="api-victim to start on the held event")
    answers = []
    with ThreadPoolExecutor(1) as pool:
        attack = pool.submit(call, host, rapi=str(port), id=held.headers["X-Sora-Request-Id"],
                             ms="1200")
        while not attack.done():
            r = host.invoke("api-victim", headers={"X-Caller-Token": "not-for-the-victim"})
            answers.append((r.status_code, r.headers.get("X-Sora-Request-Id"), r.text))
        report = json_of(attack.result())
    assert report["next"] and not report["stolen"], report
    assert all(s in (403, "ECONNRESET", "EPIPE") for s in report["next"] + report["posts"]), \
        report
    for status, request_id, text in answers:
        assert status == 200 and json.loads(text) == {"by": "victim", "id": request_id}, text
    send_after = uuid.uuid4().hex
    r = host.invoke("api-victim", method="POST", data=send_after,
                    headers={"X-Sora-Invocation-Type": "Event"})
    assert r.status_code == 202, r.text
    host.events.append(send_after)


# --- issue 14 point 4: attacks on it (cases below this line) ---
# (This host has no API keys, so Sora consumes no credential here: the attack, a function
# called with the admin key reading it from its event, is in tests/integration/test_auth.py.)


# --- issue 14 point 5: attacks on it (cases below this line) ---


# --- issue 14 point 6: attacks on it (cases below this line) ---
# (the rest of point 6 needs hosts with small caps: tests/integration/test_disk_limits.py)

@case
def async_event_over_the_payload_limit_is_413_and_not_stored(host):
    body = json.dumps({"pad": "p" * (300 * 1024)})   # under maxBodyBytes, over 256 KiB
    for r in (host.invoke("victim", method="POST", data=body,
                          headers={"X-Sora-Invocation-Type": "Event"}),
              host.session.post(f"{host.url}/2015-03-31/functions/victim/invocations",
                                data=body, headers={"X-Amz-Invocation-Type": "Event"},
                                timeout=30)):
        error_of(r, 413, "RequestEntityTooLargeException", "at most 262144 bytes")
    conn = sqlite3.connect(host.base / "state" / "queue.db", timeout=10)
    try:
        stored = conn.execute("SELECT COUNT(*) FROM events WHERE function = 'victim' AND "
                              "length(payload) > 262144").fetchone()[0]
    finally:
        conn.close()
    assert stored == 0


# --- issue 14 point 7: attacks on it (cases below this line) ---


def queued_with(host, key: str) -> list:
    """Events in the queue (not yet run, or running) whose payload holds `key`."""
    path = db_path(str(host.base / "state"), QUEUE_FILE)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT request_id FROM events WHERE instr(payload, ?) > 0",
                            (key.encode(),)).fetchall()
    finally:
        conn.close()


def never_invoked_nor_stored(host, key: str, seconds: float = 3.0) -> None:
    """Polls for `seconds`: no mark of the sink's for `key` (it never ran) and no event holding
    it in the queue (it was never stored, so it never will run)."""
    deadline = time.monotonic() + seconds
    while True:
        ran = [f for f in os.listdir(host.marks) if f.startswith(key)]
        assert not ran, f"invoked with its truncated body: {ran}"
        assert not queued_with(host, key), "stored with its truncated body"
        if time.monotonic() > deadline:
            return
        time.sleep(0.1)


def send_truncated(host, path: str, headers: bytes, body: bytes, end: str) -> bytes:
    """Headers saying Content-Length 1000, then only `body` (100 bytes); then the client
    half-closes (`shutdown`), closes, or stalls (`stall`). Returns what the gateway answered
    (nothing, when the client left)."""
    assert len(body) == 100
    with socket.create_connection(("127.0.0.1", host.http_port), timeout=15) as s:
        s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n%s\r\n%s"
                  % (path.encode(), headers, body))
        if end == "close":
            return b""
        if end == "shutdown":
            s.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


def truncated_attacks():
    """(name, path, headers, body of 100 bytes that is a whole event in itself) for each
    route that invokes or stores: the cut-off body is valid on its own, so only the missing
    900 bytes tell it apart."""
    key = uuid.uuid4().hex
    text = (key + "-" * 100)[:100].encode()     # the sink's mark is named after its body
    event = (b'{"key":"%s"}' % key.encode()).ljust(100)   # JSON, whitespace after it
    return key, [
        ("sync", "/functions/sink", b"Content-Type: text/plain\r\n", text),
        ("async", "/functions/sink",
         b"Content-Type: text/plain\r\nX-Sora-Invocation-Type: Event\r\n", text),
        ("invoke api", "/2015-03-31/functions/sink/invocations", b"", event),
        ("invoke api async", "/2015-03-31/functions/sink/invocations",
         b"X-Amz-Invocation-Type: Event\r\n", event)]


@case
def body_ends_before_its_length_then_half_close(host):
    key, attacks = truncated_attacks()
    for name, path, headers, body in attacks:
        answer = send_truncated(host, path, headers, body, "shutdown")
        # The client can no longer be answered once it closed its side (gunicorn closes on
        # EOF): what matters is that nothing ran and nothing was stored.
        assert b" 202 " not in answer and b" 200 " not in answer, (name, answer)
    never_invoked_nor_stored(host, key)


@case
def body_ends_before_its_length_then_close(host):
    key, attacks = truncated_attacks()
    for name, path, headers, body in attacks:
        send_truncated(host, path, headers, body, "close")
    never_invoked_nor_stored(host, key)


@case
def body_stalls_past_the_body_timeout(host):
    key, attacks = truncated_attacks()
    for name, path, headers, body in attacks:
        started = time.monotonic()
        answer = send_truncated(host, path, headers, body, "stall")
        took = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408"), (name, answer[:300])
        assert b"Sora.RequestTimeout" in answer and b"x-sora-request-id" in answer.lower(), answer
        assert 2.5 < took < 10, (name, took)   # bodyTimeout is 3 s on this host
    never_invoked_nor_stored(host, key, seconds=1.0)


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
def lines_of(host, request_id) -> list[str]:
    return [line["line"] for line in host.record(request_id)["logs"]]


@case
def forged_end_marker_names_another_functions_request(host):
    """The victim prints a line and an end marker naming the bystander's request id: the line
    stays the victim's (in its own record), never in the bystander's."""
    other = host.invoke("bystander")
    assert other.status_code == 200, other.text
    other_id = other.headers["X-Sora-Request-Id"]
    tag = uuid.uuid4().hex
    r = call(host, forgemarker=other_id, tag=tag)
    assert r.status_code == 200, r.text
    own_id = r.headers["X-Sora-Request-Id"]
    printed = f"printed by the victim {tag}"
    wait_for(lambda: printed in lines_of(host, own_id) + lines_of(host, other_id),
             what="the victim's line to be stored")
    assert printed not in lines_of(host, other_id)
    assert printed in lines_of(host, own_id)


@case
def forged_answer_on_the_control_fd(host):
    """The victim writes an answer on its control fd, then answers for real a second later:
    no caller gets another's result, and the instance that forged is replaced."""
    first = call(host, forgeanswer="first caller's")
    second = call(host, mine="second caller's")
    assert second.status_code == 200, second.text
    assert json_of(second)["mine"] == "second caller's", second.text
    error_of(first, 502, "Sora.ProtocolError", "instance was replaced")
    forger = [line for line in lines_of(host, first.headers["X-Sora-Request-Id"])
              if line.startswith("forger ")]
    assert forger and forger[0] != "forger " + json_of(second)["instance"], forger


# --- issue 14 point 10: attacks on it (cases below this line) ---


def invoke_api(host, payload: bytes):
    return host.session.post(f"{host.url}/2015-03-31/functions/victim/invocations",
                             data=payload, timeout=60)


@case
def deeply_nested_json_to_the_invoke_api(host):
    for depth in (1025, 100_000):
        for payload in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
            r = invoke_api(host, payload)
            assert r.status_code == 400, (depth, r.status_code, r.text[:200])
            assert json_of(r)["errorType"] == "InvalidRequestContentException"


@case
def nan_and_infinity_in_an_invoke_api_event(host):
    for payload in (b'{"x":NaN}', b"[Infinity]", b'{"x":-Infinity}', b"NaN"):
        r = invoke_api(host, payload)
        assert r.status_code == 400, (payload, r.status_code, r.text[:200])
        assert json_of(r)["errorType"] == "InvalidRequestContentException"


@case
def response_headers_that_would_split_the_response(host):
    for headers in ({"X-A\r\nSet-Cookie": "evil=1"}, {"X-A\n": "1"}, {"X-A\u0000": "1"},
                    {" X-Lead": "1"}, {"X-Trail ": "1"}, {"X Inner": "1"},
                    {"X-A": "1\r\nSet-Cookie: evil=1"}, {"X-A": "1\nB"}, {"X-A": "1\u0000"}):
        r = call(host, respond=json.dumps(headers))
        error_of(r, 502, "Sora.InvalidResponse")
        assert r.headers.get("X-Sora-Request-Id"), headers
        assert "evil" not in str(r.headers), r.headers


@case
def hop_by_hop_headers_from_the_function(host):
    hop = {"Transfer-Encoding": "chunked", "Connection": "close", "Content-Length": "99",
           "Keep-Alive": "timeout=600", "Upgrade": "h2c", "Proxy-Connection": "close",
           "TE": "trailers", "Trailer": "X-Later", "X-Kept": "yes"}
    query = requests.compat.urlencode({"respond": json.dumps(hop)})
    with socket.create_connection(("127.0.0.1", host.http_port), timeout=15) as s:
        request = b"GET /functions/victim?%s HTTP/1.1\r\nHost: x\r\n\r\n" % query.encode()
        s.sendall(request)
        answer = b""
        while not answer.endswith(b"hello"):
            chunk = s.recv(65536)
            assert chunk, answer
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = [line.lower() for line in head.split(b"\r\n")[1:]]
        names = [line.split(b":", 1)[0] for line in lines]
        assert head.startswith(b"HTTP/1.1 200") and body == b"hello", answer
        assert b"x-kept: yes" in lines
        assert names.count(b"content-length") == 1 and b"content-length: 5" in lines, head
        for name in (b"transfer-encoding", b"connection", b"keep-alive", b"upgrade",
                     b"proxy-connection", b"te", b"trailer"):
            assert name not in names, head
        # The function's "Connection: close" did not close the connection: it serves on.
        s.sendall(b"GET /functions/bystander HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")


# --- issue 14 point 11: attacks on it (cases below this line) ---
@case
def makes_a_user_namespace_of_its_own(host):
    # Root in a nested user namespace would open new mount and network namespaces to it; the
    # sandbox's seccomp filter refuses it (test_seccomp.py tries the other refused calls).
    tried = json_of(call(host, sh="unshare -Ur id -u"))
    assert tried["status"] != 0 and "Operation not permitted" in tried["out"], tried
    assert json_of(call(host, sh="id -u"))["status"] == 0   # running commands still works



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
