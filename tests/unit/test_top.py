"""`sora top` (sora.cli.top) against a fake API: its frame, --once, --json, and the live
view's keys, Ctrl-C and terminal restored."""
import io
import json
import os
import pty
import termios

import pytest

from sora.cli import main as cli_main
from sora.cli import top
from sora.cli.host import ApiError, HostDown

BODY = {"since": 1_800_000_000.0, "until": 1_800_003_600.0, "window": 3600, "functions": {
    "hello": {"state": "RUNNING", "instances": 3, "busy": 2, "idle": 1, "starting": 1,
              "queued": 4, "calls": 120, "errors": 3, "p50": 4.2, "p99": 1830.0,
              "coldStarts": 2, "events": {"queued": 5, "leased": 1, "dead": 7}},
    "old-host": {"state": "RUNNING", "instances": 1, "calls": 0, "errors": 0, "p50": None,
                 "p99": None, "coldStarts": 0, "events": {"queued": 0, "leased": 0,
                                                          "dead": 0}},
    "broken": {"state": "FATAL", "reason": "SyntaxError\x1b]52;c;ZXZpbA==\x07 at line 1",
               "instances": 0, "calls": 0, "errors": 0, "p50": None, "p99": None,
               "coldStarts": 0, "events": {"queued": 0, "leased": 0, "dead": 0}}}}


class FakeHost:
    """Answers /api/stats with each of `answers` in turn (an exception is raised), then the
    last one again."""

    url = "http://fake:8080"

    def __init__(self, *answers):
        self.answers = list(answers) or [BODY]
        self.asked = []
        self.timeout = 960.0

    def get_json(self, path, params=None):
        self.asked.append((path, params))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


def test_frame_shows_each_function_row_with_its_figures():
    lines = top.frame(BODY, "http://fake:8080", 1_800_003_600.0)
    assert "last 1h: 120 calls, 3 errors" in lines[0]
    header = lines[2].split()
    assert header[:3] == ["FUNCTION", "STATE", "BUSY/IDLE"]
    rows = {line.split()[0]: line.split() for line in lines[3:6]}
    assert rows["hello"] == ["hello", "RUNNING", "2/1", "+1", "120", "3", "4.20ms", "1.83s",
                             "2", "4", "5/7"]
    # A host whose workers do not say busy/idle: the instance count; no calls: dashes.
    assert rows["old-host"] == ["old-host", "RUNNING", "1", "0", "0", "-", "-", "0", "-",
                                "0/0"]
    assert rows["broken"][:2] == ["broken", "FATAL"]


def test_a_functions_text_cannot_drive_the_terminal():
    text = "\n".join(top.frame(BODY, "http://fake:8080", 0))
    assert "\x1b" not in text and "\x07" not in text
    assert "broken: SyntaxError\\x1b]52;c;ZXZpbA==\\x07 at line 1" in text


def test_fit_cuts_lines_to_the_screen():
    lines = top.fit(["x" * 50, "short", "a", "b", "c"], 10, 3)
    assert lines == ["x" * 9 + "…", "short", "… 3 more l"]


@pytest.mark.parametrize("value, text", [(None, "-"), (0.844, "0.84ms"), (12.34, "12.3ms"),
                                         (1250.0, "1.25s")])
def test_ms(value, text):
    assert top.ms(value) == text


@pytest.fixture
def fake_host(monkeypatch):
    host = FakeHost()
    monkeypatch.setattr(top.Host, "from_args", classmethod(lambda cls, args: host))
    return host


def test_once_prints_one_plain_frame(fake_host, capsys):
    assert cli_main.main(["top", "--once", "--window", "86400"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "hello" in out and "FUNCTION" in out
    assert fake_host.asked == [("/api/stats", {"window": 86400})]


def test_json_prints_the_api_document(fake_host, capsys):
    assert cli_main.main(["top", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == BODY


def test_interval_must_be_positive(fake_host, capsys):
    assert cli_main.main(["top", "--interval", "0"]) == 2


@pytest.fixture
def terminal():
    """A pseudo-terminal: the view reads keys from its side, the test types on the other."""
    master, slave = pty.openpty()
    stdin = os.fdopen(slave, "r")
    yield master, stdin
    stdin.close()
    os.close(master)


def test_live_view_quits_on_q_and_gives_the_terminal_back(terminal):
    master, stdin = terminal
    before = termios.tcgetattr(stdin.fileno())
    os.write(master, b"q")
    out = io.StringIO()
    assert top.live(FakeHost(), 3600, 60.0, stdin, out, size=lambda: (100, 40)) == 0
    drawn = out.getvalue()
    assert drawn.startswith(top.ENTER) and drawn.endswith(top.LEAVE)
    assert "hello" in drawn and "q or Ctrl-C quits" in drawn
    assert termios.tcgetattr(stdin.fileno()) == before


def test_live_view_redraws_until_ctrl_c(terminal):
    master, stdin = terminal
    before = termios.tcgetattr(stdin.fileno())
    host = FakeHost(BODY, BODY, KeyboardInterrupt())
    out = io.StringIO()
    assert top.live(host, 3600, 0.01, stdin, out, size=lambda: (100, 40)) == 0
    drawn = out.getvalue()
    assert drawn.count(top.HOME) == 2 and drawn.endswith(top.LEAVE)
    assert termios.tcgetattr(stdin.fileno()) == before


def test_live_view_keeps_asking_a_host_that_is_down(terminal):
    master, stdin = terminal
    host = FakeHost(HostDown("http://fake:8080", "connection refused"), BODY,
                    KeyboardInterrupt())
    out = io.StringIO()
    assert top.live(host, 3600, 0.01, stdin, out, size=lambda: (200, 40)) == 0
    first, second = out.getvalue().split(top.HOME)[1:3]
    assert "cannot reach the Sora host" in first and "hello" in second


def test_live_view_ends_on_a_refusal_with_the_terminal_restored(terminal):
    master, stdin = terminal
    before = termios.tcgetattr(stdin.fileno())
    out = io.StringIO()
    with pytest.raises(ApiError):
        top.live(FakeHost(ApiError(403, "Sora.Forbidden", "no admin")), 3600, 0.01, stdin,
                 out, size=lambda: (100, 40))
    assert out.getvalue().endswith(top.LEAVE)
    assert termios.tcgetattr(stdin.fileno()) == before


def test_live_view_without_a_terminal_still_draws(capsys):
    out = io.StringIO()
    host = FakeHost(BODY, KeyboardInterrupt())
    assert top.live(host, 3600, 0.01, io.StringIO(), out, size=lambda: (100, 40)) == 0
    assert "hello" in out.getvalue()
