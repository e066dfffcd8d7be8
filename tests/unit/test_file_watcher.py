"""The file watcher (sora.triggers.files) on real temporary folders, with a stand-in sink that
commits into a real SQLite file: settling, created/modified/deleted, reconcile after a restart,
back-pressure, S3 encoding, the inotify limit, and the attacker's side (links, fifos, swaps)."""
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from types import SimpleNamespace

import pytest

from sora.config import FileTrigger
from sora.store import file_seen
from sora.triggers import files, inotify_limits, settling
from sora.triggers.files import FileWatcher
from sora.triggers.sink import connect
from sora.triggers.watched_folder import FileStat, WatchedFolder


class FakeSink:
    """The trigger service's Sink as the watcher sees it: `call` and `fire` on a real SQLite
    queue.db (the store's tables, and `fired` for what it enqueued); `fire` runs `also` in the
    transaction that stores the event, and refuses (None) while `full` is set or the stored
    events reach `cap`."""
    host = ""

    def __init__(self, state_dir):
        self.conn = connect(str(state_dir))
        self.conn.execute("CREATE TABLE IF NOT EXISTS fired (request_id TEXT, route TEXT, "
                          "payload BLOB)")
        self.full = False
        self.cap = None
        self.refused = 0
        self.n = 0

    async def call(self, func):
        return func(self.conn)

    async def fire(self, fn, trigger, route, payload, due, also=None):
        stored = self.conn.execute("SELECT COUNT(*) FROM fired").fetchone()[0]
        if self.full or (self.cap is not None and stored >= self.cap):
            self.refused += 1
            return None
        self.n += 1
        request_id = f"req-{self.n}"
        with self.conn.transaction():
            self.conn.execute("INSERT INTO fired VALUES (?, ?, ?)", (request_id, route, payload))
            if also is not None:
                also(self.conn)
        return request_id

    def records(self):
        """The S3 records enqueued so far, in order."""
        return [json.loads(row[0])["Records"][0] for row in
                self.conn.execute("SELECT payload FROM fired ORDER BY rowid")]

    def drain(self):
        """The function ran them: the queue is empty again."""
        with self.conn.transaction():
            self.conn.execute("DELETE FROM fired")


def fn_of(directory):
    # isolation: none (sandboxed False): no ACL is granted (sora.isolation.watched.grant_file)
    return SimpleNamespace(name="fx", directory=str(directory), env={}, sandboxed=False)


def trigger_of(path, **kw):
    kw.setdefault("events", ("created", "modified", "deleted"))
    kw.setdefault("debounceMs", 100)
    return FileTrigger(path=str(path), index=1, **kw)


@pytest.fixture
def inbox(tmp_path):
    folder = tmp_path / "fn" / "inbox"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def sink(tmp_path):
    return FakeSink(tmp_path)


async def until(predicate, timeout=8.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextlib.asynccontextmanager
async def watching(inbox, sink, **kw):
    watcher = FileWatcher(fn_of(inbox.parent), trigger_of(inbox, **kw), sink)
    task = asyncio.create_task(watcher.run())
    try:
        await until(lambda: watcher.detail.startswith("watching") or watcher.state == "error",
                    what="the watcher to start")
        yield watcher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def run(coro):
    asyncio.run(asyncio.wait_for(coro, 60))


async def quiet_for(watcher, seconds):
    """Let the watcher run for `seconds` (to see that it does NOT fire)."""
    await asyncio.sleep(seconds)


# --- settling, the policy -------------------------------------------------------------------------
def test_look_waits_for_quiet_and_a_stable_stat():
    a, b = FileStat(1, 10, 10, 7), FileStat(2, 11, 11, 7)
    pending = settling.Pending(changed=0.0, stat=a)
    assert settling.look(pending, a, None, 0.05, 0.1) == settling.WAIT      # not quiet yet
    assert settling.look(pending, b, None, 0.2, 0.1) == settling.WAIT       # grew: again
    assert pending.changed == 0.2 and pending.stat == b
    assert settling.look(pending, b, None, 0.25, 0.1) == settling.WAIT
    assert settling.look(pending, b, None, 0.31, 0.1) == settling.CREATED
    seen = file_seen.Seen(2, 11, "x")
    assert settling.look(pending, b, seen, 0.31, 0.1) == settling.NOTHING
    assert settling.look(pending, b, file_seen.Seen(1, 10, "x"), 0.31, 0.1) == settling.MODIFIED
    gone = settling.Pending(changed=0.0, stat=None)
    assert settling.look(gone, None, seen, 0.2, 0.1) == settling.DELETED
    assert settling.look(gone, None, None, 0.2, 0.1) == settling.NOTHING


def test_file_seen_marks_forgets_and_keeps_the_highest_sequencer(tmp_path, store_backend):
    conn = connect(str(tmp_path), store_backend)
    file_seen.mark(conn, "h", "f", "k", "a.csv", file_seen.Seen(3, 4, "e"))
    file_seen.mark(conn, "h", "f", "k", "a.csv", file_seen.Seen(5, 6, "g"))
    file_seen.mark(conn, "h", "f", "other", "b.csv", file_seen.Seen(1, 1, None))
    assert file_seen.seen(conn, "h", "f", "k") == {"a.csv": file_seen.Seen(5, 6, "g")}
    # a watched folder is one host's: another host's same trigger has its own rows
    file_seen.mark(conn, "h2", "f", "k", "a.csv", file_seen.Seen(9, 9, "z"))
    assert file_seen.seen(conn, "h", "f", "k") == {"a.csv": file_seen.Seen(5, 6, "g")}
    file_seen.forget(conn, "h", "f", "k", "a.csv")
    assert file_seen.seen(conn, "h", "f", "k") == {}
    assert file_seen.seen(conn, "h2", "f", "k") == {"a.csv": file_seen.Seen(9, 9, "z")}
    file_seen.record_sequencer(conn, "h", "f", "k", 7)
    file_seen.record_sequencer(conn, "h", "f", "k", 5)
    file_seen.record_sequencer(conn, "h2", "f", "k", 2)
    assert file_seen.last_sequencer(conn, "h", "f", "k") == 7
    assert file_seen.last_sequencer(conn, "h2", "f", "k") == 2
    conn.close()
    assert file_seen.format_sequencer(10) < file_seen.format_sequencer(11) < \
        file_seen.format_sequencer(256)


def test_the_real_sink_on_each_store_fires_once_and_remembers_under_the_host(
        inbox, tmp_path, store_backend):
    """The trigger service's own Sink on both backends: the file's event in the queue, its
    seen-state under this host's id, so a second watcher (a restart) fires nothing again and
    another host's watcher of a folder at the same path starts from nothing."""
    from sora.store import queue
    from sora.triggers.sink import Sink
    fn = SimpleNamespace(**vars(fn_of(inbox.parent)),
                         eventInvoke=SimpleNamespace(maxQueuedEvents=100, maxQueuedMB=1))
    (inbox / "a.csv").write_bytes(b"1,2\n")

    async def watch(host, settle):
        sink = Sink(str(tmp_path / host), store_config=store_backend, host=host)
        try:
            watcher = FileWatcher(fn, trigger_of(inbox), sink)
            task = asyncio.create_task(watcher.run())
            await until(lambda: watcher.detail.startswith("watching"), what="watching")
            await asyncio.sleep(settle)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return await sink.call(lambda c: c.execute(
                "SELECT payload FROM events WHERE function = 'fx' ORDER BY id").fetchall())
        finally:
            sink.close()

    async def body():
        first = await watch("h1", 0.6)
        again = await watch("h1", 0.6)
        other = await watch("h2", 0.6)
        return first, again, other
    first, again, other = asyncio.run(asyncio.wait_for(body(), 60))
    keys = [json.loads(bytes(row[0]))["Records"][0]["s3"]["object"]["key"] for row in other]
    shared = store_backend.kind == "postgresql"    # SQLite: each host its own queue.db
    assert len(first) == len(again) == 1 and keys == ["a.csv"] * (2 if shared else 1)
    conn = connect(str(tmp_path / "h1"), store_backend)
    assert set(file_seen.seen(conn, "h1", "fx", trigger_of(inbox).key)) == {"a.csv"}
    assert queue.stored_totals(conn, "fx")[0] == (2 if shared else 1)
    conn.close()


# --- what fires -----------------------------------------------------------------------------------
def test_created_modified_deleted_fire_once_each_with_s3_fields(inbox, sink):
    async def body():
        async with watching(inbox, sink) as watcher:
            (inbox / "red flower.csv").write_bytes(b"a,b\n1,2\n")
            await until(lambda: len(sink.records()) == 1, what="the created event")
            created = sink.records()[0]
            assert created["eventName"] == "ObjectCreated:Put"
            assert created["eventSource"] == "aws:s3" and created["eventVersion"] == "2.1"
            obj = created["s3"]["object"]
            assert obj["key"] == "red+flower.csv"
            assert obj["size"] == 8
            assert obj["eTag"] == hashlib.md5(b"a,b\n1,2\n").hexdigest()
            assert created["s3"]["bucket"]["name"] == "inbox"
            (inbox / "red flower.csv").write_bytes(b"a,b\n1,2\n3,4\n")
            await until(lambda: len(sink.records()) == 2, what="the modified event")
            modified = sink.records()[1]
            assert modified["eventName"] == "ObjectCreated:Put"
            assert modified["s3"]["object"]["size"] == 12
            assert modified["s3"]["object"]["sequencer"] > obj["sequencer"]
            (inbox / "red flower.csv").unlink()
            await until(lambda: len(sink.records()) == 3, what="the deleted event")
            deleted = sink.records()[2]
            assert deleted["eventName"] == "ObjectRemoved:Delete"
            assert "eTag" not in deleted["s3"]["object"] and "size" not in deleted["s3"]["object"]
            await quiet_for(watcher, 0.4)
            assert len(sink.records()) == 3
            assert watcher.status() == {"state": "active", "detail": f"watching {inbox}",
                                        "pending": 0, "seen": 0}
    run(body())


def test_a_file_written_slowly_in_chunks_fires_once_complete(inbox, sink):
    async def body():
        async with watching(inbox, sink, debounceMs=300) as watcher:
            with open(inbox / "big.bin", "wb") as fh:
                for _ in range(15):
                    fh.write(b"x" * 1000)
                    fh.flush()
                    await asyncio.sleep(0.08)
            await until(lambda: sink.records(), what="the event")
            await quiet_for(watcher, 0.6)
            records = sink.records()
            assert len(records) == 1
            assert records[0]["s3"]["object"]["size"] == 15000
    run(body())


def test_renamed_in_is_created_and_renamed_away_is_deleted(inbox, sink, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "moved.csv").write_text("x")

    async def body():
        async with watching(inbox, sink):
            os.rename(outside / "moved.csv", inbox / "moved.csv")
            await until(lambda: len(sink.records()) == 1)
            assert sink.records()[0]["eventName"] == "ObjectCreated:Put"
            os.rename(inbox / "moved.csv", outside / "back.csv")
            await until(lambda: len(sink.records()) == 2)
            assert sink.records()[1]["eventName"] == "ObjectRemoved:Delete"
            assert sink.records()[1]["s3"]["object"]["key"] == "moved.csv"
    run(body())


def test_only_the_configured_events_fire_and_the_pattern_filters(inbox, sink):
    async def body():
        async with watching(inbox, sink, events=("created",), pattern="*.csv") as watcher:
            (inbox / "a.csv").write_text("1")
            (inbox / "a.txt").write_text("1")
            await until(lambda: sink.records())
            (inbox / "a.csv").write_text("22")       # modified: not configured
            await until(lambda: watcher.seen.get("a.csv") and
                        watcher.seen["a.csv"].size == 2, what="the modification remembered")
            (inbox / "a.csv").unlink()               # deleted: not configured
            await until(lambda: "a.csv" not in watcher.seen, what="the deletion remembered")
            await quiet_for(watcher, 0.3)
            assert [r["s3"]["object"]["key"] for r in sink.records()] == ["a.csv"]
    run(body())


def test_recursive_watches_new_subfolders_and_keys_keep_the_slash(inbox, sink):
    (inbox / "old").mkdir()

    async def body():
        async with watching(inbox, sink, recursive=True) as watcher:
            (inbox / "old" / "one.csv").write_text("1")
            (inbox / "new dir" / "deeper").mkdir(parents=True)
            (inbox / "new dir" / "deeper" / "two.csv").write_text("2")
            await until(lambda: len(sink.records()) == 2, what="both events")
            await until(lambda: "new dir/deeper" in watcher.dirs)
            (inbox / "new dir" / "deeper" / "three.csv").write_text("3")
            await until(lambda: len(sink.records()) == 3, what="the event in the new folder")
            keys = sorted(r["s3"]["object"]["key"] for r in sink.records())
            assert keys == ["new+dir/deeper/three.csv", "new+dir/deeper/two.csv", "old/one.csv"]
    run(body())


def test_not_recursive_ignores_subfolders(inbox, sink):
    (inbox / "sub").mkdir()

    async def body():
        async with watching(inbox, sink) as watcher:
            (inbox / "sub" / "no.csv").write_text("1")
            (inbox / "yes.csv").write_text("1")
            await until(lambda: sink.records())
            await quiet_for(watcher, 0.3)
            assert [r["s3"]["object"]["key"] for r in sink.records()] == ["yes.csv"]
    run(body())


# --- restarts ---------------------------------------------------------------------------------
def test_a_restart_fires_for_what_changed_while_down_and_not_again_for_the_rest(inbox, sink):
    for name in ("keep.csv", "change.csv", "remove.csv"):
        (inbox / name).write_text(name)

    async def body():
        async with watching(inbox, sink):
            await until(lambda: len(sink.records()) == 3, what="the files already there")
        first_max = max(r["s3"]["object"]["sequencer"] for r in sink.records())
        sink.drain()
        # The host is down: files arrive, change and go.
        (inbox / "new.csv").write_text("new")
        (inbox / "change.csv").write_text("changed, longer")
        (inbox / "remove.csv").unlink()
        async with watching(inbox, sink) as watcher:
            await until(lambda: len(sink.records()) == 3, what="what happened while down")
            await quiet_for(watcher, 0.4)
        got = {(r["eventName"], r["s3"]["object"]["key"]) for r in sink.records()}
        assert got == {("ObjectCreated:Put", "new.csv"), ("ObjectCreated:Put", "change.csv"),
                       ("ObjectRemoved:Delete", "remove.csv")}
        assert len(sink.records()) == 3
        assert min(r["s3"]["object"]["sequencer"] for r in sink.records()) > first_max
        sink.drain()
        async with watching(inbox, sink) as watcher:     # nothing changed: nothing fires
            await quiet_for(watcher, 0.4)
            assert sink.records() == [] and watcher.status()["seen"] == 3
    run(body())


def test_a_full_queue_keeps_files_pending_and_loses_none(inbox, sink):
    sink.cap = 5
    names = [f"f{i:03}.csv" for i in range(60)]

    async def body():
        async with watching(inbox, sink, debounceMs=0) as watcher:
            for name in names:
                (inbox / name).write_text(name)
            got: list[str] = []

            def drained():
                got.extend(r["s3"]["object"]["key"] for r in sink.records())
                sink.drain()           # the function ran them
                return len(got) >= len(names)
            await until(lambda: sink.refused, what="the queue to refuse")
            assert watcher.status()["pending"] > 0
            await until(drained, timeout=30, what="every file")
            assert sorted(got) == names          # each once, none lost
    run(body())


def test_fire_now_enqueues_a_given_file_or_what_is_new(inbox, sink):
    async def body():
        async with watching(inbox, sink, debounceMs=60000) as watcher:   # would never settle
            (inbox / "a.csv").write_text("1")
            assert len(await watcher.fire_now("a.csv")) == 1
            (inbox / "b.csv").write_text("2")
            ids = await watcher.fire_now()
            assert len(ids) == 1
            assert [r["s3"]["object"]["key"] for r in sink.records()] == ["a.csv", "b.csv"]
            with pytest.raises(ValueError):
                await watcher.fire_now("missing.csv")
    run(body())


# --- the attacker's side ------------------------------------------------------------------------
def test_a_planted_link_to_a_root_only_file_is_never_read(inbox, sink, tmp_path, caplog):
    secret = tmp_path / "secret"
    secret.write_text("root only")
    secret.chmod(0o600)
    (inbox / "early.csv").symlink_to(secret)

    async def body():
        async with watching(inbox, sink) as watcher:
            (inbox / "planted.csv").symlink_to(secret)
            (inbox / "dir-link.csv").symlink_to(tmp_path)
            (inbox / "real.csv").write_text("ok")
            await until(lambda: sink.records())
            await quiet_for(watcher, 0.3)
            assert [r["s3"]["object"]["key"] for r in sink.records()] == ["real.csv"]
            assert set(watcher.skipped) >= {"early.csv", "planted.csv", "dir-link.csv"}
    with caplog.at_level(logging.WARNING, "sora.triggers.files"):
        run(body())
    lines = [r.getMessage() for r in caplog.records if "planted.csv" in r.getMessage()]
    assert len(lines) == 1 and "symbolic link" in lines[0]        # logged once


def test_a_linked_subfolder_is_not_followed_when_recursive(inbox, sink, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "before.csv").write_text("x")
    (inbox / "link").symlink_to(elsewhere)

    async def body():
        async with watching(inbox, sink, recursive=True) as watcher:
            (inbox / "link2").symlink_to(elsewhere)
            (elsewhere / "after.csv").write_text("x")
            (inbox / "real").mkdir()
            (inbox / "real" / "in.csv").write_text("x")
            await until(lambda: sink.records())
            await quiet_for(watcher, 0.4)
            assert [r["s3"]["object"]["key"] for r in sink.records()] == ["real/in.csv"]
            assert watcher.dirs == {"", "real"}
    run(body())


def test_a_fifo_is_skipped_and_does_not_hang_the_watcher(inbox, sink):
    os.mkfifo(inbox / "early.csv")

    async def body():
        async with watching(inbox, sink) as watcher:
            os.mkfifo(inbox / "pipe.csv")
            (inbox / "after.csv").write_text("x")
            await until(lambda: sink.records())
            await quiet_for(watcher, 0.3)
            assert [r["s3"]["object"]["key"] for r in sink.records()] == ["after.csv"]
            assert "a fifo" in watcher.skipped["pipe.csv"]
    run(body())


def test_a_file_swapped_for_a_link_between_the_look_and_the_hash(inbox, sink, tmp_path,
                                                                 monkeypatch):
    secret = tmp_path / "secret"
    secret.write_text("root only")
    real_md5 = WatchedFolder.md5

    def swap_then_hash(self, relpath, expected, on_read=None, **kw):
        if relpath == "swap.csv":       # the attacker wins the race, every time
            os.unlink(inbox / relpath)
            os.symlink(secret, inbox / relpath)
        return real_md5(self, relpath, expected, on_read, **kw)
    monkeypatch.setattr(WatchedFolder, "md5", swap_then_hash)

    async def body():
        async with watching(inbox, sink) as watcher:
            (inbox / "swap.csv").write_text("innocent")
            (inbox / "fine.csv").write_text("fine")
            await until(lambda: sink.records())
            await until(lambda: "swap.csv" in watcher.skipped, what="the swap noticed")
            await quiet_for(watcher, 0.4)
            assert [r["s3"]["object"]["key"] for r in sink.records()] == ["fine.csv"]
            assert "swap.csv" not in watcher.seen
    run(body())


def test_a_watched_folder_that_is_a_link_is_refused(tmp_path, sink):
    (tmp_path / "fn").mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "fn" / "inbox").symlink_to(target)

    async def body():
        async with watching(tmp_path / "fn" / "inbox", sink) as watcher:
            assert watcher.state == "error"
            assert "symbolic link" in watcher.detail
    run(body())


def test_a_watched_folder_moved_away_is_an_error_until_it_is_back(inbox, sink, monkeypatch):
    monkeypatch.setattr(files, "RETRY_SECONDS", 0.1)

    async def body():
        async with watching(inbox, sink) as watcher:
            os.rename(inbox, inbox.parent / "gone")
            await until(lambda: watcher.state == "error", what="the error")
            assert "moved, removed or replaced" in watcher.detail or "No such" in watcher.detail
            inbox.mkdir()
            await until(lambda: watcher.state == "active" and
                        watcher.detail.startswith("watching"), what="watching again")
            (inbox / "back.csv").write_text("x")
            await until(lambda: sink.records())
    run(body())


# --- the inotify limit ----------------------------------------------------------------------------
def test_too_few_inotify_watches_is_an_error_naming_the_sysctl(inbox, sink, monkeypatch):
    for name in ("a", "b", "c"):
        (inbox / name).mkdir()
    monkeypatch.setattr(inotify_limits, "read_limits", lambda: (10 * files.WATCH_SHARE, 128))
    monkeypatch.setattr(inotify_limits, "read_usage", lambda: (10 * files.WATCH_SHARE - 2, 3))

    async def body():
        async with watching(inbox, sink, recursive=True) as watcher:
            assert watcher.state == "error"
            assert "sysctl fs.inotify.max_user_watches=" in watcher.detail
            assert "needs 4 inotify watches" in watcher.detail
    run(body())


def test_too_few_inotify_instances_is_an_error_naming_the_sysctl(inbox, sink, monkeypatch):
    monkeypatch.setattr(inotify_limits, "read_limits", lambda: (100000, 128))
    monkeypatch.setattr(inotify_limits, "read_usage", lambda: (8, 127))
    with pytest.raises(inotify_limits.InotifyLimit, match="sysctl fs.inotify.max_user_instances"):
        inotify_limits.check(str(inbox), 1, 2)


def test_inotify_usage_counts_our_own_watches():
    watches, instances = inotify_limits.read_usage()
    assert watches >= 0 and instances >= 0
    limits = inotify_limits.read_limits()
    assert limits[0] > 0 and limits[1] > 0


def test_a_subfolder_renamed_away_deletes_the_files_in_it(inbox, sink, tmp_path):
    (inbox / "batch" / "inner").mkdir(parents=True)
    (inbox / "batch" / "a.csv").write_text("a")
    (inbox / "batch" / "inner" / "b.csv").write_text("b")
    (inbox / "other").mkdir()
    (inbox / "other" / "c.csv").write_text("c")

    async def body():
        async with watching(inbox, sink, recursive=True) as watcher:
            await until(lambda: len(sink.records()) == 3, what="the files already there")
            # inotify announces only the folder's move, not the files that went with it.
            os.rename(inbox / "batch", tmp_path / "batch-elsewhere")
            shutil.rmtree(inbox / "other")
            await until(lambda: len(sink.records()) == 6, what="three deletes")
            await quiet_for(watcher, 0.3)
            deletes = sorted(r["s3"]["object"]["key"] for r in sink.records()[3:])
            assert deletes == ["batch/a.csv", "batch/inner/b.csv", "other/c.csv"]
            assert {r["eventName"] for r in sink.records()[3:]} == {"ObjectRemoved:Delete"}
            assert watcher.dirs == {""} and watcher.seen == {}
            # The folder moved away is watched no more: nothing fires for what lands there.
            (tmp_path / "batch-elsewhere" / "late.csv").write_text("x")
            await quiet_for(watcher, 0.3)
            assert len(sink.records()) == 6
    run(body())


def test_an_error_is_logged_once_while_the_watcher_retries(inbox, sink, monkeypatch, caplog):
    monkeypatch.setattr(files, "RETRY_SECONDS", 0.05)
    monkeypatch.setattr(files, "RETRY_MAX_SECONDS", 0.05)
    usage = iter(range(100, 10000))
    monkeypatch.setattr(inotify_limits, "read_limits", lambda: (100, 128))
    monkeypatch.setattr(inotify_limits, "read_usage", lambda: (next(usage), 1))

    async def body():
        async with watching(inbox, sink) as watcher:
            await asyncio.sleep(0.5)                  # several retries
            assert watcher.state == "error"
    with caplog.at_level(logging.ERROR, "sora.triggers.files"):
        run(body())
    assert len([r for r in caplog.records if "max_user_watches" in r.getMessage()]) == 1


def test_the_watched_folder_is_reached_without_links_below_the_function_folder(tmp_path):
    from sora.isolation.nofollow import UnsafePath
    from sora.triggers.watched_folder import open_folder
    fn_dir = tmp_path / "fn"
    (fn_dir / "data" / "inbox").mkdir(parents=True)
    fd = open_folder(str(fn_dir / "data" / "inbox"), str(fn_dir))
    os.close(fd)
    # The function's setup swaps a folder on the way for a link to somewhere of root's.
    os.rename(fn_dir / "data", tmp_path / "moved")
    (tmp_path / "roots").mkdir()
    (tmp_path / "roots" / "inbox").mkdir()
    (fn_dir / "data").symlink_to(tmp_path / "roots")
    with pytest.raises(UnsafePath, match="symbolic link"):
        open_folder(str(fn_dir / "data" / "inbox"), str(fn_dir))
    # Outside the function's folder the operator's path is trusted, its last step is not.
    (tmp_path / "drop").mkdir()
    (tmp_path / "drop" / "inbox").symlink_to(tmp_path / "roots" / "inbox")
    with pytest.raises(UnsafePath, match="symbolic link"):
        open_folder(str(tmp_path / "drop" / "inbox"), str(fn_dir))


def test_a_name_that_is_not_utf8_is_skipped_and_does_not_break_the_watch(inbox, sink, caplog):
    """watchfiles cannot decode such a name: its RustNotify raised from then on, which stopped
    the watcher (state error, restarted with backoff, for every such file a dropper made), and
    the file itself was retried forever (its key cannot be URL-encoded for S3)."""
    async def body():
        async with watching(inbox, sink) as watcher:
            states = []
            bad = os.fsencode(str(inbox)) + b"/bad\xff\xfe.csv"
            os.close(os.open(bad, os.O_CREAT | os.O_WRONLY, 0o644))
            (inbox / "new\nline.csv").write_text("x")

            def fired():
                states.append(watcher.state)
                return len(sink.records()) == 1
            await until(fired, what="the file next to it")
            (inbox / "later.csv").write_text("x")
            await until(lambda: states.append(watcher.state) or len(sink.records()) == 2,
                        timeout=3.0, what="a file dropped after it, without a restart")
            await quiet_for(watcher, 0.5)
            assert [r["s3"]["object"]["key"] for r in sink.records()] == \
                ["new%0Aline.csv", "later.csv"]
            assert "error" not in states and watcher.state == "active"
            assert "not valid UTF-8" in watcher.skipped["bad\udcff\udcfe.csv"]
            assert watcher.pending == {}
    with caplog.at_level(logging.WARNING, "sora.triggers.files"):
        run(body())
    assert not [r for r in caplog.records if "not enqueued" in r.getMessage()]


def test_files_that_take_forever_to_hash_do_not_starve_other_watchers(tmp_path, sink,
                                                                       monkeypatch):
    """A dropper's 16 TB sparse file (no disk used) takes an hour to hash. Hashed on asyncio's
    shared default executor, a few of them held every thread: every other function's watcher
    (whose inotify waits run there too) stopped. Each watcher has its own thread now."""
    import concurrent.futures
    import threading
    release = threading.Event()
    real_md5 = WatchedFolder.md5

    def endless(self, relpath, expected, on_read=None, *args, **kw):
        if relpath.startswith("huge"):
            release.wait(30)                  # an hour, in a real folder
        return real_md5(self, relpath, expected, on_read, *args, **kw)
    monkeypatch.setattr(WatchedFolder, "md5", endless)
    folders = []
    for i in range(5):
        folder = tmp_path / f"fn{i}" / "inbox"
        folder.mkdir(parents=True)
        folders.append(folder)

    async def body():
        asyncio.get_running_loop().set_default_executor(
            concurrent.futures.ThreadPoolExecutor(4))
        async with contextlib.AsyncExitStack() as stack:
            for folder in folders:
                await stack.enter_async_context(watching(folder, sink, debounceMs=50))
            try:
                for folder in folders[:4]:    # the hostile droppers
                    (folder / "huge.bin").write_bytes(b"\0")
                await asyncio.sleep(0.5)      # their hashes have started
                (folders[4] / "small.csv").write_text("x")
                await until(lambda: [r for r in sink.records()
                                     if r["s3"]["object"]["key"] == "small.csv"],
                            timeout=5.0, what="the other watcher's file")
            finally:
                release.set()
    run(body())


def test_a_stopping_watcher_does_not_finish_hashing_a_huge_sparse_file(inbox):
    """A stop (SIGTERM of the service) ends the hash of a dropped sparse file at once, not an
    hour later (the executor's thread would hold the process's exit)."""
    import threading
    from sora.triggers.watched_folder import Changed, open_folder
    with open(inbox / "huge.bin", "wb") as fh:
        fh.truncate(1 << 40)             # 1 TB, no disk used
    folder = WatchedFolder(str(inbox), open_folder(str(inbox)))
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    try:
        with pytest.raises(Changed):
            folder.md5("huge.bin", FileStat.of(os.lstat(inbox / "huge.bin")), stop=stop)
    finally:
        folder.close()
    assert time.monotonic() - started < 1.0


def test_a_flood_of_subfolders_takes_no_more_than_its_share_of_inotify_watches(inbox, sink,
                                                                               monkeypatch):
    """inotify's watches are counted per user, and every function's watcher is root's: a
    dropper making 200,000 subfolders in a recursive folder took them all (no other watcher
    could start or watch a new folder). A watcher takes a share (1/WATCH_SHARE of the limit);
    files in the folders beyond it are found by the periodic full scan, none lost."""
    monkeypatch.setattr(inotify_limits, "read_limits", lambda: (8 * files.WATCH_SHARE, 128))
    monkeypatch.setattr(inotify_limits, "read_usage", lambda uid=None: (0, 0))
    monkeypatch.setattr(files, "RESCAN_SECONDS", 1.0)
    for i in range(6):
        (inbox / f"before{i}").mkdir()

    async def body():
        async with watching(inbox, sink, recursive=True) as watcher:
            assert watcher.state == "active", watcher.detail
            for i in range(14):
                (inbox / f"after{i:02}").mkdir()
            await until(lambda: len(watcher.dirs) == 21, what="every subfolder known")
            for i in range(14):
                (inbox / f"after{i:02}" / "in.csv").write_text("x")
            (inbox / "before0" / "in.csv").write_text("x")
            await until(lambda: len(sink.records()) == 15, timeout=10.0,
                        what="the files in every subfolder, watched or scanned")
            assert len(watcher._labels) == 8            # the share, and no more
            assert "13 beyond the cap of 8" in watcher.detail
    run(body())


def test_a_tree_deeper_than_an_s3_key_is_not_walked(inbox, sink):
    """A dropper's chain of nested folders cost O(depth²) opens and memory per scan (each
    path walked from the top, each kept whole), every RESCAN_SECONDS; no key longer than S3's
    1024 bytes is fired and no folder whose path is is walked."""
    deep = inbox
    for _ in range(400):                 # "dd/" x 400: 1200 bytes
        deep = deep / "dd"
    deep.mkdir(parents=True)
    (inbox / "dd" / "shallow.csv").write_text("x")
    (deep / "bottom.csv").write_text("x")

    async def body():
        async with watching(inbox, sink, recursive=True) as watcher:
            await until(lambda: sink.records(), what="the shallow file")
            await quiet_for(watcher, 0.4)
            assert [r["s3"]["object"]["key"] for r in sink.records()] == ["dd/shallow.csv"]
            assert max(len(d) for d in watcher.dirs) <= 1024
            assert any("longer than an S3 key" in why for why in watcher.skipped.values())
    run(body())


def test_a_fired_key_is_the_name_the_scan_uses_so_a_delete_fires_once(inbox, sink):
    """`sora triggers fire fn 1 --key ./a.csv` remembered the file as "./a.csv" beside the
    scan's "a.csv": the file was one, its deletion fired twice."""
    async def body():
        async with watching(inbox, sink) as watcher:
            (inbox / "sub").mkdir()
            (inbox / "a.csv").write_text("1")
            await until(lambda: len(sink.records()) == 1, what="the created event")
            assert len(await watcher.fire_now("./a.csv")) == 1
            assert len(await watcher.fire_now(".//a.csv")) == 1
            assert set(watcher.seen) == {"a.csv"}
            (inbox / "a.csv").unlink()
            await until(lambda: len(sink.records()) == 4, what="the deleted event")
            await quiet_for(watcher, 0.4)
            keys = [(r["eventName"], r["s3"]["object"]["key"]) for r in sink.records()]
            assert keys == [("ObjectCreated:Put", "a.csv")] * 3 + \
                [("ObjectRemoved:Delete", "a.csv")]
            for key in (".", "./", "sub/."):
                with pytest.raises(ValueError):
                    await watcher.fire_now(key)
    run(body())


def test_a_hard_link_is_not_hashed_while_hard_links_are_unprotected(inbox, sink, tmp_path,
                                                                    monkeypatch):
    """Without fs.protected_hardlinks anyone may hard-link a file they cannot read (root's
    /etc/shadow) into the folder: the watcher (root) hashed it and told the function its size
    and MD5. With the sysctl on, a link is only to a file its maker may read: hashed."""
    from sora.triggers import watched_folder
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret")
    secret.chmod(0o600)
    os.link(secret, inbox / "early.csv")
    unsafe = [True]
    monkeypatch.setattr(watched_folder, "hardlinks_unsafe", lambda: unsafe[0])

    async def body():
        async with watching(inbox, sink) as watcher:
            os.link(secret, inbox / "linked.csv")
            (inbox / "real.csv").write_text("ok")
            await until(lambda: sink.records(), what="the real file")
            await quiet_for(watcher, 0.4)
            assert [r["s3"]["object"]["key"] for r in sink.records()] == ["real.csv"]
            assert "hard link" in watcher.skipped["linked.csv"]
            assert "hard link" in watcher.skipped["early.csv"]
            with pytest.raises(ValueError):
                await watcher.fire_now("linked.csv")
            unsafe[0] = False
            assert len(await watcher.fire_now("linked.csv")) == 1
    run(body())


def test_watching_thousands_of_subfolders_does_not_hold_the_shared_event_loop(inbox, sink,
                                                                             monkeypatch):
    """Every schedule and watcher runs in the service's one event loop. Opening and watching
    a recursive folder's subfolders (a second for tens of thousands) ran in it, again each
    time a dropper made one more subfolder: schedules of every function fired late."""
    real = files.RustNotify

    def slow_rust_notify(*args):
        time.sleep(1.0)                  # as 50,000 folders take
        return real(*args)
    monkeypatch.setattr(files, "RustNotify", slow_rust_notify)

    async def body():
        async with watching(inbox, sink, recursive=True) as watcher:
            gaps = []

            async def ticker():
                last = time.monotonic()
                while True:
                    await asyncio.sleep(0.02)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now
            ticking = asyncio.create_task(ticker())
            try:
                for i in range(3):
                    (inbox / f"sub{i}").mkdir()
                    await until(lambda: f"sub{i}" in watcher._labels.values(),
                                what="the subfolder watched")
                (inbox / "sub2" / "in.csv").write_text("x")
                await until(lambda: sink.records(), what="a file in the new subfolder")
            finally:
                ticking.cancel()
            assert max(gaps) < 0.5, max(gaps)
    run(body())


def test_a_name_with_a_newline_does_not_forge_a_log_line(inbox, sink, caplog):
    forged = "x.csv\n2026-12-07 00:00:00 [supervisor 1] ERROR forged"
    os.mkfifo(inbox / forged)                # skipped, so logged with its name

    async def body():
        async with watching(inbox, sink) as watcher:
            await until(lambda: forged in watcher.skipped, what="the fifo skipped")
    with caplog.at_level(logging.WARNING, "sora.triggers.files"):
        run(body())
    lines = [r.getMessage() for r in caplog.records if "forged" in r.getMessage()]
    assert lines and all("\n" not in line for line in lines)


def test_the_seen_state_is_kept_under_the_host_on_a_shared_store_only():
    """SQLite: '' (queue.db is the host's own, and a queue.db from before the host column
    migrates its rows as '': an upgrade fires no file again); PostgreSQL: the host's id."""
    from sora.config import StoreConfig
    from sora.triggers.sink import seen_host
    cluster = SimpleNamespace(name="edge-1")
    assert seen_host(SimpleNamespace(store=StoreConfig(), cluster=cluster,
                                     stateDir="/srv/sora")) == ""
    shared = StoreConfig(kind="postgresql", url="postgresql://sora@db/sora")
    assert seen_host(SimpleNamespace(store=shared, cluster=cluster,
                                     stateDir="/srv/sora")) == "edge-1"
