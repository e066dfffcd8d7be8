"""File triggers: a watcher per enabled `{file: ...}` trigger, run by the trigger service.

A FileWatcher turns changes in its folder into S3 event notifications on the function's
durable queue (sora.triggers.shapes.s3_event, through the service's Sink): created and
modified files as ObjectCreated:Put, deleted ones as ObjectRemoved:Delete, each once, when it
has settled (sora.triggers.settling).

How it watches. inotify through watchfiles' RustNotify, one instance per watcher, with one
non-recursive watch per folder: watchfiles' own recursive mode follows symbolic links to
folders (a link to / planted in the folder would have it watch the whole disk), so the watcher
walks the subfolders itself, without following links (sora.triggers.watched_folder), and
watches each by its descriptor's /proc/self/fd path, which puts the watch on exactly the folder
it opened, whatever is renamed meanwhile. A new subfolder means a new RustNotify over the new
set (made before the old one closes, so no change falls between) and a scan of the new
subfolder (files written into it before its watch existed). Notifications are only hints: what
fires is decided by looking at the folder from the watcher's own descriptor, so a dropped
notification (inotify's queue overflows at 16384) costs latency, not a file: a full scan every
RESCAN_SECONDS finds what no notification announced. RustNotify is used rather than `awatch`
because the watcher must know when its watches are in place, before it scans.

What it remembers (sora.store.file_seen, under this host's id: a watched folder is one
host's own, even on a store a cluster shares). A file is marked seen (size, mtime, eTag) in the
same transaction that enqueues its event, so after a crash or a restart the start-up scan
fires for exactly the files that arrived, changed or went away since, and not for the ones
already processed. The S3 sequencer is a per-trigger counter, persisted with each event.

Back-pressure. When the Sink refuses an event (the function has as many events stored as its
eventInvoke caps allow), the file stays pending and the watcher waits (doubling up to
BACKOFF[1]) before trying again: nothing is dropped, so 10,000 files landing at once all run,
as fast as the function drains its queue.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import fnmatch
import functools
import logging
import os
import re
import resource
import threading
import time
from dataclasses import dataclass

from watchfiles._rust_notify import RustNotify

from ..isolation import nofollow, watched
from ..store import backend, file_seen, queue
from ..store.file_seen import Seen
from . import inotify_limits, settling, shapes
from .settling import Pending
from .sink import caps_of
from .watched_folder import TOO_LONG, Changed, WatchedFolder, open_folder, too_long

log = logging.getLogger("sora.triggers.files")

TICK_MS = 50                # how often pending files are looked at
IDLE_MS = 1000              # how long a watch waits when nothing is pending
RESCAN_SECONDS = 30.0       # a full scan: what inotify did not announce (overflow)
RETRY_SECONDS = 2.0         # after an error (folder gone, inotify limit): start again,
RETRY_MAX_SECONDS = 30.0    # ... waiting twice as long each time up to this
BACKOFF = (0.25, 5.0)       # the queue refused an event: first wait, longest wait
SETTLE_ROUND_SECONDS = 1.0  # a settling round yields to the watch after this long
MAX_SKIPPED = 1000          # skipped entries remembered (each logged once)
WATCH_SHARE = 8             # a watcher takes at most 1/8 of the user's inotify watches
BATCH = 64                  # settled changes hashed on one thread hop, commits queued at once


class WatcherError(Exception):
    """The watcher cannot watch (folder gone or a link, inotify limit): state `error`."""


class FileWatcher:
    def __init__(self, fn, trigger, sink):
        self.fn, self.trigger, self.sink = fn, trigger, sink
        self.route = f"file:{trigger.index}"
        self.region = shapes.function_region(fn)
        self.quiet = trigger.debounceMs / 1000
        self.state, self.detail = "active", "starting"
        self.seen: dict[str, Seen] = {}
        self.pending: dict[str, Pending] = {}
        self.dirs: set[str] = set()               # watched folders, relative ("": the folder)
        self.skipped: dict[str, str] = {}          # relpath -> why (logged once)
        self.folder: WatchedFolder | None = None
        self._notify: RustNotify | None = None
        self._labels: dict[str, str] = {}          # /proc/self/fd/N -> relative folder
        self._unscanned: set[str] = set()          # new subfolders to scan once watched
        self._rewatch = False
        self.unwatched = 0                         # subfolders beyond the cap: scanned only
        self._undecodable_logged = False
        self._sequencer = 0
        self._backoff = 0.0
        self._blocked_until = 0.0
        self._batch = BATCH                        # changes per batch (1 after a refusal)
        self._stop = threading.Event()             # ends a RustNotify.watch in its thread
        # Its own thread for what blocks (inotify waits, scans, hashes): on asyncio's shared
        # default executor (a handful of threads), a few files that take an hour to hash (a
        # dropped 16 TB sparse file uses no disk) held them all, and every other watcher
        # stopped.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"sora-watch-{fn.name}-{trigger.index}")
        self._lock = asyncio.Lock()                # settling vs fire_now: one at a time

    # --- what the service asks ----------------------------------------------------------------
    def status(self) -> dict:
        return {"state": self.state, "detail": self.detail, "pending": len(self.pending),
                "seen": len(self.seen)}

    async def run(self) -> None:
        """Watch until cancelled; an error (folder missing or replaced by a link, inotify
        limit) is shown in status() and the watcher starts again RETRY_SECONDS later."""
        delay = RETRY_SECONDS
        try:
            while True:
                try:
                    await self._start()
                    delay = RETRY_SECONDS          # it watched: the next error starts afresh
                    await self._watch()
                except (WatcherError, inotify_limits.InotifyLimit, OSError, RuntimeError,
                        *backend.ERRORS) as exc:
                    self._fail(exc)
                self._close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
        finally:
            self._stop.set()
            self._close()
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _blocking(self, func, *args):
        """`func(*args)` on the watcher's own thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(func, *args))

    async def fire_now(self, key: str | None = None) -> list[str]:
        """A manual firing (`sora triggers fire`): with `key` (a path relative to the watched
        folder), ObjectCreated:Put for that file as it is now; without, a scan of the folder,
        and everything new, changed or gone fires without waiting for the quiet time.
        Returns the request ids enqueued."""
        if self.folder is None:
            raise WatcherError("the watcher is not watching yet")
        async with self._lock:
            if key is not None:
                # The path as the scan names it ("./a.csv", "a//b.csv" are "a.csv", "a/b.csv"):
                # else one file is remembered under two names, and its deletion fires twice.
                rel = "/".join(part for part in key.split("/") if part not in ("", "."))
                entry = self.folder.entry(rel) if rel else None
                if entry is None or entry.kind != "file":
                    raise ValueError(f"expected a regular file beneath {self.trigger.path}, "
                                     f"got {key!r} "
                                     f"({entry.why or entry.kind if entry else 'the folder'})")
                fired: list[str] = []
                await self._apply([_Change(rel, settling.CREATED, entry.stat, True)], fired)
                return fired
            self._merge(await self._blocking(self.folder.scan, self.trigger.recursive),
                        time.monotonic(), full=True)
            return await self._settle(manual=True)

    # --- starting -------------------------------------------------------------------------------
    async def _start(self) -> None:
        if self.state != "error":    # an error stays shown until watching works again
            self.state, self.detail = "active", f"starting: scanning {self.trigger.path}"
        self._stop.clear()
        self.folder = WatchedFolder(self.trigger.path,
                                    open_folder(self.trigger.path, self.fn.directory))
        name, key, host = self.fn.name, self.trigger.key, self.sink.host

        def load(conn):
            return (file_seen.seen(conn, host, name, key),
                    file_seen.last_sequencer(conn, host, name, key))
        self.seen, self._sequencer = await self.sink.call(load)
        self.pending.clear()
        self.dirs = {""}
        if self.trigger.recursive:    # the folders to watch, before the watches exist
            self.dirs |= set((await self._blocking(self.folder.scan, True)).dirs)
        await self._blocking(inotify_limits.check, self.trigger.path,
                             min(len(self.dirs), _watch_cap()), 2)
        await self._make_notify()
        # The authoritative scan comes after the watches are in place: a file landing now is
        # found by the scan, or announced by a watch, or both (settling makes it fire once).
        self._merge(await self._blocking(self.folder.scan, self.trigger.recursive),
                    time.monotonic(), full=True)
        self._describe()
        log.info("%s %s: watching %s (%d folder(s)), %d file(s) seen before, %d to look at",
                 name, self.route, self.trigger.path, len(self.dirs), len(self.seen),
                 len(self.pending))

    async def _make_notify(self, renew: bool = False) -> None:
        """A RustNotify with one watch per folder in `dirs` up to the cap (replacing the
        current one after the new one watches; `renew`: even when it would watch the same).
        Made on the watcher's thread: thousands of folders to open and watch took the event
        loop, which every schedule and watcher shares, for a second each time a dropper made
        one more subfolder."""
        chosen = self._to_watch()
        if not renew and self._notify is not None and \
                set(chosen) == set(self._labels.values()):
            return                     # new subfolders beyond the cap only: nothing to add
        notify, labels = await self._blocking(self._new_notify, chosen)
        old, old_labels = self._notify, self._labels
        self._notify, self._labels = notify, labels
        # Folders that could not be opened are no longer known; those beyond the cap are
        # (the full scan finds what lands in them).
        self.dirs = set(labels.values()) | (self.dirs - set(chosen))
        if old is not None:
            # What the old instance heard since it was last asked, before it goes: a change
            # in a folder both watch may be announced by the old one only.
            try:
                leftover = await self._blocking(old.watch, 20, 5, 1, None)
            except RuntimeError as exc:
                if not _undecodable(exc):
                    raise
                leftover = None        # broken by a name: the caller scans everything
            old.close()
            if isinstance(leftover, set):
                now = time.monotonic()
                for _, path in leftover:
                    rel = _relpath(old_labels, path)
                    if rel:
                        self._note(rel, now)

    def _new_notify(self, chosen: list[str]) -> tuple[RustNotify, dict[str, str]]:
        """(on the watcher's thread) Each folder opened without links; the watch goes on what
        was opened (its /proc/self/fd path), and the descriptors are closed once it is."""
        _ensure_fd_room(len(chosen))
        labels: dict[str, str] = {}
        fds: list[int] = []
        try:
            for rel in chosen:
                try:
                    fd = self.folder.open_dir(rel)
                except OSError:        # gone, or a link now: no longer watched
                    if rel == "":
                        raise
                    continue
                fds.append(fd)
                labels[f"/proc/self/fd/{fd}"] = rel
            try:
                notify = RustNotify(list(labels), False, False, 300, False, False)
            except (OSError, RuntimeError) as exc:
                raise WatcherError(inotify_limits.describe_os_error(
                    self.trigger.path, exc if isinstance(exc, OSError) else OSError(str(exc)),
                    len(labels))) from None
        finally:
            for fd in fds:
                os.close(fd)
        return notify, labels

    def _to_watch(self) -> list[str]:
        """The folders that get a watch: all, up to the cap (the shallowest first). inotify's
        watches are counted per user, and the trigger service is one user for every
        function: a dropper making 200,000 subfolders in a recursive folder would otherwise
        take them all, and no other function's watcher (nor any other of root's inotify
        users) could add one. Those beyond are found by the full scan every RESCAN_SECONDS."""
        ordered = sorted(self.dirs, key=lambda rel: (rel.count("/") + bool(rel), rel))
        cap = _watch_cap()
        self.unwatched = max(0, len(ordered) - cap)
        return ordered[:cap]

    # --- watching -------------------------------------------------------------------------------
    async def _watch(self) -> None:
        next_rescan = time.monotonic() + RESCAN_SECONDS
        while True:
            if self._rewatch:
                self._rewatch = False
                await self._make_notify()
                for rel in sorted(self._unscanned):
                    if rel in self.dirs:
                        self._merge(await self._blocking(self.folder.scan, True, rel),
                                    time.monotonic(), under=rel)
                self._unscanned.clear()
            timeout = TICK_MS if self.pending else IDLE_MS
            try:
                changes = await self._blocking(self._notify.watch, 20, 5, timeout,
                                                  self._stop)
            except RuntimeError as exc:
                if not _undecodable(exc):
                    raise
                # A file dropped with a name that is not UTF-8: watchfiles cannot report it
                # and its RustNotify fails from then on, the other changes it held lost. A
                # new one, then a full scan finds them (the name itself is skipped: never
                # opened, so reading it cannot break the new one).
                await self._renotify_after(exc)
                continue
            now = time.monotonic()
            if changes == "stop":
                return
            if isinstance(changes, set):
                for _, path in changes:
                    rel = _relpath(self._labels, path)
                    if rel == "":
                        if not self.folder.still_there(self.fn.directory):
                            raise WatcherError(f"{self.trigger.path} was moved, removed or "
                                               f"replaced; watching again once it is back")
                    elif rel is not None:
                        self._note(rel, now)
            if self.pending and now >= self._blocked_until:
                async with self._lock:
                    await self._settle()
            if now >= next_rescan:
                next_rescan = now + RESCAN_SECONDS
                if not self.folder.still_there(self.fn.directory):
                    raise WatcherError(f"{self.trigger.path} was moved, removed or replaced; "
                                       f"watching again once it is back")
                self._merge(await self._blocking(self.folder.scan, self.trigger.recursive),
                            time.monotonic(), full=True)
            self._describe()

    async def _renotify_after(self, exc: RuntimeError) -> None:
        if not self._undecodable_logged:
            self._undecodable_logged = True
            log.warning("%s %s: a name in %s that is not UTF-8 (%s): watching again and "
                        "scanning the folder", self.fn.name, self.route, self.trigger.path,
                        exc)
        await self._make_notify(renew=True)
        self._merge(await self._blocking(self.folder.scan, self.trigger.recursive),
                    time.monotonic(), full=True)

    def _matches(self, rel: str) -> bool:
        pattern = self.trigger.pattern
        return pattern is None or fnmatch.fnmatchcase(rel.rpartition("/")[2], pattern)

    def _touch(self, rel: str, now: float, stat) -> None:
        pending = self.pending.get(rel)
        if pending is None:
            self.pending[rel] = Pending(now, stat)
        else:
            pending.changed, pending.stat = now, stat

    def _note(self, rel: str, now: float) -> None:
        """A change was announced at `rel`: what is there now decides what to remember."""
        if too_long(rel):              # no S3 key: neither fired nor walked into
            self._skip(rel, TOO_LONG)
            return
        entry = self.folder.entry(rel)
        if entry.kind == "file":
            if self._matches(rel):
                self.skipped.pop(rel, None)
                self._touch(rel, now, entry.stat)
            return
        if entry.kind == "dir":
            if self.trigger.recursive and rel not in self.dirs:
                self.dirs.add(rel)
                self._unscanned.add(rel)
                self._rewatch = True
        else:
            if entry.kind == "other":
                self._skip(rel, entry.why)
            if rel in self.dirs:        # a watched subfolder went away (or is a link now)
                self._drop_dir(rel, now)
        if rel in self.seen or rel in self.pending:
            self._touch(rel, now, None)

    def _drop_dir(self, rel: str, now: float) -> None:
        prefix = rel + "/"
        self.dirs = {d for d in self.dirs if d != rel and not d.startswith(prefix)}
        self._rewatch = True
        for path in [*self.seen, *self.pending]:
            if path.startswith(prefix):
                self._touch(path, now, None)

    def _merge(self, scan, now: float, *, full: bool = False, under: str = "") -> None:
        """Compare a scan (of the whole folder, or of the new subfolder `under`) with what
        was seen: new and changed files, and seen ones no longer there, become pending."""
        for rel, stat in scan.files.items():
            if rel not in self.pending and self._matches(rel) and \
                    settling.differs(stat, self.seen.get(rel)):
                self.pending[rel] = Pending(now, stat)
        prefix = under + "/" if under else ""
        for rel in self.seen:
            if rel.startswith(prefix) and rel not in scan.files and rel not in self.pending:
                self.pending[rel] = Pending(now, None)
        for rel, why in scan.skipped.items():
            if self.trigger.recursive or self._matches(rel):
                self._skip(rel, why)
        if full:
            found = {""} | set(scan.dirs)
            if found != self.dirs:
                self._unscanned |= found - self.dirs
                self.dirs = found
                self._rewatch = True
        else:
            new = set(scan.dirs) - self.dirs
            if new:
                self.dirs |= new
                self._unscanned |= new
                self._rewatch = True

    def _skip(self, rel: str, why: str) -> None:
        """Never fired, logged once (per path and reason)."""
        if self.skipped.get(rel) == why:
            return
        if len(self.skipped) >= MAX_SKIPPED:   # a flood of fifos must not flood the log
            if "\0more" not in self.skipped:      # (no file name holds a NUL)
                self.skipped["\0more"] = "more"
                log.warning("%s %s: more than %d entries skipped in %s; no more are logged",
                            self.fn.name, self.route, MAX_SKIPPED, self.trigger.path)
            return
        self.skipped[rel] = why
        # %r: a dropped name holding a newline must not forge a line of the service's log
        log.warning("%s %s: %r skipped in %s: %s", self.fn.name, self.route, rel,
                    self.trigger.path, why)

    # --- settling and firing --------------------------------------------------------------------
    async def _settle(self, manual: bool = False) -> list[str]:
        """Look at the pending paths whose quiet time is over, oldest change first; fire for
        those settled, BATCH at a time. Returns the request ids enqueued."""
        fired: list[str] = []
        now = time.monotonic()
        started = now
        due = sorted((p.changed, rel) for rel, p in self.pending.items()
                     if manual or (now - p.changed >= self.quiet and now >= p.retry_at))
        batch: list[_Change] = []
        room = await self._room() if due and not manual else BATCH
        if room <= 0:
            self._wait_for_room(progress=False)
            return fired
        for position, (_, rel) in enumerate(due):
            pending = self.pending.get(rel)
            if pending is not None:
                entry = self.folder.entry(rel)
                if entry.kind == "other":
                    self._skip(rel, entry.why)
                current = entry.stat if entry.kind == "file" and self._matches(rel) else None
                now = time.monotonic()
                quiet = 0.0 if manual else self.quiet
                verdict = settling.look(pending, current, self.seen.get(rel), now, quiet)
                if verdict == settling.WAIT and manual:   # changed since: as it is now, then
                    verdict = settling.look(pending, current, self.seen.get(rel), now, quiet)
                if verdict == settling.NOTHING:
                    del self.pending[rel]
                elif verdict != settling.WAIT:
                    batch.append(_Change(rel, verdict, current,
                                         verdict in self.trigger.events))
            if len(batch) >= min(self._batch, room) or \
                    (batch and position == len(due) - 1):
                taken, batch = batch, []
                if not await self._apply(taken, fired):
                    break                          # the queue is full: wait, then again
                room -= len(taken)
                if room <= 0 and not manual:
                    room = await self._room()
                    if room <= 0:
                        self._wait_for_room(progress=True)
                        break
                if not manual and time.monotonic() - started > SETTLE_ROUND_SECONDS:
                    break                          # let the watch drain its changes
        return fired

    async def _apply(self, batch: list["_Change"], fired: list[str]) -> bool:
        """Hash, remember and enqueue a batch of settled changes (hashes on one thread hop,
        the events' commits queued together on the sink's thread, in order). False when the
        queue refused some: they stay pending and the watcher backs off."""
        name, key, host = self.fn.name, self.trigger.key, self.sink.host
        to_hash = [c for c in batch if c.fires and c.verdict != settling.DELETED]
        if to_hash:
            results = await self._blocking(self._hash_all, to_hash)
            for change, result in zip(to_hash, results):
                if isinstance(result, str):
                    change.entry = Seen(change.current.size, change.current.mtime_ns, result)
                    continue
                change.again = True                # swapped, grown or gone since the look
                if isinstance(result, OSError) and not isinstance(result, FileNotFoundError):
                    self._skip(change.rel, str(result) if isinstance(
                        result, nofollow.UnsafePath) else f"cannot be read ({result.strerror})")
        for change in batch:
            if change.again:
                pending = self.pending.get(change.rel)
                if pending is not None:
                    pending.stat, pending.changed = None, time.monotonic()
            elif not change.fires and change.verdict != settling.DELETED:
                change.entry = Seen(change.current.size, change.current.mtime_ns, None)
        quiet_ones = [c for c in batch if not c.fires and not c.again]
        if quiet_ones:                     # kinds the trigger does not fire for: remembered
            def write(conn):
                with conn.transaction():
                    for change in quiet_ones:
                        _remember(conn, host, name, key, change)
            await self.sink.call(write)
            for change in quiet_ones:
                self._done(change)
        firing = [c for c in batch if c.fires and not c.again]
        for offset, change in enumerate(firing, 1):
            change.sequencer = self._sequencer + offset
        results = await asyncio.gather(*(self._enqueue(c) for c in firing),
                                       return_exceptions=True)
        refused = False
        fired_here = 0
        for change, result in zip(firing, results):
            if result is None:
                refused = True
            elif isinstance(result, BaseException):
                log.error("%s %s: %r not enqueued (%s); trying again in %.0fs", name,
                          self.route, change.rel, result, RETRY_SECONDS)
                pending = self.pending.get(change.rel)
                if pending is not None:
                    pending.retry_at = time.monotonic() + RETRY_SECONDS
            else:
                self._sequencer = max(self._sequencer, change.sequencer)
                self._done(change)
                fired.append(result)
                fired_here += 1
        # After a refusal one change probes the queue, and batches grow again from there
        # (doubling, as TCP's slow start): a full batch sent into a full queue would be
        # refused, and recorded as skipped, as many times over.
        self._batch = 1 if refused else min(self._batch * 2, BATCH)
        if refused:
            self._wait_for_room(progress=fired_here > 0)
            return False
        self._backoff = 0.0
        return True

    async def _room(self) -> int:
        """How many more events the function's queue takes before its cap (its
        `eventInvoke.maxQueuedEvents`), read before a batch is sent: events refused by the cap
        are each recorded as a skipped firing, so the watcher sends no more than fit. Other
        producers may fill it meanwhile: the refusal path stays."""
        if getattr(self.fn, "eventInvoke", None) is None:
            return BATCH
        cap = caps_of(self.fn)[0]
        name = self.fn.name
        return await self.sink.call(lambda conn: cap - queue.stored_totals(conn, name)[0])

    def _wait_for_room(self, progress: bool) -> None:
        """The queue is full: try again soon if some went through (the function is draining),
        else wait twice as long as last time."""
        self._backoff = BACKOFF[0] if progress else \
            min(max(self._backoff * 2, BACKOFF[0]), BACKOFF[1])
        self._blocked_until = time.monotonic() + self._backoff
        self.detail = f"the function's event queue is full: {len(self.pending)} file(s) wait"

    def _grant(self, fd: int, folder: os.stat_result) -> None:
        """Let the sandboxed function read the file it is about to be told of (and with
        `writable`, write it), whatever mode its dropper gave it: a file created 0600 masks
        the folder's default ACL entry (sora.isolation.watched.grant_file)."""
        try:
            watched.grant_file(fd, self.fn, self.trigger.writable, folder)
        except OSError as exc:
            log.warning("%s[%d]: could not let the function read %s: %s", self.fn.name,
                        self.trigger.index, self.folder.path, exc)

    def _hash_all(self, changes: list["_Change"]) -> list:
        """Each file's MD5, or the exception that kept it from being read (on a thread)."""
        out: list = []
        for change in changes:
            try:
                out.append(self.folder.md5(change.rel, change.current, self._grant,
                                           stop=self._stop))
            except (Changed, OSError) as exc:
                out.append(exc)
        return out

    async def _enqueue(self, change: "_Change") -> str | None:
        name, key, sequencer = self.fn.name, self.trigger.key, change.sequencer
        host = self.sink.host
        entry = change.entry if change.verdict != settling.DELETED else None

        def also(conn):
            _remember(conn, host, name, key, change)
            file_seen.record_sequencer(conn, host, name, key, sequencer)
        payload = shapes.s3_event(
            self.trigger, shapes.REMOVED if entry is None else shapes.CREATED, change.rel,
            entry.size if entry else None, entry.etag if entry else None,
            file_seen.format_sequencer(sequencer), time.time(), self.region)
        return await self.sink.fire(self.fn, self.trigger, self.route, payload, time.time(),
                                    also=also)

    def _done(self, change: "_Change") -> None:
        self._remembered(change.rel, None if change.verdict == settling.DELETED
                         else change.entry)
        self.pending.pop(change.rel, None)

    def _remembered(self, rel: str, entry: Seen | None) -> None:
        if entry is None:
            self.seen.pop(rel, None)
        else:
            self.seen[rel] = entry

    # --- state ----------------------------------------------------------------------------------
    def _describe(self) -> None:
        if time.monotonic() < self._blocked_until:
            return
        self.state = "active"
        self.detail = (f"watching {self.trigger.path}"
                       + (f" and {len(self.dirs) - 1} subfolder(s)" if len(self.dirs) > 1
                          else ""))
        if self.unwatched:
            self.detail += (f" ({self.unwatched} beyond the cap of {_watch_cap()} inotify "
                            f"watches per watcher are scanned every {RESCAN_SECONDS:.0f}s; raise fs.inotify.max_user_watches to "
                            f"watch them)")

    def _fail(self, exc: BaseException) -> None:
        text = str(exc) if isinstance(exc, (WatcherError, inotify_limits.InotifyLimit)) \
            else f"{self.trigger.path}: {exc}"
        # Logged when it is a new error, not each time a count in the message changes.
        if self.state != "error" or _shape(self.detail) != _shape(text):
            log.error("%s %s: file watcher stopped: %s", self.fn.name, self.route, text)
        self.state, self.detail = "error", text

    def _close(self) -> None:
        if self._notify is not None:
            notify, self._notify = self._notify, None
            try:
                notify.close()
            except RuntimeError:   # still in watch() on its thread: it ends with _stop
                pass
        if self.folder is not None:
            self.folder.close()
            self.folder = None


@dataclass
class _Change:
    """A settled change on its way to the queue (or, for a kind not fired, to file_seen)."""
    rel: str
    verdict: str                  # settling.CREATED | MODIFIED | DELETED
    current: object               # the FileStat the look found (None: deleted)
    fires: bool                   # the trigger fires for this kind (else: only remembered)
    entry: Seen | None = None     # what is remembered once done (None: forgotten)
    again: bool = False           # changed or unreadable while hashed: settle again
    sequencer: int = 0


def _watch_cap() -> int:
    """The most inotify watches one watcher takes: a share of fs.inotify.max_user_watches
    (WATCH_SHARE), so one folder's subfolders cannot exhaust what all watchers share."""
    try:
        limit = inotify_limits.read_limits()[0]
    except (OSError, ValueError):
        limit = 8192                           # the kernel's historical default
    return max(1, limit // WATCH_SHARE)


def _undecodable(exc: RuntimeError) -> bool:
    """watchfiles' error for a path it cannot decode (a name that is not UTF-8)."""
    return "Unable to decode path" in str(exc)


def _shape(text: str) -> str:
    return re.sub(r"\d+", "N", text)


def _relpath(labels: dict[str, str], path: str) -> str | None:
    """The path relative to the watched folder of a change RustNotify reported (`labels`:
    the /proc/self/fd/N path each folder was watched by -> the folder's relative path)."""
    if path in labels:
        return labels[path]
    label, _, name = path.rpartition("/")
    folder = labels.get(label)
    if folder is None:
        return None
    return f"{folder}/{name}" if folder else name


def _remember(conn, host: str, function: str, key: str, change: _Change) -> None:
    if change.verdict == settling.DELETED:
        file_seen.forget(conn, host, function, key, change.rel)
    else:
        file_seen.mark(conn, host, function, key, change.rel, change.entry)


def _ensure_fd_room(folders: int) -> None:
    """A watch is put on a folder through a descriptor, all open together while RustNotify
    starts: raise the soft limit of open files (up to the hard one) when they would not fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = folders + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
