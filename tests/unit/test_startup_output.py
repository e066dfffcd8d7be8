"""Start-up progress lines, listener binding, reason phrases and the CLI's tables (unit tests;
tests/integration/test_startup.py runs them on a real host)."""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

import pytest

from sora.cli import main as cli
from sora.config import HostConfig, ServerConfig
from sora.gateway import reason_phrases
from sora.supervisor import listeners
from sora.supervisor.child import State
from sora.supervisor.progress import FunctionProgress as F, StartupProgress


def texts(lines):
    return [text for _, text in lines]


def test_progress_tells_what_each_function_waits_for_then_ready_or_fatal_then_sums_up():
    progress = StartupProgress(["a", "b", "c"], started=100.0, every=15.0)
    first = progress.lines(101.0, [F("a", State.SETUP, setup_command="npm ci",
                                     setup_log="/s/a.log"),
                                   F("b", State.STARTING), F("c", State.SETUP)])
    assert texts(first) == ["function a: setup running for 1s: 'npm ci' (log: /s/a.log)",
                            "function b: worker starting for 1s",
                            "function c: setup running for 1s"]
    # Nothing new until the next report is due, however often the loop asks.
    assert progress.lines(110.0, [F("a", State.SETUP, setup_command="npm ci"),
                                  F("b", State.STARTING), F("c", State.SETUP)]) == []
    assert texts(progress.lines(116.0, [F("a", State.SETUP, setup_command="npm ci"),
                                        F("b", State.RUNNING), F("c", State.SETUP)])) == [
        "function a: setup running for 16s: 'npm ci'", "function b: ready after 16s",
        "function c: setup running for 16s"]
    last = progress.lines(120.0, [F("a", State.FATAL, "setup command 'npm ci' failed"),
                                  F("b", State.RUNNING), F("c", State.RUNNING)])
    assert last == [(logging.ERROR, "function a: FATAL: setup command 'npm ci' failed"),
                    (logging.INFO, "function c: ready after 20s"),
                    (logging.ERROR, "2 of 3 function(s) ready after 20s; FATAL: a "
                                    "(`sora ls` shows why)")]
    assert progress.summed_up
    # Said once: a restart later is the transitions' business.
    assert progress.lines(200.0, [F("a", State.FATAL), F("b", State.BACKOFF),
                                  F("c", State.RUNNING)]) == []


def config(tmp_path, http: int, https: int | None = None) -> HostConfig:
    return HostConfig(path=str(tmp_path / "host-config.yaml"), stateDir=str(tmp_path),
                      server=ServerConfig(httpPort=http, httpsPort=https, sslCertPath=None,
                                          sslKeyPath=None, bind="127.0.0.1",
                                          gatewayWorkers=1, maxBodyBytes=1,
                                          gracefulTimeout=1.0))


def test_a_taken_port_is_refused_naming_setting_port_and_holder(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as free_one:
        free = free_one.getsockname()[1]
    holder = subprocess.Popen([sys.executable, "-c", "import socket, time\n"
                               "s = socket.create_server(('127.0.0.1', 0))\n"
                               "print(s.getsockname()[1], flush=True)\ntime.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        taken = int(holder.stdout.readline())
        with pytest.raises(listeners.ListenerUnavailable) as caught:
            listeners.bind_all(config(tmp_path, http=free, https=taken))
        assert str(caught.value) == (
            f"{tmp_path}/host-config.yaml: server.httpsPort: expected a free port, but "
            f"127.0.0.1:{taken} is already in use by pid {holder.pid} "
            f"({listeners._name_of(holder.pid)})")
        # The one bound before it was let go: the port is free again.
        with socket.create_server(("127.0.0.1", free)):
            pass
    finally:
        holder.kill()
        holder.wait()
    bound = listeners.bind_all(config(tmp_path, http=free))
    try:
        assert bound["http"].getsockname() == ("127.0.0.1", free)
    finally:
        listeners.close_all(bound)
    assert bound == {}


def test_every_status_has_a_reason_phrase():
    assert reason_phrases.phrase(418) == "I'm a Teapot"
    assert reason_phrases.phrase(429) == "Too Many Requests"
    assert reason_phrases.phrase(299) == "Successful"
    assert reason_phrases.phrase(499) == "Client Error"
    assert reason_phrases.phrase(599) == "Server Error"
    from gunicorn.asgi import protocol
    reason_phrases.install()
    assert protocol._get_cached_status_line((1, 1), 418) == b"HTTP/1.1 418 I'm a Teapot\r\n"
    assert protocol._get_cached_status_line((1, 1), 298) == b"HTTP/1.1 298 Successful\r\n"
    assert protocol._REASON_PHRASES[404] == "Not Found"   # gunicorn's own are kept


def test_ls_table_wraps_the_reason_and_never_cuts_it(capsys):
    reason = ("/srv/functions/orders-copy/sora.yaml: name: expected a name unique on this "
              "host, got 'orders' (already used by /srv/functions/orders/sora.yaml)")
    rows = [["orders", "RUNNING", "pid 7 ready after 1.20s"], ["orders (orders-copy)",
                                                               "FATAL", reason]]
    for width in (60, 100, 36):
        cli.table(rows, ["NAME", "STATE", "REASON"], wrap_at=width)
        out = capsys.readouterr().out
        assert max(len(line) for line in out.splitlines()) <= width, out
        assert "".join(reason.split()) in "".join(out.split()), out
    cli.table(rows, ["NAME", "STATE", "REASON"], wrap_at=None)   # --wide
    assert reason in capsys.readouterr().out


def test_log_lines_show_the_whole_request_id():
    ids = ["019ab8f2-6c4e-7d3a-9f10-2b7c1e5a4d01", "019ab8f2-6c4e-7e01-8a77-90d1c3b2e4f5"]
    shown = [cli.log_line({"time": 0.0, "requestId": i, "stream": "stdout", "line": "x"})
             .split()[1] for i in ids]
    assert shown == ids


def test_orphans_are_reaped_quietly_after_an_exit_and_told_otherwise(tmp_path, caplog,
                                                                     monkeypatch):
    from sora.supervisor import arbiter as a
    arbiter = a.Arbiter(config(tmp_path, http=8080))
    made: list[int] = []
    real_process = a.psutil.Process

    class OurProcess:   # the sweep sees only the orphans made here, not pytest's children
        def children(self):
            return [real_process(pid) for pid in made if a.psutil.pid_exists(pid)]
    monkeypatch.setattr(a.psutil, "Process", OurProcess)

    def orphan() -> int:
        # Our child but none of the arbiter's: as a process re-parented to the supervisor.
        made.append(subprocess.Popen(["sleep", "60"], start_new_session=True).pid)
        return made[-1]

    caplog.set_level(logging.DEBUG, logger="sora.supervisor")
    quiet = orphan()
    arbiter._last_exit_at = a.time.monotonic()   # one of its children has just exited
    arbiter.reap_orphans()
    told = orphan()
    arbiter._last_exit_at = a.time.monotonic() - a.ORPHANS_EXPECTED_FOR - 1
    arbiter.reap_orphans()
    levels = {r.getMessage(): r.levelno for r in caplog.records if "reaped" in r.getMessage()}
    assert levels == {f"reaped orphaned process {quiet} (sleep)": logging.DEBUG,
                      f"reaped orphaned process {told} (sleep), left behind by a process "
                      "that exited": logging.INFO}
    os.close(arbiter._wake_r)
    os.close(arbiter._wake_w)
