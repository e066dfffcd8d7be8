"""`sora validate` shows each schedule's next three fire times (function folder and host
config, text and --json), and each watched folder."""
import json
import re

from sora.cli.main import main
from sora.triggers import describe

from .test_config import write

SORA_YAML = """\
name: nightly
language: python
handler: app.h
trigger:
  - http
  - {schedule: 'cron(30 2 * * ? *)', timezone: Europe/Paris}
  - {schedule: 'rate(10 seconds)', input: {a: 1}}
  - {schedule: 'at(2020-01-01T00:00:00)'}
  - {schedule: '0 12 * * *', enabled: false}
  - {file: {path: ./inbox, pattern: '*.csv', events: [created, modified], recursive: true}}
"""
ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"


def make(tmp_path):
    write(tmp_path / "fn" / "app.py", "def h(event, context):\n    return event\n")
    write(tmp_path / "fn" / "sora.yaml", SORA_YAML)
    (tmp_path / "fn" / "inbox").mkdir()
    return write(tmp_path / "host-config.yaml",
                 "functionPaths: [fn]\nserver: {httpPort: 18080}\nstateDir: ./state\n")


def test_validate_a_function_folder_prints_next_fire_times(tmp_path, capsys):
    make(tmp_path)
    assert main(["validate", "--no-load", str(tmp_path / "fn")]) == 0
    out = capsys.readouterr().out
    paris = re.search(r"trigger\[1\] schedule cron\(30 2 \* \* \? \*\) \(Europe/Paris\): "
                      rf"next ({ISO}), ({ISO}), ({ISO})\n", out)
    assert paris and all(t.endswith(("T02:30:00+01:00", "T02:30:00+02:00"))
                         for t in paris.groups()), out
    assert re.search(rf"trigger\[2\] schedule rate\(10 seconds\) \(UTC\): next {ISO}, {ISO}, "
                     rf"{ISO}\n", out), out
    assert "trigger[3] schedule at(2020-01-01T00:00:00) (UTC): next none (no time ahead)" in out
    assert "trigger[4] schedule (disabled) 0 12 * * * (UTC): next none" in out
    assert f"trigger[5] file {tmp_path / 'fn' / 'inbox'} (*.csv, created/modified, " \
        "recursive; bucket inbox)" in out


def test_validate_a_host_config_as_json(tmp_path, capsys):
    config = make(tmp_path)
    assert main(["validate", "--no-load", "--json", str(config)]) == 0
    [fn] = json.loads(capsys.readouterr().out)["functions"]
    triggers = fn["triggers"]
    assert [t["kind"] for t in triggers] == ["http", "schedule", "schedule", "schedule",
                                             "schedule", "file"]
    assert len(triggers[1]["next"]) == 3 and all(re.fullmatch(ISO, t)
                                                 for t in triggers[1]["next"])
    rate = triggers[2]["next"]
    assert len(rate) == 3 and triggers[2]["input"] is True
    assert triggers[3]["next"] == [] and triggers[4]["enabled"] is False
    assert triggers[5]["watching"] == {"path": str(tmp_path / "fn" / "inbox"),
                                       "pattern": "*.csv", "recursive": True,
                                       "events": ["created", "modified"], "bucket": "inbox",
                                       "writable": False}


def test_validate_reports_a_bad_schedule_with_file_and_field(tmp_path, capsys):
    make(tmp_path)
    write(tmp_path / "fn" / "sora.yaml", SORA_YAML.replace("rate(10 seconds)",
                                                         "rate(10 second)"))
    assert main(["validate", "--no-load", "--json", str(tmp_path / "fn")]) == 2
    [error] = json.loads(capsys.readouterr().out)["errors"]
    assert error == (f"{tmp_path / 'fn' / 'sora.yaml'}: trigger[2].schedule: expected "
                     "rate(10 seconds) (singular unit only with 1), got 'rate(10 second)'")


def test_rate_times_count_from_the_anchor_given():
    from sora.config import ScheduleTrigger
    trigger = ScheduleTrigger("rate(1 hour)", 0)
    assert describe.next_fire_times(trigger, 7200.5, anchor=0.0) == [
        "1970-01-01T03:00:00+00:00", "1970-01-01T04:00:00+00:00", "1970-01-01T05:00:00+00:00"]
    assert describe.next_fire_times(trigger, 7200.5) == [
        "1970-01-01T03:00:00+00:00", "1970-01-01T04:00:00+00:00", "1970-01-01T05:00:00+00:00"]
