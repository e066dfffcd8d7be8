"""Watch mode's mapping and classification (sora.supervisor.watch), without a host: batches
as watchfiles yields them, handed to a recording stand-in for Arbiter.reload."""
from __future__ import annotations

import json
import os
import threading
import time

import pytest
from watchfiles import Change

from sora.supervisor import watch
from sora.supervisor.watch import Folder, Watcher, folder_of, ignored, is_dependency_file


@pytest.fixture
def folders(tmp_path):
    made = []
    for name in ("api", "worker"):
        directory = tmp_path / name
        directory.mkdir()
        (directory / "index.js").write_text("exports.handler = async () => 1;\n")
        (directory / "package.json").write_text('{"name": "x"}\n')
        (directory / "sora.yaml").write_text("language: nodejs\nsetup: npm install\n")
        made.append(Folder(name, str(directory)))
    # Their setups succeeded (sora.setup.run's record), as on a host that serves them.
    (tmp_path / "state/setup").mkdir(parents=True)
    for folder in made:
        (tmp_path / f"state/setup/{folder.name}.json").write_text('{"hash": "x", "outputs": []}')
    return made


def watcher_for(folders, tmp_path):
    woken = []
    watcher = Watcher(folders, str(tmp_path / "state"), lambda: woken.append(1))
    for folder in folders:
        watcher._remember(folder)
    return watcher, woken


def edit(path, text):
    with open(path, "w") as fh:
        fh.write(text)
    return str(path)


def test_folder_of_maps_a_path_to_the_innermost_function_folder(tmp_path):
    outer, inner = Folder("outer", str(tmp_path / "a")), Folder("inner", str(tmp_path / "a/b"))
    assert folder_of(str(tmp_path / "a/x.js"), [outer, inner]) is outer
    assert folder_of(str(tmp_path / "a/b/x.js"), [outer, inner]) is inner
    assert folder_of(str(tmp_path / "ab/x.js"), [outer, inner]) is None   # a prefix, no folder


@pytest.mark.parametrize("relative, expected", [
    ("node_modules/left-pad/index.js", True), (".venv/lib/x.py", True),
    ("lib/__pycache__/m.cpython-311.pyc", True), (".git/index", True), (".sora/run/x", True),
    (".index.js.swp", True), ("index.js~", True), (".#index.js", True), ("m.pyc", True),
    ("index.js", False), ("lib/util.js", False), ("package.json", False),
    ("node_modules_notes.txt", False)])
def test_ignored(relative, expected):
    assert ignored(relative) is expected


@pytest.mark.parametrize("relative, expected", [
    ("package.json", True), ("package-lock.json", True), ("requirements.txt", True),
    ("requirements-dev.txt", True), ("lib/package.json", False), ("index.js", False),
    ("sora.yaml", False)])
def test_dependency_files(relative, expected):
    assert is_dependency_file(relative) is expected


def test_code_change_reloads_its_function_only_without_setup(folders, tmp_path):
    watcher, woken = watcher_for(folders, tmp_path)
    path = edit(tmp_path / "api/index.js", "exports.handler = async () => 2;\n")
    [found] = watcher.take({(Change.modified, path)}, folders)
    assert (found.function, found.setup, found.paths) == ("api", "skip", ["index.js"])
    assert woken


def test_dependency_change_runs_setup(folders, tmp_path):
    watcher, _ = watcher_for(folders, tmp_path)
    code = edit(tmp_path / "worker/index.js", "exports.handler = async () => 3;\n")
    deps = edit(tmp_path / "worker/package.json", '{"name": "x", "dependencies": {}}\n')
    [found] = watcher.take({(Change.modified, code), (Change.modified, deps)}, folders)
    assert (found.function, found.setup) == ("worker", "force")
    assert sorted(found.paths) == ["index.js", "package.json"]


def test_sora_yaml_runs_setup_only_when_setup_changed(folders, tmp_path):
    watcher, _ = watcher_for(folders, tmp_path)
    spec = edit(tmp_path / "api/sora.yaml", "language: nodejs\nsetup: npm install\ntimeout: 9\n")
    [found] = watcher.take({(Change.modified, spec)}, folders)
    assert found.setup == "skip"
    spec = edit(tmp_path / "api/sora.yaml", "language: nodejs\nsetup: npm ci\ntimeout: 9\n")
    [found] = watcher.take({(Change.modified, spec)}, folders)
    assert found.setup == "force"


def test_a_batch_touching_two_functions_gives_one_reload_each(folders, tmp_path):
    watcher, _ = watcher_for(folders, tmp_path)
    batch = {(Change.modified, edit(tmp_path / name / "index.js", f"// {name}\n"))
             for name in ("api", "worker")}
    assert sorted(r.function for r in watcher.take(batch, folders)) == ["api", "worker"]


def test_ignored_folders_and_unchanged_bytes_reload_nothing(folders, tmp_path):
    watcher, woken = watcher_for(folders, tmp_path)
    (tmp_path / "api/node_modules/pkg").mkdir(parents=True)
    dep = edit(tmp_path / "api/node_modules/pkg/index.js", "module.exports = 1;\n")
    same = str(tmp_path / "api/index.js")
    os.utime(same)   # a touch, or a save that wrote the same bytes
    assert watcher.take({(Change.added, dep), (Change.modified, same)}, folders) == []
    assert not woken


def test_setup_outputs_are_never_a_change(folders, tmp_path):
    (tmp_path / "state/setup/api.json").write_text(json.dumps({
        "hash": "x", "outputs": ["vendor", "package-lock.json"]}))
    watcher, _ = watcher_for(folders, tmp_path)
    (tmp_path / "api/vendor").mkdir()
    made = edit(tmp_path / "api/vendor/lib.py", "x = 1\n")
    assert watcher.take({(Change.added, made)}, folders) == []
    # The lock file the first setup made is the developer's to edit afterwards.
    lock = edit(tmp_path / "api/package-lock.json", '{"lockfileVersion": 3}\n')
    [found] = watcher.take({(Change.modified, lock)}, folders)
    assert found.setup == "force"


def test_setups_own_writes_start_no_reload_loop(folders, tmp_path):
    """While a setup reload runs, the lock file it rewrites and what it creates are its own;
    a code edit made meanwhile still counts."""
    watcher, _ = watcher_for(folders, tmp_path)
    calls = []
    deps = edit(tmp_path / "api/package.json", '{"name": "x", "version": "2"}\n')
    watcher.take({(Change.modified, deps)}, folders)
    watcher.hand_over(lambda **kw: calls.append(kw))
    assert calls == [{"only": {"api"}, "setup": "force", "done": calls[0]["done"]}]
    lock = edit(tmp_path / "api/package-lock.json", '{"lockfileVersion": 3}\n')
    (tmp_path / "api/site").mkdir()
    made = edit(tmp_path / "api/site/x.py", "y = 2\n")
    code = edit(tmp_path / "api/index.js", "exports.handler = async () => 'new';\n")
    [found] = watcher.take({(Change.added, lock), (Change.added, made),
                            (Change.modified, code)}, folders)
    assert (found.paths, found.setup) == (["index.js"], "skip")
    watcher.hand_over(lambda **kw: calls.append(kw))
    assert len(calls) == 1   # the edit waits for the running reload
    calls[0]["done"]({"functions": {"api": {"action": "replaced"}}})
    watcher.hand_over(lambda **kw: calls.append(kw))
    assert [c["setup"] for c in calls] == ["force", "skip"]
    # Setup's late writes, within SETUP_GRACE of its end, are still setup's.
    lock = edit(tmp_path / "api/package-lock.json", '{"lockfileVersion": 3, "x": 1}\n')
    assert watcher.take({(Change.modified, lock)}, folders) == []


def test_changes_during_a_reload_merge_into_one_more(folders, tmp_path):
    watcher, _ = watcher_for(folders, tmp_path)
    calls = []
    for n in range(3):
        watcher.take({(Change.modified, edit(tmp_path / "api/index.js", f"// {n}\n"))}, folders)
        watcher.hand_over(lambda **kw: calls.append(kw))
    assert len(calls) == 1
    watcher.take({(Change.modified, edit(tmp_path / "api/package.json", "{}\n"))}, folders)
    calls[0]["done"]({"functions": {"api": {"action": "replaced"}}})
    watcher.hand_over(lambda **kw: calls.append(kw))
    assert [c["setup"] for c in calls] == ["skip", "force"]


def test_a_broken_folder_reloads_everything(tmp_path):
    directory = tmp_path / "fixme"
    directory.mkdir()
    (tmp_path / "state").mkdir()
    folders = [Folder("fixme", str(directory), broken=True)]
    watcher, _ = watcher_for(folders, tmp_path)
    spec = edit(directory / "sora.yaml", "language: nodejs\n")
    watcher.take({(Change.added, spec)}, folders)
    calls = []
    watcher.hand_over(lambda **kw: calls.append(kw))
    assert (calls[0]["only"], calls[0]["setup"]) == (None, "auto")


def test_the_reload_outcome_is_logged_for_the_terminal(folders, tmp_path, caplog):
    watcher, _ = watcher_for(folders, tmp_path)
    watcher.take({(Change.modified, edit(tmp_path / "api/index.js", "exports.handler = ("))},
                 folders)
    calls = []
    watcher.hand_over(lambda **kw: calls.append(kw))
    calls[0]["done"]({"functions": {"api": {"action": "failed",
                                            "reason": "SyntaxError: Unexpected end of input"}}})
    with caplog.at_level("INFO", logger="sora.supervisor.watch"):
        watcher.hand_over(lambda **kw: calls.append(kw))
    assert "api: reload failed, the previous code keeps serving: SyntaxError" in caplog.text


def test_the_thread_sees_a_real_write_and_stops(folders, tmp_path):
    """inotify through watchfiles: an edit is queued within a deadline, and stop() ends the
    thread."""
    woke = threading.Event()
    watcher = Watcher(folders, str(tmp_path / "state"), woke.set)
    watcher.start()
    try:
        deadline = time.monotonic() + 10
        n = 0
        # The thread notes the folders' files before watching: write until it sees one.
        while not woke.is_set() and time.monotonic() < deadline:
            n += 1
            edit(tmp_path / "api/index.js", f"exports.handler = async () => {n};\n")
            woke.wait(0.3)
        assert woke.is_set(), "no change seen within 10 s"
        found = watcher.queue.get_nowait()
        assert (found.function, found.setup) == ("api", "skip")
    finally:
        watcher.stop()
    assert not watcher._thread.is_alive()


def test_constants_keep_a_save_well_under_a_second():
    assert watch.STEP_MS <= 50 and watch.DEBOUNCE_MS <= 500


def test_a_temp_file_made_and_gone_in_the_batch_is_no_change(folders, tmp_path):
    """sed -i and some editors write a temp file and rename it over the original."""
    watcher, _ = watcher_for(folders, tmp_path)
    gone = str(tmp_path / "api/sedX1y2Z3")
    code = edit(tmp_path / "api/index.js", "exports.handler = async () => 'sed';\n")
    [found] = watcher.take({(Change.added, gone), (Change.deleted, gone),
                            (Change.added, code)}, folders)
    assert found.paths == ["index.js"]


def test_a_writable_folders_own_writes_are_no_change(folders, tmp_path):
    """With writableFolder, as root, what the function writes is owned by its own uid."""
    me = os.getuid()
    folders = [Folder(f.name, f.directory, writer_uid=me if f.name == "api" else None)
               for f in folders]
    watcher, _ = watcher_for(folders, tmp_path)
    written = edit(tmp_path / "api/cache.json", "{}\n")
    assert watcher.take({(Change.added, written)}, folders) == []
    other = edit(tmp_path / "worker/cache.json", "{}\n")
    assert [r.function for r in watcher.take({(Change.added, other)}, folders)] == ["worker"]


def test_a_change_waits_for_a_running_setup(folders, tmp_path):
    """An edit during the host's first `npm install` reloads once it is over: a code-only
    reload begun before would start without what it installs."""
    (tmp_path / "state/setup/api.json").unlink()   # the first setup runs
    watcher, _ = watcher_for(folders, tmp_path)
    calls = []
    watcher.take({(Change.modified, edit(tmp_path / "api/index.js", "// edit\n"))}, folders)
    watcher.hand_over(lambda **kw: calls.append(kw), {"api": {"index.js"}})
    assert calls == []
    (tmp_path / "state/setup/api.json").write_text('{"hash": "x", "outputs": []}')
    watcher.hand_over(lambda **kw: calls.append(kw), {})
    assert [(c["only"], c["setup"]) for c in calls] == [({"api"}, "skip")]


def test_a_code_change_runs_setup_when_it_never_succeeded(folders, tmp_path):
    (tmp_path / "state/setup/api.json").unlink()   # its setup failed: no record
    watcher, _ = watcher_for(folders, tmp_path)
    calls = []
    watcher.take({(Change.modified, edit(tmp_path / "api/index.js", "// edit\n"))}, folders)
    watcher.hand_over(lambda **kw: calls.append(kw))
    assert calls[0]["setup"] == "auto"


def test_files_in_a_file_trigger_s_folder_are_data_not_code(tmp_path):
    """Issue 18: a file dropped into the function's own watched folder (./inbox) is for its
    file trigger; watch mode does not reload the function for it."""
    directory = tmp_path / "csv"
    (directory / "inbox").mkdir(parents=True)
    (directory / "app.py").write_text("def handler(e, c):\n    return 1\n")
    (tmp_path / "state/setup").mkdir(parents=True)
    folder = Folder("csv", str(directory), data_dirs=(str(directory / "inbox"),))
    watcher, woken = watcher_for([folder], tmp_path)
    dropped = edit(directory / "inbox/orders 1.csv", "a,b\n")
    assert watcher.take({(Change.added, dropped)}, [folder]) == []
    code = edit(directory / "app.py", "def handler(e, c):\n    return 2\n")
    [found] = watcher.take({(Change.modified, code)}, [folder])
    assert found.function == "csv" and found.paths == ["app.py"]
