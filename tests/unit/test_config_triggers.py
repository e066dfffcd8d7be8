"""The `trigger` field: http, schedules and watched folders, validated at load with errors
naming the file, the field and what was expected; triggers survive the snapshot."""
import dataclasses
import json
import os

import pytest

from sora import config_snapshot
from sora.config import (ConfigError, FileTrigger, HttpTrigger, ScheduleTrigger,
                         load_function_config, load_host_config)

from .test_config import write


def make_fn(base, trigger: str, folder="fn"):
    write(base / folder / "index.js", "exports.handler = async () => 1;")
    (base / folder / "sora.yaml").write_text(
        f"name: {folder}\nlanguage: nodejs\nhandler: index.handler\ntrigger: {trigger}\n")
    return base / folder


def problems(base, trigger: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_function_config(make_fn(base, trigger))
    return str(info.value)


def test_every_kind_with_its_defaults(tmp_path):
    (tmp_path / "fn" / "inbox").mkdir(parents=True)
    fn = load_function_config(make_fn(tmp_path, (
        "[http, {schedule: 'rate(5 minutes)'}, {file: {path: ./inbox}}]")))
    assert fn.trigger == (
        HttpTrigger(index=0),
        ScheduleTrigger(expression="rate(5 minutes)", index=1),
        FileTrigger(path=str(tmp_path / "fn" / "inbox"), index=2))
    assert fn.http and [s.index for s in fn.schedules] == [1] and [f.index for f in fn.files] == [2]
    schedule, file = fn.schedules[0], fn.files[0]
    assert (schedule.timezone, schedule.input, schedule.enabled, schedule.overlap,
            schedule.missed) == ("UTC", None, True, "forbid", "latest")
    assert schedule.key == "schedule:rate(5 minutes)@UTC"
    assert (file.events, file.pattern, file.recursive, file.debounceMs, file.bucket,
            file.writable, file.enabled) == (("created",), None, False, 200, None, False, True)
    assert file.key == f"file:{tmp_path / 'fn' / 'inbox'}|*|0" and file.bucket_name == "inbox"


def test_every_key_given(tmp_path):
    inbox = tmp_path / "drop" / "inbox"
    inbox.mkdir(parents=True)
    fn = load_function_config(make_fn(tmp_path, (
        "[{schedule: 'cron(0 9 ? * MON-FRI *)', timezone: Europe/Paris, input: {job: nightly, "
        "n: [1, 2]}, enabled: false, overlap: allow, missed: skip}, "
        f"{{file: {{path: {inbox}, events: [created, modified, deleted], pattern: '*.csv', "
        "recursive: true, debounceMs: 0, bucket: uploads, writable: true}, enabled: false}]")))
    assert not fn.http
    [schedule] = fn.schedules
    assert schedule == ScheduleTrigger("cron(0 9 ? * MON-FRI *)", 0, "Europe/Paris",
                                       {"job": "nightly", "n": [1, 2]}, False, "allow", "skip")
    [file] = fn.files
    assert file == FileTrigger(str(inbox), 1, ("created", "modified", "deleted"), "*.csv", True,
                               0, "uploads", True, False)
    assert file.bucket_name == "uploads" and file.key == f"file:{inbox}|*.csv|1"


def test_enabled_inside_the_file_map(tmp_path):
    (tmp_path / "fn" / "in").mkdir(parents=True)
    fn = load_function_config(make_fn(tmp_path, "[{file: {path: in, enabled: false}}]"))
    assert fn.files[0].enabled is False
    assert "trigger[0].file.enabled: expected the same value as trigger[0].enabled" in \
        problems(tmp_path, "[{file: {path: in, enabled: false}, enabled: true}]")


def test_a_single_trigger_without_a_list(tmp_path):
    fn = load_function_config(make_fn(tmp_path, "{schedule: 'rate(1 second)'}"))
    assert not fn.http and fn.schedules[0].expression == "rate(1 second)"


@pytest.mark.parametrize("trigger, expected", [
    ("[http, {schedule: 'rate(5 minute)'}]",
     "trigger[1].schedule: expected rate(5 minutes) (singular unit only with 1), got "
     "'rate(5 minute)'"),
    ("[{schedule: 'cron(0 12 * * * *)'}]",
     "trigger[0].schedule: expected '?' in exactly one of day-of-month and day-of-week"),
    ("[{schedule: 'rate(1 minute)', timezone: Mars/Olympus}]",
     "trigger[0].timezone: expected an IANA time zone name such as 'UTC' or 'Europe/Paris', "
     "got 'Mars/Olympus'"),
    ("[{schedule: 5}]", "trigger[0].schedule: expected a schedule expression: rate(...), cron(...), at(...) or a 5-field cron line, got 5"),
    ("[{schedule: 'rate(1 minute)', overlap: sometimes}]",
     "trigger[0].overlap: expected one of: forbid, allow, got 'sometimes'"),
    ("[{schedule: 'rate(1 minute)', missed: all}]",
     "trigger[0].missed: expected one of: latest, skip, got 'all'"),
    ("[{schedule: 'rate(1 minute)', enabled: yes please}]",
     "trigger[0].enabled: expected true or false"),
    ("[{schedule: 'rate(1 minute)', input: 2026-01-01}]",
     "trigger[0].input: expected a JSON value"),
    ("[{schedule: 'rate(1 minute)', timezon: UTC}]",
     "trigger[0].timezon: unknown field; did you mean 'timezone'?"),
    ("[{cron: '* * * * *'}]", "trigger[0]: expected 'http', {schedule: EXPR, ...} or {file: "),
    ("[{schedule: 'rate(1 minute)', file: {path: .}}]", "trigger[0]: expected 'http'"),
    ("[websocket]", "trigger: expected 'http', {schedule: EXPR, ...}"),
    ("[http, http]", "trigger[1]: expected each trigger once, got the same as trigger[0]"),
    ("[{schedule: 'rate(1 minute)'}, {schedule: 'rate(1 minute)'}]",
     "trigger[1]: expected each trigger once"),
    ("[{file: {path: ./missing}}]", "trigger[0].file.path: expected an existing folder"),
    ("[{file: {path: index.js}}]", "trigger[0].file.path: expected an existing folder"),
    ("[{file: {path: /nonexistent/folder}}]",
     "trigger[0].file.path: expected an existing folder (not found), got '/nonexistent/folder'"),
    ("[{file: {pattern: '*.csv'}}]", "trigger[0].file.path: required field is missing"),
    ("[{file: {path: ., events: [created, renamed]}}]",
     "trigger[0].file.events: expected a non-empty list of created, modified, deleted, got "),
    ("[{file: {path: ., events: []}}]", "trigger[0].file.events: expected a non-empty list"),
    ("[{file: {path: ., debounceMs: 60001}}]",
     "trigger[0].file.debounceMs: expected an integer from 0 to 60000, got 60001"),
    ("[{file: {path: ., debounceMs: -1}}]", "trigger[0].file.debounceMs: expected an integer"),
    ("[{file: {path: ., pattern: 'a/*.csv'}}]",
     "trigger[0].file.pattern: expected a file-name pattern without '/'"),
    ("[{file: {path: ., recursive: 1}}]", "trigger[0].file.recursive: expected true or false"),
    ("[{file: {path: ., writeable: true}}]",
     "trigger[0].file.writeable: unknown field; did you mean 'writable'?"),
    ("[{file: {path: .}, pattern: '*.csv'}]", "trigger[0].pattern: unknown field"),
    ("[{file: 5}]", "trigger[0].file: expected {path: FOLDER"),
])
def test_errors_name_file_field_and_expectation(tmp_path, trigger, expected):
    text = problems(tmp_path, trigger)
    assert f"{tmp_path / 'fn' / 'sora.yaml'}: " in text
    assert expected in text, text


def test_a_watched_folder_reached_through_a_link_in_the_function_folder_is_refused(tmp_path):
    # Setup (or the function, with writableFolder) can replace ./inbox by a link to any
    # folder of the host: the watch would send its files' names, the sandbox would mount it.
    elsewhere = tmp_path / "secret"
    elsewhere.mkdir()
    fn_dir = make_fn(tmp_path, "[{file: {path: ./inbox}}]")
    os.symlink(elsewhere, fn_dir / "inbox")
    text = problems(tmp_path, "[{file: {path: ./inbox}}]")
    assert "trigger[0].file.path: expected an existing folder (reached without a link from " \
        "the function folder" in text
    (fn_dir / "inbox").unlink()
    (fn_dir / "real").mkdir()
    os.symlink(elsewhere, fn_dir / "real" / "deeper")
    assert "without a link" in problems(tmp_path, "[{file: {path: real/deeper}}]")


def test_paths_are_normalised_not_resolved(tmp_path):
    (tmp_path / "shared" / "in").mkdir(parents=True)
    fn = load_function_config(make_fn(tmp_path, "[{file: {path: ../shared/./in/}}]"))
    assert fn.files[0].path == str(tmp_path / "shared" / "in")
    os.symlink(tmp_path / "shared" / "in", tmp_path / "alias")
    fn = load_function_config(make_fn(tmp_path, f"[{{file: {{path: {tmp_path / 'alias'}}}}}]"))
    assert fn.files[0].path == str(tmp_path / "alias")    # the operator's own link: kept


def test_triggers_survive_the_snapshot(tmp_path):
    (tmp_path / "fn" / "inbox").mkdir(parents=True)
    fn = load_function_config(make_fn(tmp_path, (
        "[http, {schedule: 'at(2027-01-01T00:00:00)', timezone: Europe/Paris, input: [1, "
        "{a: null}]}, {file: {path: inbox, events: [deleted, created], pattern: '*.txt'}}]")))
    entry = json.loads(json.dumps(dataclasses.asdict(fn)))      # as the snapshot, MEMBERS
    assert [t["kind"] for t in entry["trigger"]] == ["http", "schedule", "file"]
    again = config_snapshot.function_from_entry(entry)
    assert again == fn and again.files[0].events == ("deleted", "created")
    path = str(tmp_path / "run" / "functions.json")
    config_snapshot.write(path, [fn], [])
    assert config_snapshot.read(path)[0] == [fn]


def host(tmp_path, functions: str, extra: str = ""):
    return load_host_config(write(tmp_path / "host-config.yaml", (
        f"functionPaths: [{functions}]\nserver: {{httpPort: 8080}}\n{extra}")))


def test_a_watched_folder_inside_the_state_dir_breaks_the_function(tmp_path):
    (tmp_path / "state" / "run").mkdir(parents=True)
    make_fn(tmp_path, f"[{{file: {{path: {tmp_path / 'state' / 'run'}}}}}]")
    config = host(tmp_path, "fn", "stateDir: state\n")
    [broken] = config.broken
    assert not config.functions and "sora.yaml: trigger[0].file.path: expected a folder " \
        f"outside stateDir {tmp_path / 'state'}, got {tmp_path / 'state' / 'run'}" in broken.reason


def test_a_watched_folder_holding_the_state_dir_breaks_the_function(tmp_path):
    (tmp_path / "data").mkdir()
    make_fn(tmp_path, f"[{{file: {{path: {tmp_path / 'data'}, recursive: true}}}}]")
    config = host(tmp_path, "fn", "stateDir: data/.sora\n")
    [broken] = config.broken
    assert "trigger[0].file.path: expected a folder that holds none of Sora's files nor " \
        "another function's folder" in broken.reason and "stateDir" in broken.reason


def test_a_watched_folder_inside_another_function_s_folder_breaks_the_function(tmp_path):
    make_fn(tmp_path, "http", folder="other")
    (tmp_path / "other" / "uploads").mkdir()
    make_fn(tmp_path, f"[{{file: {{path: {tmp_path / 'other' / 'uploads'}}}}}]", folder="fn")
    config = host(tmp_path, "fn, other")
    assert [fn.name for fn in config.functions] == ["other"]
    assert "expected a folder outside functionPaths (other)" in config.broken[0].reason
    # Its own folder's subfolder, and a folder of its own beside the others, are fine.
    (tmp_path / "fn" / "inbox").mkdir()
    (tmp_path / "drop").mkdir()
    make_fn(tmp_path, f"[{{file: {{path: inbox}}}}, {{file: {{path: {tmp_path / 'drop'}}}}}]")
    config = host(tmp_path, "fn, other")
    assert sorted(fn.name for fn in config.functions) == ["fn", "other"] and not config.broken


def test_a_watched_folder_holding_another_function_breaks_the_function(tmp_path):
    make_fn(tmp_path / "apps", "http", folder="other")
    make_fn(tmp_path, f"[{{file: {{path: {tmp_path / 'apps'}, recursive: true}}}}]")
    config = host(tmp_path, "fn, apps/other")
    assert "holds functionPaths (other)" in config.broken[0].reason


def test_triggers_survive_members(tmp_path):
    """A joined host's MEMBERS carry its functions' configs as `dataclasses.asdict`: the
    main host's FunctionTable rebuilds their triggers (and reads an older host's "http")."""
    from sora.function_table import FunctionTable
    (tmp_path / "fn" / "inbox").mkdir(parents=True)
    fn = load_function_config(make_fn(tmp_path, (
        "[{schedule: 'rate(1 second)', input: {a: 1}}, {file: {path: inbox}}]")))
    make_fn(tmp_path, "http", folder="local")
    table = FunctionTable(host(tmp_path, "local"))
    entry = json.loads(json.dumps(dataclasses.asdict(fn)))
    older = {**json.loads(json.dumps(dataclasses.asdict(fn))), "name": "older",
             "trigger": ["http"]}
    table.update({"functions": {"fn": {"config": entry}, "older": {"config": older}}})
    assert table.get("fn") == fn and not table.get("fn").http
    assert table.get("older").trigger == (HttpTrigger(),) and table.get("older").http
