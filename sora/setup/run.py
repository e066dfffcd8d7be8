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
is deleted; it runs confined to the two folders (sandbox.folder_sync), as the folder and the
copy hold what earlier setups made, links included. Each run has a home of its own, made
afresh (`<name>.home-<pid>-<random>`, sandbox.fresh_setup_home) and removed when it ends:
nothing an earlier setup left there is ever written through.

`sora.yaml` is the operator's, not setup's: Sora read it before setup (the supervisor's
snapshot, sora.config_snapshot) and never reads it again; the sandbox mounts the folder's own
file read-only over the copy's, the copy back leaves it out, and after every step its bytes
are compared with those the config was read from. A setup that changed it anyway (one of
`isolation: none`) fails, and the function with it, with a reason that names the file.

A containerized function's setup (`isolation: container`) runs each command in a container of
the function's image (sora.containers.run_once: one process per command that the poll loop
waits on, the container removed when it ends, killed, or times out), as the function's uid,
on the same copy of the folder made and synced back by the same confined rsync, mounted
writable at the function's `taskRoot` (where its instances see the folder, so paths setup
writes into files stay right), with the run's fresh home at SETUP_HOME, a private /tmp, the
host's network, and the environment a sandboxed setup gets. The container never binds the
function's own folder (the engine resolves a bind's source as root, following links): only
the copy and the home, Sora's folders in its state dir that the function cannot replace.
The copy's sora.yaml is not the operator's file: setup may write it, and is failed for it
(the check after every step), nothing of it reaching the folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass

from ..config import FUNCTION_FILE, MAX_CONFIG_BYTES, FunctionConfig, source_digest
from ..containers import engine, run_once
from ..isolation import nofollow, sandbox, seccomp
from ..parent_death import die_with_parent

_ALWAYS_SKIPPED = {".git", "__pycache__", ".sora"}


@dataclass
class SetupOutcome:
    ok: bool
    skipped: bool
    reason: str = ""
    # Setup changed sora.yaml: the function must not run on (the worker's always-setup treats
    # this as a boot error, where another failed setup only goes to the function's log).
    config_changed: bool = False


# Files larger than this are hashed by size and modification time (read, a sparse file of
# terabytes would hold the supervisor's loop for hours).
HASHED_CONTENT_MAX = 64 << 20
# How long a container step has to remove its container when the setup is stopped (its
# timeout, the host's stop) before it is killed (and the container removed by label).
CONTAINER_STOP_WAIT = 10.0


def content_hash(directory: str, excluded: set[str]) -> str:
    """Hash of every file's relative path and content, leaving out the relative paths `excluded`
    (top-level names, or deeper folders such as a file trigger's `data/inbox`).

    The folder is the function's (setup's results are synced into it), and this runs as root
    in the arbiter loop: it walks by descriptors (os.fwalk) and opens each file relative to
    its folder without following a link (a link is hashed as its target's name), and reads
    regular files only (a fifo would block the loop)."""
    digest = hashlib.blake2b(digest_size=20)
    tree_digest(digest, directory, excluded)
    return digest.hexdigest()


def tree_digest(digest, directory: str, excluded: set[str]) -> None:
    """Feed `digest` every file's relative path and content under `directory`, as
    content_hash walks it (by descriptors, links as their targets' names, never followed);
    the version store's CodeSha256 is this walk with SHA-256."""
    for root, dirs, files, root_fd in os.fwalk(directory, follow_symlinks=False):
        rel_root = os.path.relpath(root, directory)
        # `excluded`: relative paths (top-level names, or a file trigger's folder deeper in).
        dirs[:] = [d for d in dirs if d not in _ALWAYS_SKIPPED and
                   os.path.normpath(os.path.join(rel_root, d)) not in excluded]
        files = [f for f in files if os.path.normpath(os.path.join(rel_root, f)) not in excluded]
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
        dirs[:] = sorted(set(dirs) - set(links))   # fwalk would not enter them either
        for name in sorted(files + links):
            digest.update(os.path.normpath(os.path.join(rel_root, name)).encode() + b"\0")
            _hash_entry(digest, root_fd, name)


def _hash_entry(digest, dir_fd: int, name: str) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            digest.update(b"link:" + os.readlink(name, dir_fd=dir_fd).encode())
            return
        if not stat.S_ISREG(st.st_mode):
            digest.update(b"special:%o" % stat.S_IFMT(st.st_mode))
            return
        if st.st_size > HASHED_CONTENT_MAX:
            # Its size and time, not its bytes: a function can make a sparse file of terabytes
            # that takes no disk, and this loop is the supervisor's.
            digest.update(b"large:%d:%d" % (st.st_size, st.st_mtime_ns))
            return
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):   # swapped since the stat
                digest.update(b"special")
                return
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        digest.update(f"unreadable:{exc.errno}".encode())


class SetupRun:
    """One function's setup, stepped by the arbiter loop: `poll()` returns None while it runs."""

    def __init__(self, fn: FunctionConfig, state_dir: str, force: bool = False,
                 withheld: frozenset[str] = frozenset(),
                 docker_socket: str = engine.DEFAULT_SOCKET):
        self.fn = fn
        self.state_dir = state_dir
        self.docker_socket = docker_socket   # server.docker.socket (isolation: container)
        self.force = force  # run even if the folder is unchanged since the last success
        self.withheld = withheld  # host variables declared as secrets: never given to setup
        directory = self.setup_dir = os.path.join(state_dir, "setup")
        os.makedirs(directory, exist_ok=True)
        self.cache_path = os.path.join(directory, f"{fn.name}.json")
        self.log_path = os.path.join(directory, f"{fn.name}.log")
        self.copy_path = os.path.join(directory, f"{fn.name}.folder")  # (sandboxed, as root)
        self.home_path: str | None = None   # this run's own (sandboxed), made by _plan
        self.work_folder = fn.directory   # where the commands work: the folder, or its copy
        self.steps: list[tuple[str, list[str]]] = []   # (what the log calls it, argv)
        # A step's container spec (isolation: container), by the step's index: its argv runs
        # sora.containers.run_once, which reads the spec from its environment.
        self.container_specs: dict[int, dict] = {}
        self.error_path: str | None = None   # where run_once says why it could not run
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
        if not self.force and _matches(self.fn, self._cached()):
            self.outcome = SetupOutcome(ok=True, skipped=True)
            return
        if self.fn.sandboxed and (reason := sandbox.unavailable_reason()) is not None:
            self._finish(False, f"isolation: {reason}")
            return
        if self.fn.containerized and (reason := _container_setup_problem()) is not None:
            self._finish(False, f"setup: {reason}")
            return
        self.before = set(os.listdir(self.fn.directory))
        self.steps = self._plan()
        self._log = open(self.log_path, "ab")
        self._next_command()

    def _plan(self) -> list[tuple[str, list[str]]]:
        """The commands to run, as argv: the user's, in the sandbox for a sandboxed function,
        between the two copies when Sora runs as root (see the module's docstring)."""
        fn = self.fn
        if fn.containerized:
            return self._plan_containers()
        if not fn.sandboxed:
            return [(command, ["/bin/sh", "-c", command]) for command in fn.setup]
        uid = sandbox.sandbox_uid(fn)
        as_root = os.geteuid() == 0
        sandbox.remove_setup_homes(self.setup_dir, fn.name)
        self.home_path = sandbox.fresh_setup_home(self.setup_dir, fn.name, uid)
        if not as_root:   # the function's uid is Sora's: it works in the folder itself
            return [(c, sandbox.wrap_setup(c, fn, fn.directory, self.home_path))
                    for c in fn.setup]
        self._make_copy(uid)
        owner = os.stat(fn.directory)
        return [("(sora) copy the folder for the setup sandbox",
                 sandbox.folder_sync(fn.directory, self.copy_path, uid, uid)),
                *[(c, sandbox.wrap_setup(c, fn, self.copy_path, self.home_path))
                  for c in fn.setup],
                # Never sora.yaml: an excluded file is neither written nor deleted by rsync.
                ("(sora) sync what setup made back into the folder",
                 sandbox.folder_sync(self.copy_path, fn.directory, owner.st_uid,
                                     owner.st_gid, exclude=FUNCTION_FILE,
                                     # An edit saved while setup ran is not reverted.
                                     keep_newer=True))]

    def _make_copy(self, uid: int) -> None:
        """The folder's copy setup works on: Sora's folder (made here, in Sora's setup folder),
        its content the function's, so rsync only ever works in it confined
        (sandbox.folder_sync)."""
        os.makedirs(self.copy_path, mode=0o700, exist_ok=True)
        copy_fd = os.open(self.copy_path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                          | os.O_CLOEXEC)
        try:
            os.fchown(copy_fd, uid, uid)
        finally:
            os.close(copy_fd)
        self.work_folder = self.copy_path

    def _plan_containers(self) -> list[tuple[str, list[str]]]:
        """Copy in, each command in a container of the function's image, copy back."""
        fn = self.fn
        uid = sandbox.sandbox_uid(fn)
        sandbox.remove_setup_homes(self.setup_dir, fn.name)
        self.home_path = sandbox.fresh_setup_home(self.setup_dir, fn.name, uid)
        self._make_copy(uid)
        owner = os.stat(fn.directory)
        environment = dict(sandbox.setup_environment(fn, self.withheld),
                           HOME=sandbox.SETUP_HOME)
        host = engine.host_id(self.state_dir)
        self.error_path = os.path.join(self.setup_dir, f"{fn.name}.container-error")
        _remove_file(self.error_path)   # an earlier run's
        steps = [("(sora) copy the folder for the setup container",
                  sandbox.folder_sync(fn.directory, self.copy_path, uid, uid))]
        for command in fn.setup:
            self.container_specs[len(steps)] = {
                "socket": self.docker_socket, "image": fn.image, "error_file": self.error_path,
                "command": ["/bin/sh", "-c", command], "user": f"{uid}:{uid}",
                "working_dir": fn.taskRoot, "environment": environment,
                # Only Sora's own folders: the copy and this run's home (never the
                # function's folder, and never the engine's socket).
                "mounts": [{"source": self.copy_path, "target": fn.taskRoot},
                           {"source": self.home_path, "target": sandbox.SETUP_HOME}],
                "tmpfs": {"/tmp": f"size={fn.tmpSize}m,mode=1777"},
                # Bounded, but room for a compiler: the function's memory, at least 2 GiB.
                "memory_mb": max(fn.memory, SETUP_MEMORY_FLOOR_MB),
                "network_mode": "host",   # as a sandboxed setup: it installs packages
                # sora.worker: run_once adds its own pid.
                "labels": {k: v for k, v in engine.labels(host, fn.name, 0, "setup").items()
                           if k != "sora.worker"}}
            # -I: run as root, it imports nothing from its working folder or PYTHON* settings.
            steps.append((command, [sys.executable, "-I", "-m", "sora.containers.run_once"]))
        steps.append(("(sora) sync what setup made back into the folder",
                      sandbox.folder_sync(self.copy_path, fn.directory, owner.st_uid,
                                          owner.st_gid, exclude=FUNCTION_FILE,
                                          keep_newer=True)))
        return steps

    def _next_command(self) -> None:
        self.index += 1
        label, argv = self.steps[self.index]
        self._log.write(f"$ {label}\n".encode())
        self._log.flush()
        if (spec := self.container_specs.get(self.index)) is not None:
            # run_once's own environment: its spec (the container's environment is in it).
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                   run_once.SPEC_ENV: json.dumps(spec)}
        elif self.fn.sandboxed or self.fn.containerized:   # a confined rsync of the copy
            env = sandbox.without_loader_variables(   # set inside it (sandbox.LOADER_ENV)
                sandbox.setup_environment(self.fn, self.withheld), self.fn)
            env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")   # for rsync and bwrap
        else:
            env = dict(os.environ)
            env.update(self.fn.env)
        with seccomp.passed_to(argv) as (command, filter_fds):
            self.proc = subprocess.Popen(
                # A container step works in Sora's setup folder, not the function's.
                command, cwd=self.setup_dir if spec is not None else self.fn.directory, env=env,
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                pass_fds=filter_fds, start_new_session=True,
                # Dies with the supervisor (or the worker of an always-setup); a container
                # step's run_once gets SIGTERM instead, on which it kills and removes its
                # container (SIGKILL would leave that running until the host's next sweep).
                preexec_fn=die_with_parent if spec is None else _die_with_parent_term)
        self.deadline = time.monotonic() + self.fn.setupTimeout

    @property
    def current_command(self) -> str | None:
        """The command running now, as its log names it (for the start-up progress lines)."""
        running = self.outcome is None and self.proc is not None and 0 <= self.index
        return self.steps[self.index][0] if running and self.index < len(self.steps) else None

    def poll(self) -> SetupOutcome | None:
        if self.outcome is not None:
            return self.outcome
        code = self.proc.poll()
        if code is not None:
            _kill_group(self.proc.pid)  # stragglers the command left behind in its group
            self._remove_step_container()   # a run_once killed by a signal
        if code is None:
            if time.monotonic() < self.deadline:
                return None
            self.kill()
            return self._finish(False, f"setup command {self.steps[self.index][0]!r} timed out "
                                       f"after {self.fn.setupTimeout:g}s (log: {self.log_path})")
        if (changed := self._changed_config()) is not None:
            return self._finish(False, (
                f"{self.fn.source}: setup command {self.steps[self.index][0]!r} changed "
                f"{FUNCTION_FILE} ({changed}); it is the operator's file, read before setup, "
                f"and setup must not write it (nothing of the changed file is used; restore "
                f"it and restart)"), config_changed=True)
        if code == run_once.EXIT_ENGINE_ERROR and (why := self._container_error()):
            return self._finish(False, f"setup command {self.steps[self.index][0]!r} could "
                                       f"not run in a container: {why}")
        if code != 0:
            return self._finish(False, f"setup command {self.steps[self.index][0]!r} failed "
                                       f"with exit status {code} (log: {self.log_path})")
        if self.index + 1 < len(self.steps):
            self._next_command()
            return None
        outputs = sorted(set(os.listdir(self.fn.directory)) - self.before)
        with open(self.cache_path, "w", encoding="utf-8") as fh:
            json.dump({"hash": content_hash(self.fn.directory, {*outputs, *self.fn.data_dirs}),
                       "outputs": outputs}, fh)
        return self._finish(True, "")

    def _container_error(self) -> str | None:
        """Why run_once could not run the step's container (no engine, no image), if it
        said so (a file of Sora's setup folder, written by run_once only)."""
        if self.index not in self.container_specs or self.error_path is None:
            return None
        try:
            with open(self.error_path, encoding="utf-8") as fh:
                return fh.read(2000).strip() or None
        except OSError:
            return None
        finally:
            _remove_file(self.error_path)

    def _changed_config(self) -> str | None:
        """How sora.yaml differs from the bytes the config was read from (None: it does not),
        in the folder and in the folder setup worked on. Read without following a link and
        without blocking (a FIFO put in its place must not hang the supervisor's loop)."""
        for folder in dict.fromkeys((self.work_folder, self.fn.directory)):
            try:
                raw = nofollow.read_beneath(folder, FUNCTION_FILE, max_bytes=MAX_CONFIG_BYTES)
            except nofollow.UnsafePath as exc:
                return f"not the regular file it was ({exc.strerror or exc})"
            except OSError as exc:
                return f"{(exc.strerror or str(exc)).lower()}: not the regular file it was"
            if source_digest(raw) != self.fn.sourceDigest:
                return "its content differs from what Sora read at start"
        return None

    def _finish(self, ok: bool, reason: str, config_changed: bool = False) -> SetupOutcome:
        if not ok:
            try:
                os.unlink(self.cache_path)
            except FileNotFoundError:
                pass
        if self._log:
            if config_changed:
                self._log.write(f"sora: {reason}\n".encode())
            self._log.close()
        self._remove_home()
        self.outcome = SetupOutcome(ok=ok, skipped=False, reason=reason,
                                    config_changed=config_changed)
        return self.outcome

    def kill(self) -> None:
        """Kill the running command's whole process group (npm and whatever it started). A
        container step is asked first (SIGTERM: run_once kills and removes its container),
        and killed if it does not end soon; what it could not remove is removed here."""
        if self.proc is not None and self.proc.returncode is None:
            if self.index in self.container_specs:
                self.proc.terminate()
                try:
                    self.proc.wait(CONTAINER_STOP_WAIT)
                except subprocess.TimeoutExpired:
                    pass
            _kill_group(self.proc.pid)
            self.proc.wait()
            self._remove_step_container()
        self._remove_home()

    def _remove_step_container(self) -> None:
        """A container step's container, if its run_once was killed before it removed it."""
        if self.index not in self.container_specs or self.proc.returncode is None or \
                self.proc.returncode >= 0:
            return
        try:
            engine.remove_containers(self.docker_socket, engine.host_id(self.state_dir),
                                     self.proc.pid)
        except Exception:   # noqa: BLE001 - the host's stop sweeps what is left
            pass

    def _remove_home(self) -> None:
        """This run's home goes with it (rmtree removes links, not what they point to)."""
        if self.home_path is not None:
            shutil.rmtree(self.home_path, ignore_errors=True)
            self.home_path = None


SETUP_MEMORY_FLOOR_MB = 2048


def _die_with_parent_term() -> None:
    die_with_parent(sig=signal.SIGTERM)


def _matches(fn: FunctionConfig, cached: dict) -> bool:
    """Whether the setup recorded in `cached` ran on the folder as it is now."""
    outputs = set(cached.get("outputs", []))
    return bool(cached.get("hash")) and \
        all(os.path.exists(os.path.join(fn.directory, o)) for o in outputs) and \
        cached["hash"] == content_hash(fn.directory, {*outputs, *fn.data_dirs})


def setup_ran(fn: FunctionConfig, state_dir: str | None) -> bool:
    """Whether what `fn`'s setup makes is in its folder: it has no setup, or its last
    successful setup (recorded in `state_dir`) ran on the folder as it is now. Without a state
    dir (a function folder checked on its own), only a function without setup."""
    if not fn.setup:
        return True
    if state_dir is None:
        return False
    try:
        with open(os.path.join(state_dir, "setup", f"{fn.name}.json"), encoding="utf-8") as fh:
            return _matches(fn, json.load(fh))
    except (OSError, ValueError, AttributeError):
        return False


def _container_setup_problem() -> str | None:
    """Why a containerized function's setup cannot run here (None when it can): the copy of
    its folder is made and synced back by rsync confined with bubblewrap, as root."""
    if os.geteuid() != 0:
        return ("a setup in a container needs Sora to run as root (its folder's copy is made "
                "and synced back by a confined rsync, owned by the function's uid)")
    if not sandbox.available():
        return ("expected bubblewrap (bwrap) on PATH: it confines the rsync that copies the "
                "folder for the setup container (apt-get install bubblewrap)")
    return None


def _remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
