"""`sora triggers [NAME]`, `sora triggers fire NAME [INDEX] [--key K]` and `sora invocations`
without a host (issue 18 point 5): the table, the reasons under it, the note when the service
is down, which trigger `fire` picks, and the requests each command makes."""
from __future__ import annotations

import json

import pytest

from sora.cli import main as cli
from sora.cli import triggers as T
from sora.cli.host import ApiError, CliError, Response
from sora.cli import output
from sora.cli.output import trigger_label

NOW = 1_800_000_000.0

ECHO = {"function": "echo", "service": "up", "triggers": [
    {"index": 0, "kind": "http", "enabled": True, "state": "active", "detail": None,
     "url": "/functions/echo", "next": [], "lastFiring": None},
    {"index": 1, "kind": "schedule", "enabled": True, "state": "active", "detail": None,
     "expression": "cron(0 9 * * ? *)", "timezone": "Europe/Paris",
     "next": ["2027-01-15T09:00:00+01:00", "2027-01-16T09:00:00+01:00",
              "2027-01-17T09:00:00+01:00"],
     "lastFiring": {"due": NOW - 3.0, "fired": NOW - 2.5, "requestId": "r-1",
                    "outcome": "enqueued", "reason": None, "status": "ok"}},
    {"index": 2, "kind": "file", "enabled": True, "state": "error",
     "detail": "the folder /srv/inbox is gone", "path": "/srv/inbox", "next": [],
     "watching": {"path": "/srv/inbox", "pattern": "*.csv", "recursive": True,
                  "events": ["created"]},
     "lastFiring": {"due": NOW - 120, "fired": None, "requestId": None,
                    "outcome": "skipped", "reason": "overlap", "status": None}},
]}


class FakeHost:
    """Answers GETs from `pages` (path → body or ApiError) and POSTs with `fired`."""

    def __init__(self, pages: dict, fired: dict | None = None):
        self.pages = pages
        self.fired = fired or {"requestIds": ["r-9"]}
        self.calls: list[tuple] = []

    def get_json(self, path, params=None):
        self.calls.append(("GET", path, params))
        page = self.pages[path]
        if isinstance(page, Exception):
            raise page
        return page

    def call(self, method, path, body=None, headers=None, params=None):
        self.calls.append((method, path, body))
        return Response(202, {}, json.dumps(self.fired).encode())


@pytest.fixture
def host(monkeypatch):
    fake = FakeHost({"/api/functions/echo/triggers": ECHO})
    monkeypatch.setattr(T.Host, "from_args", classmethod(lambda cls, args: fake))
    monkeypatch.setattr(cli.Host, "from_args", classmethod(lambda cls, args: fake))
    return fake


def test_the_table_shows_each_trigger_its_next_time_last_firing_and_status(capsys):
    T.render([ECHO], NOW, None)
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines[0].split() == ["FUNCTION", "#", "KIND", "SCHEDULE", "/", "PATH", "STATE",
                                "NEXT", "LAST", "FIRING", "STATUS"]
    http, schedule, files = lines[1:4]
    assert http.split()[:5] == ["echo", "0", "http", "/functions/echo", "active"]
    assert "cron(0 9 * * ? *) Europe/Paris" in schedule
    assert "2027-01-15T09:00:00+01:00" in schedule and "2027-01-16" not in schedule
    assert schedule.split()[-3:] == ["2.5s", "ago", "ok"]
    # A recursive file trigger: its folder, then its pattern at any depth.
    assert "/srv/inbox/**/*.csv" in files and "2m ago, skipped: overlap" in files
    # An error's reason under the table, naming the trigger.
    assert lines[4] == "echo[2]: the folder /srv/inbox is gone"
    assert out.err == ""


def test_a_service_that_is_down_is_said_on_stderr(capsys):
    T.render([{**ECHO, "service": "down"}], NOW, None)
    assert "the trigger service did not answer" in capsys.readouterr().err


def test_a_functions_text_cannot_drive_the_terminal(capsys):
    hostile = {"function": "echo", "triggers": [
        {"index": 1, "kind": "file", "state": "error", "detail": "bad\x1b[2J name\nstatus: ok",
         "watching": {"path": "/srv/in\x1b]52;c;x\x07box", "pattern": None}}]}
    T.render([hostile], NOW, None)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "\nstatus: ok" not in out


def test_next_times_are_shown_to_the_second():
    assert T.at_second("2026-12-06T23:58:44.598737+00:00") == "2026-12-06T23:58:44+00:00"
    assert T.at_second("2027-01-15T09:00:00+01:00") == "2027-01-15T09:00:00+01:00"
    assert T.at_second("soon") == "soon"


def test_ages():
    assert output.ago(NOW - 0.44, NOW) == "0.4s ago"
    assert output.ago(NOW - 150, NOW) == "2m ago"
    assert output.ago(NOW - 7300, NOW) == "2h ago"
    assert output.ago(NOW - 3 * 86400, NOW) == "3d ago"
    assert output.ago(None, NOW) == "-"


def test_triggers_of_one_function_and_json(host, capsys):
    assert cli.main(["triggers", "echo", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == ECHO
    assert host.calls == [("GET", "/api/functions/echo/triggers", None)]


def test_triggers_of_every_function_skip_those_removed_meanwhile(host, capsys):
    host.pages["/api/functions"] = {"functions": [
        {"name": "echo"}, {"name": "gone"}, {"name": "echo (other-folder)"}]}
    host.pages["/api/functions/gone/triggers"] = ApiError(404, "ResourceNotFoundException",
                                                          "Function not found: gone")
    assert cli.main(["triggers", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"functions": [ECHO]}
    asked = [c[1] for c in host.calls]
    assert asked == ["/api/functions", "/api/functions/echo/triggers",
                     "/api/functions/gone/triggers"]


def test_fire_with_an_index_and_a_key(host, capsys):
    assert cli.main(["triggers", "fire", "echo", "2", "--key", "in/red flower.csv"]) == 0
    method, path, body = host.calls[-1]
    assert (method, path) == ("POST", "/api/functions/echo/triggers/2/fire")
    assert json.loads(body) == {"key": "in/red flower.csv"}
    assert capsys.readouterr().out == "queued r-9  (echo[2])\n"


def test_fire_without_an_index_fires_the_one_firable_trigger(host, capsys):
    host.pages["/api/functions/one/triggers"] = {"function": "one", "triggers": [
        ECHO["triggers"][0], ECHO["triggers"][1]]}
    assert cli.main(["triggers", "fire", "one", "--json"]) == 0
    assert host.calls[-1] == ("POST", "/api/functions/one/triggers/1/fire", None)
    assert json.loads(capsys.readouterr().out) == {"function": "one", "index": 1,
                                                   "requestIds": ["r-9"]}


def test_fire_without_an_index_asks_for_one_when_there_are_several(host):
    with pytest.raises(CliError) as caught:
        T.chosen_index(host, "echo")
    assert caught.value.exit_code == 2
    assert "expected INDEX, one of 1 (schedule cron(0 9 * * ? *) Europe/Paris), 2 (file " \
        in str(caught.value)


def test_fire_usage_errors(host, capsys):
    assert cli.main(["triggers", "fire"]) == 2
    assert cli.main(["triggers", "fire", "echo", "x"]) == 2
    assert "INDEX: expected the trigger's position" in capsys.readouterr().err
    assert cli.main(["triggers", "echo", "--key", "a.csv"]) == 2
    assert not [c for c in host.calls if c[0] == "POST"]


def test_a_rescan_that_finds_nothing_says_so(host, capsys):
    host.fired = {"requestIds": []}
    assert cli.main(["triggers", "fire", "echo", "2"]) == 0
    assert "nothing to fire" in capsys.readouterr().out


def test_records_show_the_trigger_and_its_index(host, capsys):
    host.pages["/api/functions/echo/invocations"] = {"nextCursor": None, "invocations": [
        {"requestId": "r-2", "start": NOW, "trigger": "file", "triggerIndex": 2,
         "status": "error", "durationMs": 12.3, "errorType": "Error", "errorMessage": "no"},
        {"requestId": "r-1", "start": NOW - 1, "trigger": "http", "status": "ok",
         "durationMs": 1.0, "errorType": None}]}
    assert cli.main(["invocations", "echo"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["REQUEST", "ID", "START", "TRIGGER", "STATUS", "DURATION",
                                "ERROR"]
    assert lines[1].split()[2:5] == ["file:2", "error", "12"]
    assert lines[2].split()[2:4] == ["http", "ok"]
    assert trigger_label({"trigger": "schedule", "triggerIndex": 0}) == "schedule:0"
    assert trigger_label({"trigger": "event"}) == "event"


def test_dead_letters_show_which_trigger_fired_them(host, capsys):
    host.pages["/api/functions/echo/dlq"] = {"nextCursor": None, "events": [
        {"requestId": "r-3", "accepted": NOW, "trigger": "schedule", "triggerIndex": 1,
         "route": "schedule:1", "attempts": 3, "deadReason": "RetriesExhausted",
         "errors": [{"errorType": "Error", "errorMessage": "boom"}]},
        {"requestId": "r-4", "accepted": NOW, "trigger": "event", "route": "invoke",
         "attempts": 3, "deadReason": "RetriesExhausted", "errors": []}]}
    assert cli.main(["dlq", "echo"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["REQUEST", "ID", "ACCEPTED", "TRIGGER", "ATTEMPTS"]
    assert lines[1].split()[2:4] == ["schedule:1", "3"]
    assert lines[2].split()[2] == "event"


def test_every_function_needs_an_admin_key_and_says_so(host, capsys):
    host.pages["/api/functions"] = ApiError(403, "Sora.Forbidden", "no admin scope")
    assert cli.main(["triggers"]) == 1
    assert "give a function's NAME (sora triggers NAME)" in capsys.readouterr().err


def test_a_file_triggers_pending_files_are_shown_with_its_state():
    assert T.state_of({"state": "active", "pending": 12, "seen": 3}) == "active, 12 pending"
    assert T.state_of({"state": "active", "pending": 0}) == "active"
    assert T.state_of({"state": "disabled"}) == "disabled"
