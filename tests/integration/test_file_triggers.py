"""File triggers on a real host: files dropped into watched folders run the function with S3
event notifications, through the durable queue (retries, dead letters), and files that arrive
while the host is down run when it is back, once.

The functions run with `isolation: none`: they leave marks in a folder of the test's, which a
sandbox would not let them write (the sandbox's mount of the watched folder is tested with the
sandbox, tests/integration/test_sandbox.py and the attack suites).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid

import pytest

from tests.support import SoraHost, json_of, served, wait_for, write_function

pytestmark = pytest.mark.integration

# Reads the file it was told about (the key is URL-encoded the way S3 encodes it) and leaves
# a mark with the event and the content; a key starting with "fail" raises.
HANDLER = """
import json, os, urllib.parse

def handler(event, context):
    record = event["Records"][0]
    key = urllib.parse.unquote_plus(record["s3"]["object"]["key"])
    mark = {"eventName": record["eventName"], "key": key, "object": record["s3"]["object"],
            "bucket": record["s3"]["bucket"]["name"], "requestId": context.aws_request_id}
    if record["eventName"].startswith("ObjectCreated"):
        with open(os.path.join(os.environ["INBOX"], key), "rb") as fh:
            mark["content"] = fh.read().decode()
    if os.path.basename(key).startswith("fail"):
        raise RuntimeError("failing on purpose: " + key)
    name = "%s.json" % context.aws_request_id
    with open(os.path.join(os.environ["MARKS"], name + ".tmp"), "w") as fh:
        json.dump(mark, fh)
    os.rename(os.path.join(os.environ["MARKS"], name + ".tmp"),
              os.path.join(os.environ["MARKS"], name))
    return {"ok": key}
"""


def python_function(fns, name, inbox, marks, file_trigger, **extra):
    return write_function(fns, name, {"app.py": HANDLER}, name=name, language="python",
                          entrypoint="app.py", handler="handler", isolation="none",
                          env={"MARKS": str(marks), "INBOX": str(inbox)},
                          trigger=["http", {"file": file_trigger}], **extra)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("files")
    fns = base / "fns"
    folders = {name: base / name for name in ("inbox", "tree", "flaky", "capped", "marks")}
    for folder in folders.values():
        folder.mkdir()
    marks = folders["marks"]
    dirs = [
        python_function(fns, "csv", folders["inbox"], marks,
                        {"path": str(folders["inbox"]), "pattern": "*.csv", "debounceMs": 300,
                         "events": ["created", "modified", "deleted"]}),
        python_function(fns, "tree", folders["tree"], marks,
                        {"path": str(folders["tree"]), "recursive": True, "debounceMs": 100,
                         "bucket": "my-bucket"}),
        python_function(fns, "flaky", folders["flaky"], marks,
                        {"path": str(folders["flaky"]), "debounceMs": 100},
                        eventInvoke={"maximumRetryAttempts": 1, "retryDelaySeconds": 0.5}),
        python_function(fns, "capped", folders["capped"], marks,
                        {"path": str(folders["capped"]), "debounceMs": 50},
                        eventInvoke={"maxQueuedEvents": 20}),
    ]
    return base, dirs, folders


@pytest.fixture(scope="module")
def host(setup):
    base, dirs, _ = setup
    yield from served(base, dirs, https=False)


@pytest.fixture(scope="module")
def folders(setup):
    return setup[2]


def marks_for(folders, key: str, event_name: str | None = None) -> list[dict]:
    out = []
    for path in folders["marks"].glob("*.json"):
        mark = json.loads(path.read_text())
        if mark["key"] == key and (event_name is None or mark["eventName"] == event_name):
            out.append(mark)
    return out


def api(host, path):
    r = host.session.get(f"{host.url}/api{path}", timeout=10)
    return r.status_code, json_of(r)


def unique(suffix: str = ".csv") -> str:
    return f"{uuid.uuid4().hex[:10]}{suffix}"


def test_a_created_file_runs_the_function_which_reads_it(host, folders):
    name = f"red flower {unique()}"
    (folders["inbox"] / name).write_text("a,b\n1,2\n")
    mark = wait_for(lambda: marks_for(folders, name), what="the function to run")[0]
    assert mark["eventName"] == "ObjectCreated:Put"
    assert mark["content"] == "a,b\n1,2\n"                     # it read the file
    assert mark["object"]["key"] == name.replace(" ", "+")     # S3's encoding
    assert mark["object"]["size"] == 8
    assert mark["object"]["eTag"] == hashlib.md5(b"a,b\n1,2\n").hexdigest()
    assert mark["bucket"] == "inbox"
    record = host.record(mark["requestId"])
    assert record["trigger"] == "file" and record["triggerIndex"] == 1
    assert record["status"] == "ok"


def test_modified_and_deleted_fire_and_the_pattern_filters(host, folders):
    name = unique()
    path = folders["inbox"] / name
    path.write_text("one")
    (folders["inbox"] / unique(".txt")).write_text("not a csv")
    wait_for(lambda: marks_for(folders, name), what="the created event")
    path.write_text("one, two")
    wait_for(lambda: any(m.get("content") == "one, two" for m in marks_for(folders, name)),
             what="the modified event")
    path.unlink()
    wait_for(lambda: marks_for(folders, name, "ObjectRemoved:Delete"), what="the delete")
    time.sleep(0.8)       # what must NOT happen: a second firing of any of the three
    marks = marks_for(folders, name)
    assert sorted(m["eventName"] for m in marks) == ["ObjectCreated:Put"] * 2 + \
        ["ObjectRemoved:Delete"]
    assert not [m for m in folders["marks"].glob("*.json")
                if json.loads(m.read_text())["key"].endswith(".txt")]


def test_a_file_renamed_into_the_folder_is_created(host, folders, tmp_path):
    name = unique()
    (tmp_path / "staging.csv").write_text("moved in")
    # Same file system (both under /tmp): a rename, as `mv` into an inbox does.
    os.rename(tmp_path / "staging.csv", folders["inbox"] / name)
    mark = wait_for(lambda: marks_for(folders, name), what="the created event")[0]
    assert mark["eventName"] == "ObjectCreated:Put" and mark["content"] == "moved in"


def test_a_file_written_slowly_in_chunks_fires_once_complete(host, folders):
    name = unique()
    with open(folders["inbox"] / name, "w") as fh:
        for i in range(12):           # 12 chunks 0.1 s apart: longer than debounceMs (0.3 s)
            fh.write(f"line {i}\n")
            fh.flush()
            time.sleep(0.1)
    mark = wait_for(lambda: marks_for(folders, name), what="the event")[0]
    time.sleep(1.0)                   # what must NOT happen: a second event
    assert len(marks_for(folders, name)) == 1
    assert mark["content"] == "".join(f"line {i}\n" for i in range(12))


def test_recursive_folders_and_a_named_bucket(host, folders):
    sub = folders["tree"] / f"day {uuid.uuid4().hex[:6]}" / "batch"
    sub.mkdir(parents=True)
    (sub / "deep.txt").write_text("deep")
    rel = str((sub / "deep.txt").relative_to(folders["tree"]))
    mark = wait_for(lambda: marks_for(folders, rel), what="the event in a new subfolder")[0]
    assert mark["bucket"] == "my-bucket" and mark["content"] == "deep"
    assert mark["object"]["key"] == rel.replace(" ", "+")


def test_a_failing_handler_is_retried_then_dead_lettered(host, folders):
    name = unique(".bin")
    name = "fail-" + name
    (folders["flaky"] / name).write_text("x")
    dead = wait_for(lambda: [e for e in api(host, "/functions/flaky/dlq")[1]["events"]
                             if name.replace(" ", "+") in json.loads(e["payload"])[
                                 "Records"][0]["s3"]["object"]["key"]],
                    timeout=30, what="the dead letter")[0]
    assert dead["deadReason"] == "RetriesExhausted" and dead["attempts"] == 2
    assert dead["trigger"] == "file" and dead["route"] == "file:1"
    assert [e["errorType"] for e in dead["errors"]] == ["RuntimeError"] * 2


def test_more_files_than_the_queue_takes_all_run_once(host, folders):
    names = [f"many-{i:03}.dat" for i in range(300)]     # 15 times the cap of 20
    for name in names:
        (folders["capped"] / name).write_text(name)
    def runs() -> dict[str, int]:
        counts: dict[str, int] = {}
        for path in folders["marks"].glob("*.json"):
            key = json.loads(path.read_text())["key"]
            counts[key] = counts.get(key, 0) + 1
        return counts
    wait_for(lambda: set(names) <= set(runs()), timeout=120,
             what="every file to run")
    time.sleep(0.5)       # what must NOT happen: any file run twice
    counts = runs()
    assert [n for n in names if counts[n] != 1] == []
    # The watcher waited for room instead of having firings refused.
    assert "firing skipped" not in host.log(whole=True)


def test_links_and_fifos_dropped_in_fire_nothing_and_are_logged_once(host, folders):
    link, fifo, real = unique(), unique(), unique()
    os.symlink("/etc/shadow", folders["inbox"] / link)         # root-only, as Sora runs
    os.mkfifo(folders["inbox"] / fifo)                         # would block a reader
    (folders["inbox"] / real).write_text("real")
    wait_for(lambda: marks_for(folders, real), what="the real file to run")
    time.sleep(1.0)       # what must NOT happen: a run for the link or the fifo
    assert not marks_for(folders, link) and not marks_for(folders, fifo)
    log = host.log(whole=True)
    assert log.count(f"'{link}' skipped") == 1 and "symbolic link" in log
    assert log.count(f"'{fifo}' skipped") == 1 and "a fifo" in log
    # The content of /etc/shadow went nowhere: no event carries its MD5 or size.
    shadow = open("/etc/shadow", "rb").read()
    for path in folders["marks"].glob("*.json"):
        assert hashlib.md5(shadow).hexdigest() not in path.read_text()


def test_healthz_and_the_service_report_the_watchers(host, folders):
    from sora.triggers import control
    status = control.request(str(host.base / "state"), "status", {"function": "csv"})
    watcher = status["functions"]["csv"][0]
    assert watcher["kind"] == "file" and watcher["state"] == "active"
    assert watcher["detail"] == f"watching {folders['inbox']}"
    assert watcher["seen"] >= 1 and "pending" in watcher


def test_a_killed_trigger_service_is_started_again_and_loses_no_file(host, folders):
    """kill -9 of the trigger service alone (a crash on a crafted name or event would end it
    the same way): the supervisor starts it again, a file dropped while it was down runs once,
    and the files it had already processed do not run again."""
    import signal
    before = unique()
    (folders["inbox"] / before).write_text("before")
    wait_for(lambda: marks_for(folders, before), what="the file before the kill")
    pid = wait_for(lambda: host.health()["triggers"].get("pid"), what="the service's pid")
    os.kill(pid, signal.SIGKILL)
    during = f"during {unique()}"
    (folders["inbox"] / during).write_text("during")
    wait_for(lambda: host.health()["triggers"].get("pid") not in (None, pid) and
             host.health()["triggers"]["scheduler"]["state"] == "running",
             timeout=60, what="the service started again")
    wait_for(lambda: marks_for(folders, during), timeout=30, what="the file dropped meanwhile")
    deadline = time.monotonic() + 1.0   # a second firing would show within this
    while time.monotonic() < deadline:
        assert len(marks_for(folders, during)) == 1
        assert len(marks_for(folders, before)) == 1
        time.sleep(0.05)


def test_files_that_arrive_while_the_host_is_down_run_once_it_is_back(tmp_path):
    inbox, marks = tmp_path / "inbox", tmp_path / "marks"
    inbox.mkdir()
    marks.mkdir()
    folders = {"marks": marks}
    fn = python_function(tmp_path / "fns", "later", inbox, marks,
                         {"path": str(inbox), "events": ["created", "modified", "deleted"],
                          "debounceMs": 100})
    (inbox / "before.csv").write_text("before")
    (inbox / "gone.csv").write_text("gone")
    host = SoraHost(tmp_path, [fn], https=False).start()
    try:
        wait_for(lambda: marks_for(folders, "before.csv") and marks_for(folders, "gone.csv"),
                 what="the files already there")
        wait_for(lambda: control_seen(tmp_path) == 2, what="both marked seen")
    finally:
        assert host.stop() == 0
    # While it is down: one file arrives, one changes, one goes.
    (inbox / "while down.csv").write_text("arrived")
    (inbox / "before.csv").write_text("before, changed")
    (inbox / "gone.csv").unlink()
    host = host.restarted().start()
    try:
        wait_for(lambda: marks_for(folders, "while down.csv"), what="the new file")
        wait_for(lambda: len(marks_for(folders, "before.csv")) == 2, what="the changed file")
        wait_for(lambda: marks_for(folders, "gone.csv", "ObjectRemoved:Delete"),
                 what="the delete")
        time.sleep(1.0)      # what must NOT happen: anything processed a second time
        assert len(marks_for(folders, "while down.csv")) == 1
        assert len(marks_for(folders, "before.csv")) == 2
        assert len(marks_for(folders, "gone.csv")) == 2
    finally:
        assert host.stop() == 0


def control_seen(base) -> int:
    from sora.triggers import control
    status = control.request(str(base / "state"), "status", {"function": "later"})
    return status["functions"]["later"][0].get("seen", 0)
