"""The arbiter's part of versions: publishing, pruning, and the published versions' workers.

- Publishing (the admin channel's `publish` op): the confined copy of the function's folder
  runs as a child process (sora.versions.store.VersionStore.begin), polled by the loop like a
  setup; hashing and numbering the copy (`finish`) runs on a thread of its own, so a large
  folder never holds the loop. Then versions past `versions.keep` are pruned, except those an
  alias names, and the answer is the version's FunctionConfiguration. A publish while the
  function's setup runs is refused (ResourceConflictException): the folder is half-made.
- Version workers start on demand: a client that has a call for `NAME:N` and no worker for it
  sends WAKE to the control plane, which tells the arbiter; the version's worker starts from
  the version's own config (its `version.json`). Its instances scale to zero as any
  function's (a version's config has minInstances 0).
- The versions are listed in the control plane's table under their keys (`NAME:N`), without
  a config (a client takes a version's settings from its function), re-read from the store
  when a function's versions folder changed (a publish, a prune, a restart).
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
from ..parent_death import die_with_parent
from ..versions.aliases import AliasStore
from ..versions.api import configuration
from ..versions.qualifier import LATEST, data_key, split_key
from ..versions.store import Staging, VersionError, VersionStore
from .child import State, Supervised

log = logging.getLogger("sora.supervisor")

PUBLISH_TIMEOUT = 600.0
REFRESH_EVERY = 2.0


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
        self.store = VersionStore(arbiter.state_dir)
        self.keep = arbiter.config.versions.keep
        self.configs: dict[str, FunctionConfig] = {}   # key NAME:N -> the version's config
        self._seen: dict[str, int] = {}   # function -> its versions folder's mtime_ns
        self._refreshed = float("-inf")
        self.runs: list[PublishRun] = []
        self._hasher = concurrent.futures.ThreadPoolExecutor(1, "sora-publish")

    # --- what exists ------------------------------------------------------------------------
    def refresh(self, now: float, force: bool = False) -> None:
        if not force and now - self._refreshed < REFRESH_EVERY:
            return
        self._refreshed = now
        for fn in self.arbiter.config.functions:
            try:
                mtime = os.stat(self.store.function_dir(fn.name)).st_mtime_ns
            except FileNotFoundError:
                mtime = 0
            if not force and self._seen.get(fn.name) == mtime:
                continue
            self._seen[fn.name] = mtime
            for key in [k for k in self.configs if split_key(k)[0] == fn.name]:
                del self.configs[key]
            for number in self.store.numbers(fn.name):
                config = self.store.config(fn.name, number)
                if config is not None:
                    # The sandbox uid is this host's choice for the function, now.
                    self.configs[data_key(fn.name, str(number))] = dataclasses.replace(
                        config, sandboxUid=fn.sandboxUid)
        for key in [k for k in self.configs
                    if self.arbiter.config.function(split_key(k)[0]) is None]:
            del self.configs[key]
        self.stop_removed()
        self.forget_idle()

    def table(self) -> dict[str, dict]:
        """The control plane's entries of the versions (no `config`: see the docstring)."""
        out = {}
        for key, fn in self.configs.items():
            workers = self.arbiter.workers_of(key)
            fatal = workers and workers[0].state is State.FATAL
            out[key] = {"maxQueued": fn.maxQueued, "maxWait": fn.timeout,
                        "concurrency": fn.concurrency, "memory": fn.memory,
                        "available": not fatal, "reason": workers[0].reason if fatal else ""}
        return out

    # --- version workers --------------------------------------------------------------------
    def forget_idle(self) -> None:
        """Versions' workers that exited idle (p.EXIT_IDLE): a call wakes them again."""
        for key, worker in list(self.arbiter.workers.items()):
            if ":" in key and worker.state is State.STOPPED and worker.pid is None:
                del self.arbiter.workers[key]

    def wake(self, key: str, now: float) -> None:
        """A client has a call for `key` and no worker: start it (once)."""
        if key not in self.configs:
            self.refresh(now, force=True)
        fn = self.configs.get(key)
        self.forget_idle()
        if fn is None or self.arbiter.stopping:
            return
        workers = self.arbiter.workers_of(key)
        if any(w.state is not State.STOPPING for w in workers):
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
                run.hashing = self._hasher.submit(self.store.finish, run.staging)
                continue
            if not run.hashing.done():
                continue
            self.runs.remove(run)
            try:
                record, new = run.hashing.result()
            except VersionError as exc:   # the CodeSha256 precondition
                run.reply(exc.answer())
                continue
            except Exception as exc:   # noqa: BLE001 - told to the caller, not the loop's end
                self.store.discard(run.staging)
                run.reply(VersionError(500, "ServiceException", f"publish failed: {exc}"
                                       ).answer())
                continue
            fn = run.staging.fn
            if new:
                log.info("function %s: published version %s (%s)", fn.name, record["Version"],
                         record["CodeSha256"])
                removed = self.store.prune(fn.name, self.keep,
                                           AliasStore(self.arbiter.state_dir, fn.name,
                                                      self.store).protected())
                if removed:
                    log.info("function %s: pruned version(s) %s (versions.keep: %d)", fn.name,
                             ", ".join(map(str, removed)), self.keep)
            self.refresh(now, force=True)
            self.arbiter.publish()   # the version in MEMBERS before the caller hears of it
            run.reply(configuration(self.store.config(fn.name, record["Version"]), record))

    def pids(self) -> set[int]:
        """The copies running now: the arbiter's orphan sweep must leave them be."""
        return {run.proc.pid for run in self.runs if run.hashing is None}

    def busy(self) -> bool:
        return bool(self.runs)

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
