"""Runs a function's `setup` commands (npm install, ...) without blocking the arbiter loop.

Each command runs in the function folder in its own process group, with its output captured to
`<stateDir>/setup/<name>.log` and a timeout after which the whole group is killed. A successful
setup records the folder's content hash; on the next start an unchanged folder skips setup.

What setup itself creates (node_modules, a lock file) is recorded as its outputs and left out of
the hash, so installing dependencies does not make the folder look changed.

A sandboxed function's setup (the default, `isolation: sandbox`) runs each command in the
function's sandbox (sora.isolation.sandbox.wrap_setup), as the function's own unprivileged uid,
with its folder writable. When Sora runs as root that uid cannot write the folder itself, so
setup works on a copy of it owned by that uid (`<stateDir>/setup/<name>.folder`, mounted where
the folder is, so paths that setup writes into files, such as a virtualenv's, stay right), and
only once every command has succeeded is the copy synced back into the folder, owned by the
folder's owner. rsync does both copies: only what changed is copied, and what setup deleted
is deleted. Its home (`<name>.home`: npm's and pip's caches) is kept between setups.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass

from ..config import FunctionConfig
from ..isolation import sandbox
from ..parent_death import die_with_parent

_ALWAYS_SKIPPED = {".git", "__pycache__", ".sora"}


@dataclass
class SetupOutcome:
    ok: bool
    skipped: bool
    reason: str = ""


def content_hash(directory: str, excluded: set[str]) -> str:
    """Hash of every file's relative path and content, leaving out the top-level `excluded`."""
    digest = hashlib.blake2b(digest_size=20)
    for root, dirs, files in os.walk(directory):
        rel_root = os.path.relpath(root, directory)
        if rel_root == ".":
            dirs[:] = [d for d in dirs if d not in excluded and d not in _ALWAYS_SKIPPED]
            files = [f for f in files if f not in excluded]
        else:
            dirs[:] = [d for d in dirs if d not in _ALWAYS_SKIPPED]
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.normpath(os.path.join(rel_root, name)).encode() + b"\0")
            if os.path.islink(path):
                digest.update(b"link:" + os.readlink(path).encode())
                continue
            try:
                with open(path, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
            except OSError as exc:
                digest.update(f"unreadable:{exc.errno}".encode())
    return digest.hexdigest()


class SetupRun:
    """One function's setup, stepped by the arbiter loop: `poll()` returns None while it runs."""

    def __init__(self, fn: FunctionConfig, state_dir: str, force: bool = False):
        self.fn = fn
        self.force = force  # run even if the folder is unchanged since the last success
        directory = os.path.join(state_dir, "setup")
        os.makedirs(directory, exist_ok=True)
        self.cache_path = os.path.join(directory, f"{fn.name}.json")
        self.log_path = os.path.join(directory, f"{fn.name}.log")
        self.copy_path = os.path.join(directory, f"{fn.name}.folder")  # (sandboxed, as root)
        self.home_path = os.path.join(directory, f"{fn.name}.home")
        self.steps: list[tuple[str, list[str]]] = []   # (what the log calls it, argv)
        self.proc: subprocess.Popen | None = None
        self.index = -1
        self.deadline = 0.0
        self.before: set[str] = set()
        self.outcome: SetupOutcome | None = None
        self._log = None

    def _cached(self) -> dict:
        try:
            with open(self.cache_path, encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return {}

    def start(self) -> None:
        if not self.fn.setup:
            self.outcome = SetupOutcome(ok=True, skipped=True)
            return
        cached = self._cached()
        outputs = set(cached.get("outputs", []))
        if not self.force and cached.get("hash") and all(os.path.exists(os.path.join(self.fn.directory, o))
                                      for o in outputs) \
                and cached["hash"] == content_hash(self.fn.directory, outputs):
            self.outcome = SetupOutcome(ok=True, skipped=True)
            return
        if self.fn.sandboxed and (reason := sandbox.unavailable_reason()) is not None:
            self._finish(False, f"isolation: {reason}")
            return
        self.before = set(os.listdir(self.fn.directory))
        self.steps = self._plan()
        self._log = open(self.log_path, "ab")
        self._next_command()

    def _plan(self) -> list[tuple[str, list[str]]]:
        """The commands to run, as argv: the user's, in the sandbox for a sandboxed function,
        between the two copies when Sora runs as root (see the module's docstring)."""
        fn = self.fn
        if not fn.sandboxed:
            return [(command, ["/bin/sh", "-c", command]) for command in fn.setup]
        uid = sandbox.sandbox_uid(fn.name)
        as_root = os.geteuid() == 0
        for path in (self.home_path, self.copy_path) if as_root else (self.home_path,):
            os.makedirs(path, mode=0o700, exist_ok=True)
            os.chown(path, uid, uid)
        sandbox.copy_package_configs(self.home_path, uid)
        if not as_root:   # the function's uid is Sora's: it works in the folder itself
            return [(c, sandbox.wrap_setup(c, fn, fn.directory, self.home_path))
                    for c in fn.setup]
        owner = os.stat(fn.directory)
        rsync = ["rsync", "--archive", "--delete", "--numeric-ids"]
        return [("(sora) copy the folder for the setup sandbox",
                 [*rsync, f"--chown={uid}:{uid}", f"{fn.directory}/", f"{self.copy_path}/"]),
                *[(c, sandbox.wrap_setup(c, fn, self.copy_path, self.home_path))
                  for c in fn.setup],
                ("(sora) sync what setup made back into the folder",
                 [*rsync, f"--chown={owner.st_uid}:{owner.st_gid}", f"{self.copy_path}/",
                  f"{fn.directory}/"])]

    def _next_command(self) -> None:
        self.index += 1
        label, argv = self.steps[self.index]
        self._log.write(f"$ {label}\n".encode())
        self._log.flush()
        if self.fn.sandboxed:
            env = sandbox.setup_environment(self.fn)
            env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")   # for rsync and bwrap
        else:
            env = dict(os.environ)
            env.update(self.fn.env)
        self.proc = subprocess.Popen(
            argv, cwd=self.fn.directory, env=env,
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent)   # dies with the supervisor
        self.deadline = time.monotonic() + self.fn.setupTimeout

    def poll(self) -> SetupOutcome | None:
        if self.outcome is not None:
            return self.outcome
        code = self.proc.poll()
        if code is not None:
            _kill_group(self.proc.pid)  # stragglers the command left behind in its group
        if code is None:
            if time.monotonic() < self.deadline:
                return None
            self.kill()
            return self._finish(False, f"setup command {self.steps[self.index][0]!r} timed out "
                                       f"after {self.fn.setupTimeout:g}s (log: {self.log_path})")
        if code != 0:
            return self._finish(False, f"setup command {self.steps[self.index][0]!r} failed "
                                       f"with exit status {code} (log: {self.log_path})")
        if self.index + 1 < len(self.steps):
            self._next_command()
            return None
        outputs = sorted(set(os.listdir(self.fn.directory)) - self.before)
        with open(self.cache_path, "w", encoding="utf-8") as fh:
            json.dump({"hash": content_hash(self.fn.directory, set(outputs)),
                       "outputs": outputs}, fh)
        return self._finish(True, "")

    def _finish(self, ok: bool, reason: str) -> SetupOutcome:
        if not ok:
            try:
                os.unlink(self.cache_path)
            except FileNotFoundError:
                pass
        if self._log:
            self._log.close()
        self.outcome = SetupOutcome(ok=ok, skipped=False, reason=reason)
        return self.outcome

    def kill(self) -> None:
        """Kill the running command's whole process group (npm and whatever it started)."""
        if self.proc is not None and self.proc.returncode is None:
            _kill_group(self.proc.pid)
            self.proc.wait()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
