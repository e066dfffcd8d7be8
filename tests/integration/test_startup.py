"""Start-up that says what happens, and the CLI's details (issue 15, points 7 and 8).

A taken port ends the start at once, naming the port and its holder; "Sora is serving" comes
when the listeners answer, then each function's way to ready; a duplicate name is listed as
broken; SIGHUP reloads (nothing changed); expected orphans are reaped quietly; `sora logs` tells calls
apart; `sora ls` never cuts a reason; any status a function returns has its reason phrase.
"""
from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.integration import functions as F
from tests.support import SoraHost, processes_in, wait_for, write_function

pytestmark = pytest.mark.integration

SORA = [str(Path(sys.executable).parent / "sora")]


def sora(*args, env=None, timeout=60):
    return subprocess.run([*SORA, *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def test_a_taken_port_fails_the_start_at_once_naming_port_and_holder(tmp_path):
    fn = write_function(tmp_path / "fns", "hello", {"index.js": F.PROMISE}, name="hello")
    host = SoraHost(tmp_path, [fn], https=True)
    for taken in (host.http_port, host.https_port):
        # Another process holds the port (not this one: its pid must be the one named).
        holder = subprocess.Popen(
            [sys.executable, "-c", "import socket, time\n"
             f"s = socket.create_server(('127.0.0.1', {taken}))\nprint('ok', flush=True)\n"
             "time.sleep(120)"], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "ok"
            started = time.monotonic()
            run = subprocess.run([sys.executable, "-m", "sora.supervisor.cli", "start",
                                  "--config", str(host.config_path)],
                                 capture_output=True, text=True, timeout=15)
            took = time.monotonic() - started
        finally:
            holder.kill()
            holder.wait()
        out = run.stdout + run.stderr
        assert run.returncode != 0, out
        # Before, it announced "serving" and failed ~20 s later; now it fails before any
        # child starts (~1 s; 10 s leaves room for a loaded machine).
        assert took < 10, f"took {took:.1f}s:\n{out}"
        setting = "httpPort" if taken == host.http_port else "httpsPort"
        assert f"server.{setting}: expected a free port, but 127.0.0.1:{taken} is already " \
               f"in use by pid {holder.pid} (python" in out, out
        assert "Sora is serving" not in out and "RUNNING" not in out, out
        assert host.leftover_processes() == []


def test_progress_duplicates_sighup_and_quiet_reaping(tmp_path):
    fns = tmp_path / "fns"
    dirs = [
        # Its setup runs until the test lets it end: it is still running when the host
        # announces itself, however slowly the gateways start. (Unsandboxed: its setup works
        # in the folder itself, not in a copy, and sees the file the test makes there.)
        write_function(fns, "slow", {"index.js": F.PROMISE}, name="slow", isolation="none",
                       setup=["while [ ! -e go ]; do sleep 0.1; done"]),
        write_function(fns, "load-throws", {"index.js": F.LOAD_THROWS}, name="load-throws"),
        write_function(fns, "hello", {"index.js": F.PROMISE}, name="hello"),
        write_function(fns, "hello-copy", {"index.js": F.PROMISE}, name="hello"),
    ]
    host = SoraHost(tmp_path, dirs, https=False)
    host.start(wait_functions=["hello"], timeout=90)
    try:
        wait_for(lambda: "function slow: setup running for " in host.log(whole=True),
                 timeout=30, what="the setup's progress line")
        (dirs[0] / "go").touch()
        summary = "2 of 3 function(s) ready"
        wait_for(lambda: summary in host.log(whole=True), timeout=30, what="the summary line")
        log = host.log(whole=True)
        serving = log.index("Sora is serving")
        # What the host still waits for, then each function's way, in order, after "serving".
        assert "waiting for" in log[serving:].splitlines()[0] + log[serving:serving + 2000]
        setup_line = log.index("function slow: setup running for ", serving)
        assert "'while [ ! -e go ]" in log[setup_line:log.index("\n", setup_line)]
        assert log.index("function slow: ready after ", serving) > setup_line
        assert log.index("function hello: ready after ", serving) > serving
        fatal = log.index("function load-throws: FATAL: ", serving)
        assert "cannot start: missing DATABASE_URL" in log[fatal:log.index("\n", fatal)]
        assert log.index(summary) > fatal and "FATAL: load-throws" in log[log.index(summary):]

        # The duplicate is listed as broken, under its name and folder, naming both folders.
        health = host.health()["functions"]
        assert health["hello"]["state"] == "RUNNING"
        duplicate = health["hello (hello-copy)"]
        assert duplicate["state"] == "FATAL"
        assert str(dirs[2] / "sora.yaml") in duplicate["reason"]
        assert str(dirs[3] / "sora.yaml") in duplicate["reason"]

        # `sora ls` shows it, and wraps its long reason at a narrow terminal, never cutting it.
        narrow = sora("ls", "--host", host.url, env={"COLUMNS": "80"})
        assert narrow.returncode == 0, narrow.stderr
        assert "hello (hello-copy)" in narrow.stdout and "…" not in narrow.stdout
        squeezed = re.sub(r"\s+", "", narrow.stdout)
        for reason in (duplicate["reason"], health["load-throws"]["reason"]):
            assert re.sub(r"\s+", "", reason) in squeezed, narrow.stdout
        longest = max(len(line) for line in narrow.stdout.splitlines())
        assert longest <= 80, narrow.stdout
        wide = sora("ls", "--wide", "--host", host.url, env={"COLUMNS": "80"})
        assert any(duplicate["reason"] in line for line in wide.stdout.splitlines())

        # SIGHUP: a reload (issue 17); nothing changed, and the host goes on serving.
        host.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload done: nothing changed" in host.log(whole=True), timeout=10,
                 what="the reload's line")
        assert host.proc.poll() is None
        assert host.invoke("hello").status_code == 200

        # A killed worker's runtime is re-parented to the supervisor and reaped: expected, so
        # not at info level.
        runtimes = processes_in(dirs[2])
        assert runtimes, "the worker has a runtime after a call"
        host.kill_worker("hello")
        for runtime in runtimes:
            wait_for(lambda: not psutil.pid_exists(runtime.pid), timeout=15,
                     what=f"runtime {runtime.pid} reaped")
        assert "reaped orphaned process" not in host.log(whole=True)
    finally:
        assert host.stop() == 0
    assert "reaped orphaned process" not in host.log(whole=True)


def test_cli_logs_ids_and_reason_phrases(tmp_path):
    fns = tmp_path / "fns"
    dirs = [write_function(fns, "printer", {"index.js": F.PRINTER}, name="printer"),
            write_function(fns, "teapot", {"index.js": F.RESPONSE}, name="teapot")]
    host = SoraHost(tmp_path, dirs, https=False).start()
    try:
        # A status with a registered phrase and one with none, as the status line says them.
        conn = http.client.HTTPConnection("127.0.0.1", host.http_port, timeout=30)
        conn.request("GET", "/functions/teapot")
        resp = conn.getresponse()
        assert (resp.status, resp.reason) == (418, "I'm a Teapot")
        resp.read()
        conn.close()

        # Two calls a moment apart: their UUIDv7 ids share the first 8 characters.
        for _ in range(2):
            r = host.invoke("printer")
            assert r.status_code == 200, r.text

        def columns():
            out = sora("logs", "printer", "--host", host.url).stdout.splitlines()
            lines = [line for line in out if "hello from" in line]
            return lines if len(lines) == 2 else None
        lines = wait_for(columns, timeout=20, what="both calls' lines in sora logs")
        ids = [line.rsplit(" ", 1)[1] for line in lines]   # the function prints its id
        assert len(set(ids)) == 2 and ids[0][:8] == ids[1][:8], lines
        shown = [line.split()[1] for line in lines]   # the request-id column
        assert len(set(shown)) == 2, lines
        for called, column in zip(ids, shown):
            assert called.endswith(column), (called, column)
    finally:
        assert host.stop() == 0
