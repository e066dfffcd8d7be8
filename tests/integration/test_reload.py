"""Live reload (issue 17 points 1 and 2) with the real supervisor, gateways and workers:
a code change under a steady load of keep-alive calls and async events with no failed call and
only the new code answering within 1 s of the reload's answer; added and removed functions
(in-flight calls finish, then 404); a broken sora.yaml, a failing setup and a syntax error
keeping the previous code serving and reported; `needsRestart`; API keys and a renewed TLS
certificate applied live; SIGHUP, `sora-supervisor reload` and `POST /api/reload` (admin key
only); and what a function cannot do to a reload."""
from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time

import pytest
import requests
import yaml

from sora import protocol as p
from sora.control import admin
from sora.isolation import sandbox
from tests.support import SoraHost, json_of, make_cert, wait_for, write_function

pytestmark = pytest.mark.integration

VERSIONED = """
const fs = require('fs');
const version = fs.readFileSync(__dirname + '/version.txt', 'utf8').trim();
exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  await new Promise((r) => setTimeout(r, Number(q.ms || 5)));
  return { version };
};
"""


def versioned(base, name: str, version: str, **config):
    config.setdefault("auth", "none")
    return write_function(base / "fns", name, {"index.js": VERSIONED, "version.txt": version},
                          name=name, **config)


def set_version(folder, version: str) -> None:
    # As an editor saves: a new file renamed over the old one.
    (folder / "version.txt.new").write_text(version)
    os.replace(folder / "version.txt.new", folder / "version.txt")


def reload_cli(host: SoraHost, *args: str) -> tuple[int, dict]:
    out = subprocess.run([sys.executable, "-m", "sora.supervisor.cli", "reload", "--config",
                          str(host.config_path), *args], capture_output=True, text=True,
                         timeout=120)
    try:
        report = json.loads(out.stdout)
    except ValueError:
        raise AssertionError(f"no report: {out.stdout!r} {out.stderr!r}\n{host.log()}")
    return out.returncode, report


def rewrite_config(host: SoraHost, **changes) -> dict:
    config = yaml.safe_load(host.config_path.read_text())
    for key, value in changes.items():
        if key == "server":
            config["server"].update(value)
        else:
            config[key] = value
    host.config_path.write_text(yaml.safe_dump(config))
    return config


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("reload")
    dirs = [versioned(base, "greet", "v1", maxInstances=4, concurrency=4),
            versioned(base, "slow", "s1"),
            versioned(base, "fails", "f1"),
            write_function(base / "fns", "mend", {"index.js": "exports.handler = ;\n"},
                           name="mend", auth="none")]
    host = SoraHost(base, dirs, https=False)
    host.start(wait_functions=["greet", "slow", "fails"])
    yield host
    assert host.stop() == 0
    assert host.leftovers() == []


class Load:
    """`threads` keep-alive clients calling one URL back to back; each call's (sent, done,
    status, version)."""

    def __init__(self, url: str, threads: int = 8):
        self.url = url
        self.calls: list[tuple[float, float, int, str]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run) for _ in range(threads)]

    def run(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    r = session.get(self.url, timeout=30)
                    status, body = r.status_code, r.text
                except requests.RequestException as exc:
                    status, body = 0, repr(exc)
                version = json_of_text(body).get("version", body) if status == 200 else body
                self.calls.append((sent, time.monotonic(), status, version))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)


def delivered(host: SoraHost, request_id: str) -> dict:
    """The event's record once it ran ok (an event's record exists from its acceptance)."""
    return wait_for(lambda: (r := host.record(request_id))["status"] == "ok" and r,
                    timeout=30, what=f"event {request_id} delivered ok")


def json_of_text(text: str) -> dict:
    try:
        value = json.loads(text)
        return value if isinstance(value, dict) else {}
    except ValueError:
        return {}


def test_a_code_change_under_load_fails_no_call_and_only_the_new_code_answers_soon(host):
    folder = host.base / "fns" / "greet"
    events: list[str] = []
    refused: list[tuple[int, str]] = []

    def send_events(stop: threading.Event) -> None:
        with requests.Session() as session:
            while not stop.is_set():
                r = session.post(f"{host.url}/functions/greet", data=b"{}", timeout=30,
                                 headers={"X-Sora-Invocation-Type": "Event"})
                if r.status_code == 202:
                    events.append(r.json()["requestId"])
                else:
                    refused.append((r.status_code, r.text))
                time.sleep(0.02)

    stop_events = threading.Event()
    sender = threading.Thread(target=send_events, args=(stop_events,))
    with Load(f"{host.url}/functions/greet") as load:
        sender.start()
        time.sleep(1.5)
        started = time.monotonic()
        set_version(folder, "v2")
        # In this process, so `answered` is when the answer came (not a command's exit).
        report = admin.request(str(host.base / "state"), admin.OP_RELOAD, {}, timeout=120)
        answered = time.monotonic()
        time.sleep(2.5)
    stop_events.set()
    sender.join(30)
    assert report["functions"]["greet"] == {"action": "replaced"}, report
    assert report["functions"]["slow"] == {"action": "unchanged"}
    assert report["needsRestart"] == [] and report["errors"] == []
    failed = [c for c in load.calls if c[2] != 200]
    assert not failed, f"{len(failed)} of {len(load.calls)} calls failed: {failed[:5]}"
    assert {c[3] for c in load.calls if c[1] < started} == {"v1"}
    late = [c for c in load.calls if c[0] >= answered + 1.0]
    assert late and {c[3] for c in late} == {"v2"}, \
        [c for c in late if c[3] != "v2"][:5]
    assert not refused and len(events) > 50
    # Every event accepted around the switch is delivered, none failed.
    for request_id in events:
        delivered(host, request_id)
    health = host.function_state("greet")
    assert health["reload"]["state"] == "done" and health["generation"] >= 2


def test_sighup_starts_an_added_function(host):
    added = versioned(host.base, "added", "a1")
    rewrite_config(host, functionPaths=[*(str(d) for d in host.function_dirs), str(added)])
    host.function_dirs.append(added)
    os.kill(host.proc.pid, signal.SIGHUP)
    r = wait_for(lambda: (r := host.invoke("added")).status_code == 200 and r, timeout=30,
                 what="the added function to answer")
    assert r.json() == {"version": "a1"}
    assert host.function_state("added")["state"] == "RUNNING"
    # The dispatcher learnt it too (MEMBERS), without a restart: its events run.
    event = host.session.post(f"{host.url}/functions/added", data=b"{}", timeout=30,
                              headers={"X-Sora-Invocation-Type": "Event"})
    assert event.status_code == 202
    delivered(host, event.json()["requestId"])
    assert "reload done: added added" in host.log(whole=True)


def test_a_removed_function_finishes_its_calls_then_is_not_found(host):
    results: list[int] = []

    def call():
        results.append(host.session.get(f"{host.url}/functions/slow?ms=1500",
                                         timeout=30).status_code)
    callers = [threading.Thread(target=call) for _ in range(3)]
    for t in callers:
        t.start()
    wait_for(lambda: host.function_state("slow")["inFlight"] >= 3, timeout=10,
             what="three calls in flight")
    remaining = [str(d) for d in host.function_dirs if d.name != "slow"]
    rewrite_config(host, functionPaths=remaining)
    host.function_dirs = [d for d in host.function_dirs if d.name != "slow"]
    r = host.session.post(f"{host.url}/api/reload", timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["functions"]["slow"] == {"action": "removed"}
    # New calls are not found at once, while the calls in flight finish.
    gone = host.invoke("slow")
    assert gone.status_code == 404, gone.text
    for t in callers:
        t.join(30)
    assert results == [200, 200, 200]
    wait_for(lambda: "slow" not in host.health()["functions"], timeout=20,
             what="slow to leave the health listing")
    assert host.invoke("slow").status_code == 404


@pytest.mark.parametrize("breakage", ["invalid sora.yaml", "syntax error", "failing setup"])
def test_a_broken_change_keeps_the_previous_code_serving_and_is_reported(host, breakage):
    folder = host.base / "fns" / "fails"
    spec = (folder / "sora.yaml").read_text()
    code = (folder / "index.js").read_text()
    before = host.invoke("fails").json()["version"]
    set_version(folder, "f-new")
    if breakage == "invalid sora.yaml":
        (folder / "sora.yaml").write_text(spec + "timeout: soon\n")
        expected = "timeout"
    elif breakage == "syntax error":
        (folder / "index.js").write_text(code + "\nexports.x = ;\n")
        expected = "SyntaxError"
    else:
        (folder / "sora.yaml").write_text(spec + "setup: ['exit 3']\n")
        expected = "setup failed"
    try:
        status, report = reload_cli(host, "--function", "fails")
        assert status == 1, report
        entry = report["functions"]["fails"]
        assert entry["action"] == "failed" and expected in entry["reason"], entry
        assert host.invoke("fails").json() == {"version": before}
        health = host.function_state("fails")
        assert health["state"] == "RUNNING"
        assert health["reload"]["state"] == "failed"
        assert health["reload"]["serving"] == "previous"
        assert expected in health["reload"]["reason"]
        listed = {f["name"]: f for f in host.session.get(f"{host.url}/api/functions",
                                                         timeout=10).json()["functions"]}
        assert "reload failed" in listed["fails"]["reason"]   # what `sora ls` shows
        assert "fails" in host.log(whole=True).split("reload: function fails:")[-1]
    finally:
        (folder / "sora.yaml").write_text(spec)
        (folder / "index.js").write_text(code)
    status, report = reload_cli(host, "--function", "fails")
    assert status == 0 and report["functions"]["fails"]["action"] == "replaced", report
    assert host.invoke("fails").json() == {"version": "f-new"}
    assert host.function_state("fails")["reload"]["state"] == "done"


def test_the_previous_code_serves_while_a_long_setup_runs(host):
    folder = host.base / "fns" / "fails"
    spec = (folder / "sora.yaml").read_text()
    before = host.invoke("fails").json()["version"]
    log_from = len(host.log(whole=True))
    (folder / "sora.yaml").write_text(spec + "setup: ['sleep 4']\n")
    set_version(folder, "after-setup")
    answer: list = []
    reloading = threading.Thread(target=lambda: answer.append(reload_cli(host, "--function",
                                                                         "fails")))
    reloading.start()
    try:
        wait_for(lambda: host.function_state("fails").get("reload", {}).get("state") ==
                 "switching", timeout=10, what="the switch to start")
        # The setup runs for seconds (the supervisor's orphan sweep must leave it alone);
        # the previous generation answers meanwhile.
        for _ in range(3):
            assert host.invoke("fails").json() == {"version": before}
            time.sleep(0.5)
        # A second reload while the switch runs, with nothing changed since it began, waits
        # for that switch rather than starting it over.
        status, second = reload_cli(host, "--function", "fails")
        assert status == 0 and second["functions"]["fails"] == {"action": "replaced"}, second
        reloading.join(60)
        status, report = answer[0]
        assert status == 0 and report["functions"]["fails"] == {"action": "replaced"}, report
        assert host.log(whole=True)[log_from:].count("reload: function fails changed") == 1
        assert host.invoke("fails").json() == {"version": "after-setup"}
        assert "setup command 'sleep 4'" not in host.log(whole=True)
    finally:
        reloading.join(60)
        (folder / "sora.yaml").write_text(spec)
        assert reload_cli(host, "--function", "fails")[0] == 0


def test_a_function_fatal_since_the_start_is_mended_by_a_reload(host):
    wait_for(lambda: host.function_state("mend")["state"] == "FATAL", timeout=30,
             what="mend to be FATAL")
    folder = host.base / "fns" / "mend"
    (folder / "index.js").write_text("exports.handler = async () => ({mended: true});\n")
    status, report = reload_cli(host, "--function", "mend")
    assert status == 0 and report["functions"]["mend"] == {"action": "replaced"}, report
    assert host.function_state("mend")["state"] == "RUNNING"
    assert host.invoke("mend").json() == {"mended": True}


def test_a_later_change_supersedes_a_switch_under_way(host):
    folder = host.base / "fns" / "fails"
    spec = (folder / "sora.yaml").read_text()
    (folder / "sora.yaml").write_text(spec + "setup: ['sleep 3']\n")
    set_version(folder, "first")
    answer: list = []
    reloading = threading.Thread(target=lambda: answer.append(reload_cli(host, "--function",
                                                                         "fails")))
    reloading.start()
    try:
        wait_for(lambda: host.function_state("fails").get("reload", {}).get("state") ==
                 "switching", timeout=10, what="the switch to start")
        set_version(folder, "second")
        status, report = reload_cli(host, "--function", "fails")
        assert status == 0 and report["functions"]["fails"] == {"action": "replaced"}, report
        reloading.join(60)
        status, first = answer[0]
        assert status == 1 and first["functions"]["fails"] == {
            "action": "failed", "reason": "superseded by a later reload"}, first
        assert host.invoke("fails").json() == {"version": "second"}
    finally:
        reloading.join(60)
        (folder / "sora.yaml").write_text(spec)
        assert reload_cli(host, "--function", "fails")[0] == 0


def test_reload_arguments_are_checked(host):
    r = host.session.post(f"{host.url}/api/reload", data=b'{"setup": "sometimes"}', timeout=30)
    assert r.status_code == 400 and json_of(r)["errorType"] == "InvalidParameterValueException"
    r = host.session.post(f"{host.url}/api/reload", data=b'[1]', timeout=30)
    assert r.status_code == 400
    status, report = reload_cli(host, "--function", "nosuch")
    assert status == 1 and report["functions"]["nosuch"]["action"] == "failed"


# --- host-level settings, keys and certificates ---------------------------------------------
ADMIN_KEY, INVOKE_KEY, NEW_KEY = "admin-key-0123456789", "invoke-key-0123456789", \
    "later-key-0123456789"


@pytest.fixture
def keyed(tmp_path):
    fn = versioned(tmp_path, "hello", "h1", auth="apiKey")
    host = SoraHost(tmp_path, [fn], https=True, api_key=ADMIN_KEY, extra={"auth": {"apiKeys": [
        {"name": "ops", "scopes": ["admin"], "key": ADMIN_KEY},
        {"name": "caller", "scopes": ["invoke"], "key": INVOKE_KEY}]}})
    host.start()
    yield host
    assert host.stop() == 0


def test_api_reload_needs_the_admin_key(keyed):
    url = f"{keyed.url}/api/reload"
    assert requests.post(url, timeout=30).status_code == 401
    assert requests.post(url, headers={"Authorization": f"Bearer {INVOKE_KEY}"},
                         timeout=30).status_code == 403
    r = requests.post(url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60)
    assert r.status_code == 200 and r.json()["functions"]["hello"] == {"action": "unchanged"}


def test_host_settings_apply_live_or_are_reported_as_needing_a_restart(keyed):
    config = yaml.safe_load(keyed.config_path.read_text())
    keys = config["auth"]["apiKeys"] + [{"name": "new", "scopes": ["invoke"], "key": NEW_KEY}]
    rewrite_config(keyed, server={"httpPort": keyed.http_port + 1, "gatewayWorkers": 2},
                   auth={"apiKeys": keys})
    new_key = {"Authorization": f"Bearer {NEW_KEY}"}
    assert requests.get(f"{keyed.url}/functions/hello", headers=new_key,
                        timeout=10).status_code == 401
    status, report = reload_cli(keyed)
    assert status == 0, report
    assert report["needsRestart"] == ["server.gatewayWorkers", "server.httpPort"]
    assert "server.httpPort" in keyed.log(whole=True).split("reload:")[-1] or \
        "needs a restart: server.gatewayWorkers, server.httpPort" in keyed.log(whole=True)
    # The key is live once the gateway's new workers serve (gunicorn's SIGHUP).
    wait_for(lambda: requests.get(f"{keyed.url}/functions/hello", headers=new_key,
                                  timeout=10).status_code == 200, timeout=30,
             what="the new key to be accepted")
    assert requests.get(f"{keyed.url}/healthz", timeout=10).status_code == 200   # same port


def test_a_renewed_certificate_is_served_after_a_reload(keyed):
    def served_cert() -> bytes:
        context = ssl.create_default_context(cafile=str(keyed.cert))
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        import socket
        with socket.create_connection(("127.0.0.1", keyed.https_port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                return tls.getpeercert(binary_form=True)
    before = served_cert()
    renewed = keyed.base / "renewed"
    renewed.mkdir()
    cert, key = make_cert(renewed)
    os.replace(cert, keyed.cert)
    os.replace(key, keyed.base / "key.pem")
    status, report = reload_cli(keyed)
    assert status == 0 and report["needsRestart"] == [], report
    after = wait_for(lambda: (c := served_cert()) != before and c, timeout=30,
                     what="the renewed certificate")
    assert after == ssl.PEM_cert_to_DER_cert(keyed.cert.read_text())


# --- what a function cannot do --------------------------------------------------------------
PROBE = r"""
const net = require('net');
exports.handler = async (event) => {
  const path = process.env.ADMIN_SOCKET;
  return await new Promise((resolve) => {
    const s = net.connect({ path });
    s.once('connect', () => { s.destroy(); resolve('connected'); });
    s.once('error', (e) => resolve(e.code));
  });
};
"""


@pytest.mark.skipif(not sandbox.available(), reason="bubblewrap is not installed")
def test_a_function_can_neither_reach_the_admin_socket_nor_steer_a_reload(tmp_path):
    admin_socket = p.ipc_path(p.admin_endpoint(str(tmp_path / "state")))
    boxed = write_function(tmp_path / "fns", "boxed", {"index.js": PROBE}, name="boxed",
                           auth="none", env={"ADMIN_SOCKET": admin_socket})
    # Unsandboxed, its setup could write sora.yaml: a reload's setup that does is refused.
    sneaky = versioned(tmp_path, "sneaky", "n1", isolation="none")
    host = SoraHost(tmp_path, [boxed, sneaky], https=False)
    host.start()
    try:
        assert os.path.exists(admin_socket)
        assert host.invoke("boxed").json() in ("ENOENT", "EACCES")
        spec = (sneaky / "sora.yaml").read_text()
        (sneaky / "sora.yaml").write_text(
            spec + "setup: [\"printf 'isolation: sandbox\\\\n' >> sora.yaml\"]\n")
        set_version(sneaky, "n2")
        status, report = reload_cli(host)
        assert status == 1, report
        assert report["functions"]["sneaky"]["action"] == "failed"
        assert "changed sora.yaml" in report["functions"]["sneaky"]["reason"]
        assert host.invoke("sneaky").json() == {"version": "n1"}
        assert host.function_state("sneaky")["reload"]["serving"] == "previous"
    finally:
        assert host.stop() == 0
