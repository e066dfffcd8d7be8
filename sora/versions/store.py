"""The version store: `<stateDir>/versions/<NAME>/<N>/` (`code/` and `version.json`).

Publishing snapshots a function's `$LATEST` as it serves: its folder after setup (what setup
made is synced into it) and the config the supervisor read (its snapshot entry). The folder is
the function's to change (setup runs as its uid, a `writableFolder` instance writes it), so it
is never read or copied by root following its paths: rsync copies it confined to the folder
and a staging folder of Sora's (sora.isolation.sandbox.folder_sync, as setup's copies are),
links as links — a link to a host file stays a link, and the host file is not even mounted
where rsync runs — and owned by root without the set-id bits or group/other write, so the
function's uid can read its version but never change it (the sandbox also mounts it
read-only). Only then is the copy hashed (CodeSha256, the same safe walk as setup's content
hash, with SHA-256), beside a hash of the settings: when both equal the newest version's,
the publish returns that version and the copy is dropped, as Lambda does. Otherwise the copy
and its `version.json` are renamed into place as the next number (never reused while the
function has versions), so a version folder is either whole or absent.

The publish is two steps so the arbiter's loop never waits for a copy: `begin()` gives the
rsync command line (run as a child, polled), `finish()` hashes and numbers the copy.
`publish()` does both at once (tests, tools).

Pruning keeps the newest `keep` versions (host config `versions.keep`) and any version an
alias names (its primary or its additional version).
"""
from __future__ import annotations

import base64
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass

from ..config import FUNCTION_NAME_RE, FunctionConfig
from ..config_snapshot import function_from_entry
from ..isolation import sandbox
from ..setup.run import tree_digest
from .qualifier import LATEST, is_version

VERSIONS_DIR = "versions"
CODE_DIR = "code"
VERSION_FILE = "version.json"
STAGING_PREFIX = ".staging-"
# Settings that say where a version lives or which uid runs it, not what it does: left out of
# the settings' digest (a version's own copy differs from $LATEST's in these by design).
_UNHASHED = ("directory", "version", "sandboxUid")


class VersionError(Exception):
    """A refusal in Lambda's terms: `error_type` is Lambda's (ResourceNotFoundException,
    ResourceConflictException, InvalidParameterValueException), `status` its HTTP status."""

    def __init__(self, status: int, error_type: str, message: str):
        super().__init__(message)
        self.status = status
        self.error_type = error_type

    def answer(self) -> dict:
        """The admin channel's error shape."""
        return {"error": {"type": self.error_type, "message": str(self)}}


@dataclass
class Staging:
    """One publish in progress: the function, the folder its copy goes to, the copy's argv."""
    fn: FunctionConfig
    description: str
    folder: str       # <stateDir>/versions/<NAME>/.staging-<random>/
    argv: list[str]
    # PublishVersion's CodeSha256: publish only if the code copied has this hash.
    expect_code: str | None = None

    @property
    def code(self) -> str:
        return os.path.join(self.folder, CODE_DIR)


def code_sha256(directory: str) -> str:
    """Lambda's CodeSha256 shape (base64 of a SHA-256) over the copied tree, walked without
    following links (sora.setup.run.tree_digest)."""
    digest = hashlib.sha256()
    tree_digest(digest, directory, set())
    return base64.b64encode(digest.digest()).decode()


def config_sha256(entry: dict) -> str:
    kept = {k: v for k, v in entry.items() if k not in _UNHASHED}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def version_config(fn: FunctionConfig, number: int, code: str) -> FunctionConfig:
    """The config a version's workers run: the function's as published, from its own copy,
    read-only (never `writableFolder`), without setup (it ran before the snapshot; the copy
    holds what it made), scaling to zero (a version is warm only while it is used)."""
    return dataclasses.replace(
        fn, directory=code, version=str(number), writableFolder=False, setup=[],
        coldStart="always" if fn.coldStart != "never" else "never", minInstances=0)


class VersionStore:
    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self.root = os.path.join(state_dir, VERSIONS_DIR)

    # --- reading ---------------------------------------------------------------------------
    def function_dir(self, name: str) -> str:
        """The function's folder in the store; a name that is not a function name (`..`,
        `a/b`: it comes from a caller's path) is refused before it names a path."""
        if not isinstance(name, str) or not FUNCTION_NAME_RE.match(name):
            raise VersionError(404, "ResourceNotFoundException",
                               f"Function not found: {ascii(str(name)[:80])[1:-1]}")
        return os.path.join(self.root, name)

    def numbers(self, name: str) -> list[int]:
        """The function's published version numbers, oldest first."""
        try:
            entries = os.listdir(self.function_dir(name))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(int(e) for e in entries if is_version(e) and os.path.isfile(
            os.path.join(self.function_dir(name), e, VERSION_FILE)))

    def functions(self) -> list[str]:
        try:
            return sorted(e for e in os.listdir(self.root) if FUNCTION_NAME_RE.match(e))
        except FileNotFoundError:
            return []

    def exists(self, name: str, version: str) -> bool:
        return version == LATEST or (is_version(version) and os.path.isfile(
            os.path.join(self.function_dir(name), version, VERSION_FILE)))

    def get(self, name: str, version: str | int) -> dict | None:
        """The version's record (version.json: Version, CodeSha256, ConfigSha256, Description,
        LastModified, config), or None."""
        if not is_version(str(version)):
            return None
        try:
            with open(os.path.join(self.function_dir(name), str(version), VERSION_FILE),
                      encoding="utf-8") as fh:
                return json.load(fh)
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None

    def config(self, name: str, version: str | int) -> FunctionConfig | None:
        record = self.get(name, version)
        return function_from_entry(record["config"]) if record else None

    def records(self, name: str) -> list[dict]:
        return [r for r in (self.get(name, n) for n in self.numbers(name)) if r]

    # --- publishing -------------------------------------------------------------------------
    def begin(self, fn: FunctionConfig, description: str = "",
              expect_code: str | None = None) -> Staging:
        """Make the staging folder of a publish and the command that copies the function's
        folder into it (confined; see the module docstring). The caller runs the command."""
        folder = self.function_dir(fn.name)
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder)
        os.chmod(staging, 0o755)
        code = os.path.join(staging, CODE_DIR)
        os.mkdir(code, 0o755)
        uid, gid = os.getuid(), os.getgid()   # root's, when Sora runs as root
        argv = sandbox.folder_sync(fn.directory, code, uid, gid)
        if os.geteuid() != 0:
            # Without root the function runs as Sora's own uid: nothing to confine from, and
            # an unprivileged bubblewrap could not keep the capabilities folder_sync asks for.
            argv = argv[argv.index("--") + 1:]
        return Staging(fn, description, staging, argv, expect_code)

    def finish(self, staging: Staging) -> tuple[dict, bool]:
        """Number the copied staging folder: (the version's record, True) if it is new, or
        (the newest version's record, False) when neither code nor settings changed."""
        fn = staging.fn
        code_hash = code_sha256(staging.code)
        entry = dataclasses.asdict(fn)
        settings_hash = config_sha256(entry)
        if staging.expect_code and staging.expect_code != code_hash:
            self.discard(staging)
            raise VersionError(412, "PreconditionFailedException", (
                f"CodeSha256 {staging.expect_code} does not match the function's code "
                f"({code_hash}): it changed since"))
        with self._locked(fn.name):
            numbers = self.numbers(fn.name)
            newest = self.get(fn.name, numbers[-1]) if numbers else None
            if newest and newest["CodeSha256"] == code_hash and \
                    newest["ConfigSha256"] == settings_hash:
                self.discard(staging)
                return newest, False
            number = numbers[-1] + 1 if numbers else 1
            final = os.path.join(self.function_dir(fn.name), str(number))
            config = version_config(fn, number, os.path.join(final, CODE_DIR))
            now = time.time()
            record = {"Version": str(number), "CodeSha256": code_hash,
                      "ConfigSha256": settings_hash, "Description": staging.description,
                      "LastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000+0000",
                                                    time.gmtime(now)),
                      "CodeSize": _tree_size(staging.code),
                      "config": dataclasses.asdict(config)}
            # 0600: it holds the function's env, which is the operator's, not the function's.
            fd = os.open(os.path.join(staging.folder, VERSION_FILE),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(record, fh)
            os.rename(staging.folder, final)   # whole or absent
            return record, True

    def discard(self, staging: Staging) -> None:
        shutil.rmtree(staging.folder, ignore_errors=True)

    def publish(self, fn: FunctionConfig, description: str = "",
                timeout: float = 600.0) -> tuple[dict, bool]:
        """begin + run the copy + finish, blocking (tests and tools; the arbiter steps it)."""
        staging = self.begin(fn, description)
        try:
            done = subprocess.run(staging.argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=timeout, start_new_session=True)
        except BaseException:
            self.discard(staging)
            raise
        if done.returncode != 0:
            self.discard(staging)
            raise VersionError(500, "ServiceException", "could not copy the function's "
                               f"folder: {done.stderr.strip()[-500:]}")
        return self.finish(staging)

    def remove_staging(self) -> None:
        """Staging folders a killed publish left (at the supervisor's start)."""
        for name in self.functions():
            folder = self.function_dir(name)
            for entry in os.listdir(folder):
                if entry.startswith(STAGING_PREFIX):
                    shutil.rmtree(os.path.join(folder, entry), ignore_errors=True)

    # --- pruning ----------------------------------------------------------------------------
    def prune(self, name: str, keep: int, protected: set[str]) -> list[int]:
        """Remove the function's versions older than its newest `keep`, except those in
        `protected` (what aliases name); returns the numbers removed."""
        with self._locked(name):
            numbers = self.numbers(name)
            old = numbers[:-keep] if keep > 0 else numbers
            removed = [n for n in old if str(n) not in protected]
            for number in removed:
                folder = os.path.join(self.function_dir(name), str(number))
                # Renamed first: a reader sees the version whole or not at all.
                doomed = os.path.join(self.function_dir(name), f".removed-{number}")
                os.rename(folder, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
            return removed

    def remove_function(self, name: str) -> None:
        """Every version and alias of a function (its deletion)."""
        shutil.rmtree(self.function_dir(name), ignore_errors=True)

    def _locked(self, name: str):
        return function_lock(self.function_dir(name))


@contextmanager
def function_lock(folder: str):
    """One publish, prune or alias change of a function at a time, across processes (the
    arbiter publishes, a gateway process moves an alias)."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(folder, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _tree_size(directory: str) -> int:
    total = 0
    for _root, _dirs, files, root_fd in os.fwalk(directory, follow_symlinks=False):
        for name in files:
            try:
                total += os.stat(name, dir_fd=root_fd, follow_symlinks=False).st_size
            except OSError:
                pass
    return total
