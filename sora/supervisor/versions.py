"""The arbiter's part of versions: publishing, pruning, and the published versions' workers.

- Publishing (the admin channel's `publish` op): the confined copy of the function's folder
  runs as a child process (sora.versions.store.VersionStore.begin), polled by the loop like a
  setup; hashing and numbering the copy (`finish`) runs on a thread of its own, so a large
  folder never holds the loop. Then versions past `versions.keep` are pruned, except those an
  alias names, and the answer is the version's FunctionConfiguration. A publish while the
  function's setup runs is refused (ResourceConflictException): the folder is half-made.
- Version workers start on demand: a client that has a call for `NAME:N` and no worker for it
  sends WAKE to the control plane, which tells the arbiter; the arbiter first makes this
  host's copy of the version current (`VersionStore.ensure_local`, on the publishing thread:
  a version published on another host sharing the PostgreSQL store is extracted from its
  row's tar on first use), then starts the worker, which reads the version's config from that
  copy's `version.json`. Its instances scale to zero as any function's (a version's config
  has minInstances 0).
- The versions are listed in the control plane's table under their keys (`NAME:N`), without
  a config (a client takes a version's settings from its function). The arbiter polls the
  store's versions (number, hashes, time: no config, no code) every REFRESH_EVERY seconds,
  at once after its own publish, and on WAKE for a key it does not know: so a version
  published on another host is listed within REFRESH_EVERY, and called at once by its key.
  A version gone from the store (pruned or deleted on any host) has its worker retired and
  this host's copy removed.
- At start (`prepare`): staging folders a killed publish left are removed, the versions an
  older Sora kept in files are imported into the store once (sora.versions.imports), and
  copies of versions the store does not have are removed.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import signal
import subprocess
import time

from ..config import FunctionConfig
from ..config_snapshot import function_from_entry
from ..parent_death import die_with_parent
from ..store import backend
from ..versions.api import configuration
from ..versions.imports import import_files
from ..versions.qualifier import LATEST, data_key, split_key
from ..versions.routing import store_unavailable
from ..versions.store import Staging, VersionError, VersionStore
from .child import State, Supervised

log = logging.getLogger("sora.supervisor")

PUBLISH_TIMEOUT = 600.0
REFRESH_EVERY = 2.0
# A version whose copy could not be made (its code refused, the store down): asked again
# after this, not on every WAKE.
COPY_RETRY_S = 10.0


@dataclasses.dataclass
class PublishRun:
    staging: Staging
    proc: subprocess.Popen
    reply: object
    deadline: float
    hashing: concurrent.futures.Future | None = None


class Versions:
    def __init__(self, arbiter):
        self.arbiter = arbiter
        self.store = VersionStore(arbiter.state_dir, arbiter.config.store)
        self.keep = arbiter.config.versions.keep
        self.configs: dict[str, FunctionConfig] = {}   # key NAME:N -> the version's config
        self._seen: dict[str, tuple] = {}   # key NAME:N -> its (CodeSha256, ConfigSha256, created)
        self._refreshed = float("-inf")
        self._prepared = False
        self._store_down = False
        # Copies being made for a WAKE (key -> future), and those that failed (key -> when).
        self.copying: dict[str, concurrent.futures.Future] = {}
        self.copy_failed: dict[str, tuple[float, str]] = {}
        self.runs: list[PublishRun] = []
        self._hasher = concurrent.futures.ThreadPoolExecutor(1, "sora-publish")

    # --- what exists ------------------------------------------------------------------------
    def prepare(self) -> None:
        """At start, before anything reads versions (see the module docstring); retried by
        `refresh` while the store cannot be reached."""
        self.store.remove_staging()   # what a killed publish left
        try:
            import_files(self.store)
            dropped = self.store.drop_orphans()
        except backend.ERRORS as exc:
            log.warning("versions: the store %s cannot be read yet (%s); versions are listed "
                        "once it can", self.store.store.display_url, exc)
            return
        if dropped:
            log.info("versions: removed this host's copies of %s (not in the store)",
                     ", ".join(dropped))
        self._prepared = True

    def refresh(self, now: float, force: bool = False) -> None:
        if not force and now - self._refreshed < REFRESH_EVERY:
            return
        self._refreshed = now
        if not self._prepared:
            self.prepare()
            if not self._prepared:
                return
        try:
            self._read_store()
        except backend.ERRORS as exc:
            if not self._store_down:
                log.warning("versions: the store %s cannot be read (%s); the versions "
                            "listed stay as they were", self.store.store.display_url, exc)
            self._store_down = True
            return
        if self._store_down:
            log.info("versions: the store %s can be read again", self.store.store.display_url)
        self._store_down = False
        for key in [k for k, (at, _) in self.copy_failed.items() if now - at >= COPY_RETRY_S]:
            del self.copy_failed[key]   # listed available again: its next call tries again
        self.stop_removed()
        self.forget_idle()

    def _read_store(self) -> None:
        summary = {data_key(name, str(number)): identity
                   for (name, number), identity in self.store.summary().items()
                   if self.arbiter.config.function(name) is not None}
        for key in [k for k in self.configs if k not in summary]:
            del self.configs[key]
            del self._seen[key]
            name, version = split_key(key)
            self.store.drop_local(name, version)   # this host's copy of a removed version
        for key, identity in summary.items():
            if self._seen.get(key) == identity:
                continue
            name, version = split_key(key)
            record = self.store.get(name, version)
            if record is None:
                continue   # removed since the summary
            # The sandbox uid is this host's choice for the function, now.
            self.configs[key] = dataclasses.replace(
                function_from_entry(record["config"]),
                sandboxUid=self.arbiter.config.function(name).sandboxUid)
            self._seen[key] = identity
            self.copy_failed.pop(key, None)

    def table(self) -> dict[str, dict]:
        """The control plane's entries of the versions (no `config`: see the docstring)."""
        out = {}
        for key, fn in self.configs.items():
            workers = self.arbiter.workers_of(key)
            fatal = workers and workers[0].state is State.FATAL
            reason = workers[0].reason if fatal else ""
            if key in self.copy_failed:   # its code could not be had on this host
                fatal, reason = True, self.copy_failed[key][1]
            out[key] = {"maxQueued": fn.maxQueued, "maxWait": fn.timeout,
                        "concurrency": fn.concurrency, "memory": fn.memory,
                        "available": not fatal, "reason": reason}
        return out

    # --- version workers --------------------------------------------------------------------
    def forget_idle(self) -> None:
        """Versions' workers that exited idle (p.EXIT_IDLE): a call wakes them again."""
        for key, worker in list(self.arbiter.workers.items()):
            if ":" in key and worker.state is State.STOPPED and worker.pid is None:
                del self.arbiter.workers[key]

    def wake(self, key: str, now: float) -> None:
        """A client has a call for `key` and no worker: make this host's copy current, then
        start it (once)."""
        if key not in self.configs:
            self.refresh(now, force=True)
        fn = self.configs.get(key)
        self.forget_idle()
        if fn is None or self.arbiter.stopping:
            self.copying.pop(key, None)
            return
        workers = self.arbiter.workers_of(key)
        if any(w.state is not State.STOPPING for w in workers):
            self.copying.pop(key, None)
            return
        if not self._copy_ready(key, now):
            return
        # One exiting idle (draining) may still hold the key: the new one gets `KEY#n`.
        name = key if not workers else f"{key}#{len(self.arbiter.workers) + 2}"
        while name in self.arbiter.workers:
            name += "+"
        worker = Supervised(name, "worker", self.arbiter.worker_launch(fn), state=State.SETUP)
        self.arbiter.workers[name] = worker
        log.info("function %s: starting a worker for version %s (called)", fn.name,
                 fn.version)
        worker.spawn(now)

    def _copy_ready(self, key: str, now: float) -> bool:
        """Whether this host's copy of the version is current; if not, make it on the
        publishing thread (a large copy never holds the loop): `step` wakes the key again
        when it is done."""
        future = self.copying.get(key)
        if future is not None:
            if not future.done():
                return False
            del self.copying[key]
            try:
                future.result()
            except (VersionError, *backend.ERRORS, OSError) as exc:
                log.error("function %s: version %s cannot be copied to this host: %s",
                          *split_key(key), exc)
                # What callers see (the log has the details, which may name the store).
                self.copy_failed[key] = (now, "its code could not be copied to this host "
                                              "(the supervisor's log says why)")
                return False
            return True
        failed = self.copy_failed.get(key)
        if failed is not None and now - failed[0] < COPY_RETRY_S:
            return False
        self.copy_failed.pop(key, None)
        if self.store.has_local(*split_key(key), self._seen[key]):
            return True
        self.copying[key] = self._hasher.submit(self.store.ensure_local, *split_key(key))
        return False

    def stop_removed(self) -> None:
        """Stop the workers of versions that no longer exist (pruned, or their function is
        gone): what they hold is answered, then they exit and are forgotten."""
        for key, worker in list(self.arbiter.workers.items()):
            data_path_key = key.partition("#")[0]   # (`NAME:N#n`: one started while another
            name, version = split_key(data_path_key)   # exited idle)
            if version == LATEST or data_path_key in self.configs:
                continue
            del self.arbiter.workers[key]
            self.arbiter.retire(worker, f"version {version} of {name} was removed")

    # --- publishing -------------------------------------------------------------------------
    def publish(self, args: dict, reply) -> None:
        """The admin channel's `publish` op: {"function", "description"?}."""
        name = args.get("function")
        fn = self.arbiter.config.function(name) if isinstance(name, str) else None
        if fn is None:
            reply(VersionError(404, "ResourceNotFoundException",
                               f"Function not found: {name}").answer())
            return
        if name in self.arbiter.setups or name in self.arbiter.switches:
            reply(VersionError(409, "ResourceConflictException", (
                f"The function {name} is being set up or switched to new code (reload); "
                f"publish once that is done")).answer())
            return
        description = args.get("description") or ""
        if not isinstance(description, str) or len(description) > 256:
            reply(VersionError(400, "InvalidParameterValueException",
                               "Description: expected a string of at most 256 characters"
                               ).answer())
            return
        expect_code = args.get("codeSha256") or None
        if expect_code is not None and not isinstance(expect_code, str):
            reply(VersionError(400, "InvalidParameterValueException",
                               "CodeSha256: expected a string").answer())
            return
        try:
            staging = self.store.begin(fn, description, expect_code)
            proc = subprocess.Popen(staging.argv, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    start_new_session=True, preexec_fn=die_with_parent)
        except OSError as exc:
            reply(VersionError(500, "ServiceException",
                               f"could not start the copy: {exc}").answer())
            return
        self.runs.append(PublishRun(staging, proc, reply,
                                    time.monotonic() + PUBLISH_TIMEOUT))

    def step(self, now: float) -> None:
        """Advance the publishes in progress (each loop turn)."""
        for run in list(self.runs):
            if run.hashing is None:
                code = run.proc.poll()
                if code is None and now < run.deadline:
                    continue
                if code != 0:
                    if code is None:
                        os.killpg(run.proc.pid, signal.SIGKILL)
                        run.proc.wait()
                    error = (run.proc.stderr.read() or b"").decode(errors="replace")[-500:]
                    run.proc.stderr.close()
                    self.store.discard(run.staging)
                    self.runs.remove(run)
                    run.reply(VersionError(500, "ServiceException", (
                        f"could not copy the function's folder: {error.strip() or code}")
                    ).answer())
                    continue
                run.proc.stderr.close()
                self.arbiter._last_exit_at = now   # bubblewrap's init may be re-parented
                run.hashing = self._hasher.submit(self._finish, run.staging)
                continue
            if not run.hashing.done():
                continue
            self.runs.remove(run)
            try:
                record, new = run.hashing.result()
            except VersionError as exc:   # the CodeSha256 precondition
                run.reply(exc.answer())
                continue
            except backend.ERRORS as exc:   # the version was not numbered: not published
                self.store.discard(run.staging)
                run.reply(store_unavailable(exc).answer())
                continue
            except Exception as exc:   # noqa: BLE001 - told to the caller, not the loop's end
                self.store.discard(run.staging)
                run.reply(VersionError(500, "ServiceException", f"publish failed: {exc}"
                                       ).answer())
                continue
            self.refresh(now, force=True)
            self.arbiter.publish()   # the version in MEMBERS before the caller hears of it
            run.reply(configuration(function_from_entry(record["config"]), record))
        for key, future in list(self.copying.items()):
            if future.done():
                self.wake(key, now)   # starts the worker, or notes why not

    def _finish(self, staging: Staging) -> tuple[dict, bool]:
        """On the publishing thread: number the copy, then prune past `versions.keep` (a
        pruning that fails is logged: the version is published all the same)."""
        record, new = self.store.finish(staging)
        name = staging.fn.name
        if new:
            log.info("function %s: published version %s (%s)", name, record["Version"],
                     record["CodeSha256"])
            try:
                removed = self.store.prune(name, self.keep)
            except (*backend.ERRORS, OSError) as exc:
                log.error("function %s: pruning old versions failed: %s", name, exc)
                removed = []
            if removed:
                log.info("function %s: pruned version(s) %s (versions.keep: %d)", name,
                         ", ".join(map(str, removed)), self.keep)
        return record, new

    def pids(self) -> set[int]:
        """The copies running now: the arbiter's orphan sweep must leave them be."""
        return {run.proc.pid for run in self.runs if run.hashing is None}

    def busy(self) -> bool:
        """Publishes or copies in progress: the loop turns often until they are done."""
        return bool(self.runs or self.copying)

    def shutdown(self) -> None:
        for run in self.runs:
            if run.proc.poll() is None:
                os.killpg(run.proc.pid, signal.SIGKILL)
                run.proc.wait()
            if run.hashing is not None:
                run.hashing.cancel()
            self.store.discard(run.staging)
        self.runs.clear()
        self._hasher.shutdown(wait=True)
