"""Watch mode (`sora-supervisor start --watch`, `sora dev`): a saved file reloads its function.

One thread watches every function folder with watchfiles (inotify, changes batched until none
came for STEP_MS, at most DEBOUNCE_MS). It maps each change to the function whose folder holds
it, drops what is no change of the function's own (the IGNORED folders, editors' swap and
temp files, what setup wrote, what a `writableFolder` function wrote as its own uid, a write
that left a file's bytes as they were), classifies the rest
and queues one `Reload` per function, then wakes the arbiter. The thread never touches the
arbiter: the arbiter loop takes the queue (`hand_over`) and starts each reload itself, through
`Arbiter.reload(only={name}, setup=..., done=...)`, at most one per function at a time; what
changes meanwhile waits and goes in one more reload when the first is done.

Classification: a change to code only reloads with `setup: "skip"` (new workers on the folder
as it is, setup not run even though the folder's hash changed); a change to a dependency file
(package.json, package-lock.json, requirements*.txt) or to `setup` in sora.yaml reloads with
setup run first (`"force"`). A folder that was broken (its sora.yaml invalid) reloads with
everything (`only=None`, setup `"auto"`): its name may be what the fix changes.

No reload loop from setup's own writes: setup's recorded outputs (`<stateDir>/setup/NAME.json`)
and node_modules are never watched; while a function's setup reload runs, its lock file
(npm rewrites package-lock.json) and top-level entries that did not exist when the reload
began (a first `pip install -t .`) are setup's, not the developer's.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import queue
import re
import stat
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import yaml

from ..config import FUNCTION_FILE, FunctionConfig, HostConfig
from ..isolation import nofollow
from ..isolation.uids import sandbox_uid

log = logging.getLogger("sora.supervisor.watch")

# Never a change of the function's code: installed packages, caches, VCS, Sora's own state.
IGNORED = frozenset({"node_modules", ".venv", "__pycache__", ".git", ".sora"})
# Editors' swap, backup and lock files (vim, emacs, JetBrains), and Python's bytecode.
EDITOR_FILES = re.compile(r"(\.sw.|~|\.py[cod]|\.___jb_...___)$|^\.#|^4913$")
DEPENDENCY_FILES = ("package.json", "package-lock.json", "requirements*.txt")
# Dependency files that setup itself writes (npm install rewrites its lock file).
SETUP_WRITES = frozenset({"package-lock.json"})
# watchfiles yields a batch once no change came for STEP_MS, or DEBOUNCE_MS after its first:
# an editor's save (write, rename, chmod) is one batch, and a save is live in well under 1 s.
STEP_MS = 30
DEBOUNCE_MS = 300
# How long after a setup ended its writes are still taken for setup's (inotify's events come
# in the batch after, up to DEBOUNCE_MS later).
SETUP_GRACE = 1.0
# Files larger than this are compared by size and modification time, not read.
DIGEST_MAX_BYTES = 4 << 20


@dataclass(frozen=True)
class Folder:
    """A watched function folder: the function's name, its folder, whether it is broken (its
    sora.yaml could not be loaded), and the uid the function itself writes its folder as, when
    that tells its writes from the developer's (`writableFolder`, Sora running as root: the
    function's own uid)."""
    name: str
    directory: str
    broken: bool = False
    writer_uid: int | None = None
    # Its file triggers' folders inside it (issue 18): files dropped there are data, not code.
    data_dirs: tuple[str, ...] = ()


@dataclass
class Reload:
    """What a batch asks of one function: which files changed and whether setup runs."""
    function: str
    setup: str                   # "skip" | "force" | "auto" (a broken folder)
    paths: list[str] = field(default_factory=list)   # relative to the folder
    everything: bool = False     # only=None: the folder was broken

    def merge(self, other: "Reload") -> None:
        rank = {"skip": 0, "auto": 1, "force": 2}
        if rank[other.setup] > rank[self.setup]:
            self.setup = other.setup
        self.everything = self.everything or other.everything
        self.paths += [p for p in other.paths if p not in self.paths]


def folders_of(config: HostConfig) -> list[Folder]:
    return [*(Folder(fn.name, fn.directory, writer_uid=writer_uid(fn),
                     data_dirs=tuple(t.path for t in fn.files))
              for fn in config.functions),
            *(Folder(b.name, b.directory, broken=True) for b in config.broken)]


def writer_uid(fn: FunctionConfig) -> int | None:
    """The uid a function with `writableFolder` writes its folder as, if it is not the
    developer's: its sandbox's own when Sora runs as root (setup's results are synced back
    owned by the folder's owner)."""
    if not (fn.writableFolder and fn.sandboxed and os.geteuid() == 0):
        return None
    return sandbox_uid(fn)


def folder_of(path: str, folders: list[Folder]) -> Folder | None:
    """The folder that holds `path` (the innermost, if folders nest)."""
    best = None
    for folder in folders:
        top = folder.directory.rstrip(os.sep)
        if (path == top or path.startswith(top + os.sep)) and \
                (best is None or len(top) > len(best.directory.rstrip(os.sep))):
            best = folder
    return best


def ignored(relative: str) -> bool:
    """Whether a change at `relative` (to its function folder) is none of the function's."""
    parts = relative.split(os.sep)
    return any(part in IGNORED for part in parts) or bool(EDITOR_FILES.search(parts[-1]))


def is_dependency_file(relative: str) -> bool:
    return os.sep not in relative and \
        any(fnmatch.fnmatchcase(relative, pattern) for pattern in DEPENDENCY_FILES)


def setup_outputs(state_dir: str, name: str) -> set[str]:
    """The top-level entries the function's last successful setup made (sora.setup.run)."""
    try:
        with open(os.path.join(state_dir, "setup", f"{name}.json"), encoding="utf-8") as fh:
            return set(json.load(fh).get("outputs") or ())
    except (OSError, ValueError, AttributeError):
        return set()


def declared_setup(directory: str):
    """The raw `setup` of the folder's sora.yaml (None when unreadable: the reload says why).
    Read as sora.config reads it (no link followed, no fifo opened blocking, at most 1 MiB):
    setup and a `writableFolder` function can put anything in its place."""
    try:
        raw = nofollow.read_beneath(directory, FUNCTION_FILE, max_bytes=1 << 20)
        data = yaml.safe_load(raw)
    except (OSError, yaml.YAMLError):
        return None
    return data.get("setup") if isinstance(data, dict) else None


def owner(path: str) -> int | None:
    try:
        return os.lstat(path).st_uid
    except OSError:
        return None


def digest(path: str) -> str | None:
    """A file's content as a short digest (None: it is gone).

    The path is in a folder setup and a `writableFolder` function write while this thread
    reads it as root: what is opened is what is checked — opened without following a link
    (a link swapped in after a stat would have had root read /dev/zero into memory until it
    ran out, or a root-only file) and without blocking (a fifo would have hung the watch),
    then `fstat` on the descriptor: only a regular file is read, and never more than
    DIGEST_MAX_BYTES (a file may grow after its size was taken)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:   # a link (ELOOP), a socket, a file it may not read
        try:
            return f"other:{os.lstat(path).st_mode:o}"
        except OSError:
            return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return f"other:{st.st_mode:o}"
        if st.st_size > DIGEST_MAX_BYTES:
            return f"large:{st.st_size}:{st.st_mtime_ns}"
        hasher = hashlib.blake2b(digest_size=16)
        left = DIGEST_MAX_BYTES + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 16))):
            hasher.update(chunk)
            left -= len(chunk)
        if left <= 0:   # it grew past the limit while read
            return f"large:{st.st_size}:{st.st_mtime_ns}"
        return hasher.hexdigest()
    except OSError:
        return None
    finally:
        os.close(fd)


class Watcher:
    """The watching thread (`start`, `stop`) and the arbiter loop's side (`hand_over`)."""

    def __init__(self, folders: list[Folder], state_dir: str, wake: Callable[[], None],
                 step_ms: int = STEP_MS, debounce_ms: int = DEBOUNCE_MS):
        self.state_dir = state_dir
        self.wake = wake
        self.step_ms = step_ms
        self.debounce_ms = debounce_ms
        self._folders = list(folders)
        self._lock = threading.Lock()
        self._restart = threading.Event()   # set: the watch ends (to restart or to stop)
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.queue: queue.SimpleQueue[Reload] = queue.SimpleQueue()
        # The watching thread's own state.
        self._digests: dict[str, str] = {}
        self._setups: dict[str, object] = {}      # function -> its sora.yaml's raw `setup`
        # function -> every output its setups recorded while watched (a later setup records
        # only what it made anew, not what an earlier one made and it rewrote).
        self._outputs: dict[str, set[str]] = {}
        # Shared with the loop (under _lock): functions whose setup reload runs now, and the
        # top-level entries their folder had when it began.
        # (the entries, and until when: inf while it runs, SETUP_GRACE past its end).
        self._setup_running: dict[str, tuple[set[str], float]] = {}
        # The loop's own state.
        self._in_flight: dict[str, float] = {}    # function -> when its reload began
        self._waiting: dict[str, Reload] = {}     # changed while its reload ran
        self._finished: queue.SimpleQueue = queue.SimpleQueue()

    # --- the watching thread ----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sora-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._restart.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def set_folders(self, folders: list[Folder]) -> None:
        """Watch these folders from now on (a reload added, removed or fixed a function)."""
        with self._lock:
            if sorted(folders, key=repr) == sorted(self._folders, key=repr):
                return
            self._folders = list(folders)
        self._restart.set()

    def _run(self) -> None:
        import watchfiles   # the thread's own: nothing else in the supervisor needs it
        # Its "N changes detected" per batch: the reload lines say what changed.
        logging.getLogger("watchfiles").setLevel(logging.WARNING)

        while not self._stopped:
            with self._lock:
                folders = list(self._folders)
            for folder in folders:
                self._remember(folder)
            self._restart.clear()
            existing = [f.directory for f in folders if os.path.isdir(f.directory)]
            if not existing:
                self._restart.wait()
                continue
            log.info("watching %d function folder(s) for changes: %s", len(existing),
                     ", ".join(existing))
            try:
                for batch in watchfiles.watch(*existing, watch_filter=None,
                                              debounce=self.debounce_ms, step=self.step_ms,
                                              stop_event=self._restart, raise_interrupt=False,
                                              rust_timeout=1000, ignore_permission_denied=True):
                    self.take(batch, folders)
            except Exception:   # noqa: BLE001 - the host serves on; watching starts again
                log.exception("watch mode: watching failed; starting again in 1 s")
                self._restart.wait(1.0)

    def _remember(self, folder: Folder) -> None:
        """Note every file's digest and the declared setup, so a write that changes nothing
        reloads nothing."""
        self._setups[folder.name] = declared_setup(folder.directory)
        outputs = self.outputs_of(folder.name)
        for root, dirs, files in os.walk(folder.directory):
            relative_root = os.path.relpath(root, folder.directory)
            dirs[:] = [d for d in dirs if d not in IGNORED and
                       not (relative_root == "." and d in outputs)]
            for name in files:
                path = os.path.join(root, name)
                self._digests[path] = digest(path)

    def take(self, batch, folders: list[Folder]) -> list[Reload]:
        """Classify one batch of (change, path) and queue a Reload per function it touched."""
        reloads: dict[str, Reload] = {}
        for _change, path in sorted(batch, key=lambda c: c[1]):
            folder = folder_of(path, folders)
            if folder is None:
                continue
            relative = os.path.relpath(path, folder.directory)
            if relative == "." or ignored(relative) or os.path.isdir(path):
                continue   # a folder's own event: its files' events follow
            if any(path.startswith(d.rstrip(os.sep) + os.sep) for d in folder.data_dirs):
                continue   # a file for its file trigger, not a change of its code
            if folder.writer_uid is not None and owner(path) == folder.writer_uid:
                continue   # the function's own write (writableFolder), not a code change
            if relative.split(os.sep, 1)[0] in self.outputs_of(folder.name) and \
                    not is_dependency_file(relative):
                continue   # setup's results (sora.setup.run records them), but a lock file
                # that the first `npm install` made is the developer's to edit after
            now = digest(path)
            known = self._digests.get(path, "new")
            if now is None and known == "new":
                continue   # made and gone within the batch: an editor's or sed's temp file
            self._digests[path] = now
            if now == known or self._setup_writes(folder, relative):
                continue   # bytes as they were (a touch, a re-save), or setup's own write
            found = self.classify(folder, relative)
            if found.function in reloads:
                reloads[found.function].merge(found)
            else:
                reloads[found.function] = found
        for found in reloads.values():
            self.queue.put(found)
        if reloads:
            self.wake()
        return list(reloads.values())

    def outputs_of(self, name: str) -> set[str]:
        outputs = self._outputs.setdefault(name, set())
        outputs |= setup_outputs(self.state_dir, name)
        return outputs

    def classify(self, folder: Folder, relative: str) -> Reload:
        if folder.broken:
            return Reload(folder.name, "auto", [relative], everything=True)
        if is_dependency_file(relative):
            return Reload(folder.name, "force", [relative])
        if relative == FUNCTION_FILE:
            before, now = self._setups.get(folder.name), declared_setup(folder.directory)
            self._setups[folder.name] = now
            return Reload(folder.name, "force" if now != before else "skip", [relative])
        return Reload(folder.name, "skip", [relative])

    def _setup_writes(self, folder: Folder, relative: str) -> bool:
        """Whether setup runs in this folder (or ended less than SETUP_GRACE ago: its last
        writes may come in a later batch) and this is its write: the lock file, or under an
        entry the folder did not have when setup began."""
        with self._lock:
            running = self._setup_running.get(folder.name)
        if running is None:
            return False
        before, until = running
        if time.monotonic() > until:
            return False
        return relative in SETUP_WRITES or relative.split(os.sep, 1)[0] not in before

    # --- the arbiter loop's side ------------------------------------------------------------
    def hand_over(self, reload: Callable[..., None],
                  setting_up: dict[str, set[str]] | None = None) -> None:
        """Start the reloads the thread queued (called by the arbiter loop, which `reload`
        belongs to): one per function at a time, what came meanwhile merged into the next.
        `setting_up`: the functions whose setup runs now (the host's first, or a reload's),
        each with the entries its folder had before, so their writes start no reload."""
        self._note_setups(setting_up or {})
        while True:
            try:
                name, report, began = self._finished.get_nowait()
            except queue.Empty:
                break
            self._report(name, report, began)
        while True:
            try:
                wanted = self.queue.get_nowait()
            except queue.Empty:
                break
            if wanted.function in self._waiting:
                self._waiting[wanted.function].merge(wanted)
            else:
                self._waiting[wanted.function] = wanted
        # A function whose setup runs now (the host's first, or a reload's not started here)
        # waits for it: a code-only reload would start without what it installs.
        for name in [n for n in self._waiting
                     if n not in self._in_flight and n not in (setting_up or {})]:
            self._begin(self._waiting.pop(name), reload)

    def _note_setups(self, setting_up: dict[str, set[str]]) -> None:
        ended_until = time.monotonic() + SETUP_GRACE
        with self._lock:
            for name, before in setting_up.items():
                self._setup_running[name] = (set(before), float("inf"))
            for name, (before, until) in list(self._setup_running.items()):
                if until == float("inf") and name not in setting_up and \
                        name not in self._in_flight:
                    self._setup_running[name] = (before, ended_until)

    def _begin(self, wanted: Reload, reload: Callable[..., None]) -> None:
        name = wanted.function
        if wanted.setup == "skip" and self._setups.get(name) and \
                not os.path.exists(os.path.join(self.state_dir, "setup", f"{name}.json")):
            # Its setup never succeeded (it failed, or was cut short): a code change does not
            # make what it installs appear, so setup runs (if the folder changed since).
            wanted.setup = "auto"
        began = time.monotonic()
        self._in_flight[name] = began
        if wanted.setup != "skip":
            folder = next((f for f in self._folders if f.name == name), None)
            try:
                entries = set(os.listdir(folder.directory)) if folder else set()
            except OSError:
                entries = set()
            with self._lock:
                self._setup_running[name] = (entries, float("inf"))
        what = "setup, then new code" if wanted.setup != "skip" else "code only"
        log.info("watch: %s changed (%s): reloading %s (%s)", ", ".join(wanted.paths[:5]) +
                 (", ..." if len(wanted.paths) > 5 else ""), name,
                 "every function" if wanted.everything else name, what)

        def done(report: dict) -> None:   # whichever thread the reload answers on
            self._finished.put((name, report, began))
            self.wake()

        try:
            reload(only=None if wanted.everything else {name}, setup=wanted.setup, done=done)
        except Exception as exc:   # noqa: BLE001 - a reload that cannot start is reported
            log.exception("watch: reloading %s failed to start", name)
            done({"functions": {}, "errors": [f"{type(exc).__name__}: {exc}"]})

    def _report(self, name: str, report: dict, began: float) -> None:
        """Log the reload's outcome for the terminal, and end it (the next may begin)."""
        self._in_flight.pop(name, None)
        with self._lock:
            if name in self._setup_running:
                before, _ = self._setup_running[name]
                self._setup_running[name] = (before, time.monotonic() + SETUP_GRACE)
        took = time.monotonic() - began
        outcomes = (report or {}).get("functions") or {}
        for function, outcome in sorted(outcomes.items()):
            action = outcome.get("action")
            if action == "failed":
                log.error("watch: %s: reload failed, the previous code keeps serving: %s",
                          function, outcome.get("reason") or "(no reason given)")
            elif action != "unchanged" or function == name:
                log.info("watch: %s %s in %.2fs", function, action, took)
        for error in (report or {}).get("errors") or ():
            log.error("watch: reload of %s: %s", name, error)
