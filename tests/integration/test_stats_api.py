"""GET /api/stats and `sora top` against a real host: the figures of the calls made, the
status' items, the dead event, and who may see them."""
from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration import functions as F
from tests.support import SoraHost, wait_for, write_function

pytestmark = pytest.mark.integration

ADMIN = "stats-admin-key-0123456789"
INVOKER = "stats-invoke-key-0123456789"
SORA = [str(Path(sys.executable).parent / "sora")]


# A function whose load error (its FATAL reason, which `sora top` prints) is made of terminal
# escapes: set the clipboard (OSC 52), clear the screen.
HOSTILE = r"""
throw new Error('\u001b]52;c;ZXZpbA==\u0007\u001b[2J\u001b[Hpwned');
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("stats")
    fns = base / "fns"
    dirs = [write_function(fns, "tagged", {"index.js": F.TAGGED_PRINTER}, name="tagged",
                           eventInvoke={"maximumRetryAttempts": 0}),
            write_function(fns, "idle", {"index.js": F.TAGGED_PRINTER}, name="idle"),
            write_function(fns, "hostile", {"index.js": HOSTILE}, name="hostile")]
    keys = {"auth": {"apiKeys": [{"name": "ops", "key": ADMIN, "scopes": ["admin"]},
                                 {"name": "app", "key": INVOKER,
                                  "scopes": ["invoke:tagged"]}]}}
    host = SoraHost(base, dirs, https=False, extra=keys, api_key=ADMIN)
    host.start(wait_functions=["tagged", "idle"])
    yield host
    assert host.stop() == 0


@pytest.fixture(scope="module")
def hostile_fatal(host):
    return wait_for(lambda: (h := host.health()) and
                    h["functions"]["hostile"]["state"] == "FATAL" and
                    "pwned" in h["functions"]["hostile"].get("reason", "") and h,
                    timeout=60, what="hostile to go FATAL")


@pytest.fixture(scope="module")
def called(host):
    """Four calls of `tagged` (one failing) and one event that dies, then /api/stats once
    every record is in."""
    for query in ("ms=1", "ms=1", "ms=30", "fail=1"):
        host.invoke("tagged", "?" + query)
    event = host.invoke("tagged", "?fail=1", headers={"X-Sora-Invocation-Type": "Event"})
    assert event.status_code == 202

    def settled():
        body = host.session.get(f"{host.url}/api/stats", timeout=10).json()
        item = body["functions"]["tagged"]
        return item["calls"] == 5 and item["events"]["dead"] == 1 and body
    return wait_for(settled, 30, what="5 records of tagged and a dead event")


def test_stats_counts_the_calls_made(host, called):
    assert called["window"] == 3600 and called["until"] - called["since"] == 3600
    assert abs(called["until"] - time.time()) < 60
    tagged = called["functions"]["tagged"]
    assert tagged["state"] == "RUNNING" and tagged["errors"] == 2
    assert tagged["coldStarts"] >= 1
    # Each call sleeps 3 times `ms` (5 by default): the slowest is the 30 ms one.
    assert 0 < tagged["p50"] <= tagged["p99"] and tagged["p99"] >= 90
    assert tagged["events"] == {"queued": 0, "leased": 0, "dead": 1}
    idle = called["functions"]["idle"]
    assert idle["calls"] == 0 and idle["p50"] is None and idle["state"] == "RUNNING"
    # What /api/functions says of each function is there too (busy/idle/starting/queued
    # where the workers send them).
    listed = {f["name"]: f for f in
              host.session.get(f"{host.url}/api/functions", timeout=10).json()["functions"]}
    for key in ("instances", "busy", "idle", "starting", "queued"):
        if key in listed["tagged"]:
            assert key in tagged


def test_a_window_too_short_has_none_of_them(host, called):
    wait_for(lambda: host.session.get(f"{host.url}/api/stats", params={"window": 1},
                                      timeout=10).json()["functions"]["tagged"]["calls"] == 0,
             10, what="a second without calls")
    assert host.session.get(f"{host.url}/api/stats", params={"window": 10**9},
                            timeout=10).status_code == 400


def test_only_an_admin_key_sees_the_figures(host):
    import requests
    url = f"{host.url}/api/stats"
    assert requests.get(url, timeout=10).status_code == 401
    refused = requests.get(url, headers={"Authorization": f"Bearer {INVOKER}"}, timeout=10)
    assert refused.status_code == 403 and "tagged" not in refused.text


def sora(*args, timeout=60):
    return subprocess.run([*SORA, *args], capture_output=True, text=True, timeout=timeout)


def test_sora_top_once_and_json(host, called):
    once = sora("top", "--once", "--host", host.url, "--api-key", ADMIN)
    assert once.returncode == 0, once.stderr
    rows = {line.split()[0]: line.split() for line in once.stdout.splitlines()[3:]
            if line.strip()}
    assert rows["tagged"][1] == "RUNNING" and rows["tagged"][3:5] == ["5", "2"]
    assert rows["idle"][3:5] == ["0", "0"] and "\x1b" not in once.stdout
    as_json = sora("top", "--json", "--host", host.url, "--api-key", ADMIN)
    assert json.loads(as_json.stdout)["functions"]["tagged"]["calls"] == 5
    refused = sora("top", "--once", "--host", host.url, "--api-key", INVOKER)
    assert refused.returncode == 1 and "Sora.Forbidden" in refused.stderr


def test_a_functions_escapes_never_reach_the_terminal(host, hostile_fatal):
    once = sora("top", "--once", "--host", host.url, "--api-key", ADMIN)
    assert once.returncode == 0, once.stderr
    assert "\x1b" not in once.stdout and "\x07" not in once.stdout
    assert "hostile: " in once.stdout and "\\x1b]52;c;ZXZpbA==\\x07" in once.stdout
    item = host.session.get(f"{host.url}/api/stats", timeout=10).json()["functions"]["hostile"]
    assert item["state"] == "FATAL" and item["calls"] == 0


def test_sora_top_live_in_a_terminal_quits_on_q(host, called, hostile_fatal):
    master, slave = pty.openpty()
    proc = subprocess.Popen([*SORA, "top", "--host", host.url, "--api-key", ADMIN,
                             "--interval", "0.5"], stdin=slave, stdout=slave, stderr=slave,
                            env=dict(os.environ, COLUMNS="120", LINES="30"))
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while seen.count(b"tagged") < 2 and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 65536)
        assert seen.count(b"tagged") >= 2, seen[-2000:]   # two frames drawn
        os.write(master, b"q")
        assert proc.wait(10) == 0
        while select.select([master], [], [], 0.2)[0]:
            try:
                seen += os.read(master, 65536)
            except OSError:   # the terminal's last process is gone
                break
        assert seen.startswith(b"\x1b[?1049h") and seen.endswith(b"\x1b[?25h\x1b[?1049l")
        # The hostile reason's escapes are shown as text (cut to the terminal's width).
        assert b"hostile: " in seen and b"\x1b]52" not in seen and b"\x1b[2J" not in seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
