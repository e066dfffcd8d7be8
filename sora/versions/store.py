"""The version store: rows of the store (`function_versions`), and each version's code as a
local root-owned copy under `<stateDir>/versions/<NAME>/<N>/` (`code/` and `version.json`).

The store (sora.store.backend: SQLite's sora.db on one host, or a PostgreSQL database that
several hosts share) says which versions exist, their numbers and settings; the local folder
is what the sandbox binds. On PostgreSQL the row also carries the code as a tar Sora made from
its own copy (sora.versions.code_tar), and a host that lacks the folder makes it from the row
on first use (`ensure_local`): extracted into a staging folder by the refusing extraction,
its code hash checked against the row's, then renamed into place. On SQLite the folder is the
only copy (`code` is NULL).

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
the publish returns that version and the copy is dropped, as Lambda does. Otherwise the next
number is taken in one store transaction (on PostgreSQL under a per-function advisory lock,
so two hosts publishing at once get different numbers; the primary key backs it), the copy
is renamed into place and the row inserted; the commit makes the version exist, so a version
is whole or absent. Numbers are never reused while the function has versions (pruning always
keeps the newest).

The publish is two steps so the arbiter's loop never waits for a copy: `begin()` gives the
rsync command line (run as a child, polled), `finish()` hashes and numbers the copy.
`publish()` does both at once (tests, tools).

Pruning keeps the newest `keep` versions (host config `versions.keep`) and any version an
alias names (its primary or its additional version), read in the pruning's transaction.

Versions and aliases.json files an older Sora kept (`version.json` per version) are imported
into the store once (`import_files`, at the supervisor's start; the files stay, unused).
"""
from __future__ import annotations

import base64
import calendar
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

from ..config import FUNCTION_NAME_RE, FunctionConfig, StoreConfig
from ..config_snapshot import function_from_entry
from ..isolation import sandbox
from ..setup.run import tree_digest
from ..store import backend
from . import changes, code_tar
from .connection import store_connection
from .qualifier import LATEST, is_version

log = logging.getLogger("sora.versions")

VERSIONS_DIR = "versions"
CODE_DIR = "code"
VERSION_FILE = "version.json"
STAGING_PREFIX = ".staging-"
REMOVED_PREFIX = ".removed-"
# Settings that say where a version lives or which uid runs it, not what it does: left out of
# the settings' digest (a version's own copy differs from $LATEST's in these by design).
_UNHASHED = ("directory", "version", "sandboxUid")
# A version's row without its code (the tar is read only to make a copy).
_COLUMNS = ("function, version, config, code_sha256, settings_sha256, description, created, "
            "code_size")
# A number another host took between our read and insert (the advisory lock makes it rare).
PUBLISH_ATTEMPTS = 5
LAST_MODIFIED_FORMAT = "%Y-%m-%dT%H:%M:%S.000+0000"


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
    def __init__(self, state_dir: str, store: StoreConfig | None = None,
                 busy_ms: int | None = None):
        self.state_dir = state_dir
        self.store = store or StoreConfig()
        self.busy_ms = busy_ms   # the longest wait for a connection (None: the store's)
        self.root = os.path.join(state_dir, VERSIONS_DIR)

    @property
    def conn(self):
        """This thread's connection to the store (sora.versions.connection)."""
        return store_connection(self.store, self.state_dir, self.busy_ms)

    @property
    def carries_code(self) -> bool:
        """Whether rows carry the code (a store other hosts share)."""
        return self.store.kind != "sqlite"

    # --- reading ---------------------------------------------------------------------------
    def function_dir(self, name: str) -> str:
        """The function's folder in the store; a name that is not a function name (`..`,
        `a/b`: it comes from a caller's path) is refused before it names a path."""
        if not isinstance(name, str) or not FUNCTION_NAME_RE.match(name):
            raise VersionError(404, "ResourceNotFoundException",
                               f"Function not found: {ascii(str(name)[:80])[1:-1]}")
        return os.path.join(self.root, name)

    def local_dir(self, name: str, version: str | int) -> str:
        return os.path.join(self.function_dir(name), str(version))

    def numbers(self, name: str) -> list[int]:
        """The function's published version numbers, oldest first."""
        self.function_dir(name)
        return [row[0] for row in self.conn.execute(
            "SELECT version FROM function_versions WHERE function = ? ORDER BY version",
            (name,))]

    def functions(self) -> list[str]:
        """The functions that have published versions."""
        return [row[0] for row in self.conn.execute(
            "SELECT DISTINCT function FROM function_versions ORDER BY function")]

    def summary(self) -> dict[tuple[str, int], tuple]:
        """Every version's identity without its config or code: (function, number) ->
        (CodeSha256, ConfigSha256, created). What the arbiter polls."""
        return {(row[0], row[1]): (row[2], row[3], row[4]) for row in self.conn.execute(
            "SELECT function, version, code_sha256, settings_sha256, created "
            "FROM function_versions")}

    def exists(self, name: str, version: str) -> bool:
        if version == LATEST:
            return True
        if not is_version(version):
            return False
        self.function_dir(name)
        return self.conn.execute(
            "SELECT 1 FROM function_versions WHERE function = ? AND version = ?",
            (name, int(version))).fetchone() is not None

    def get(self, name: str, version: str | int) -> dict | None:
        """The version's record (Version, CodeSha256, ConfigSha256, Description,
        LastModified, CodeSize, config — its `directory` this host's copy), or None."""
        if not is_version(str(version)):
            return None
        self.function_dir(name)
        row = self.conn.execute(
            f"SELECT {_COLUMNS} FROM function_versions WHERE function = ? AND version = ?",
            (name, int(version))).fetchone()
        return self._record(row) if row else None

    def config(self, name: str, version: str | int) -> FunctionConfig | None:
        record = self.get(name, version)
        return function_from_entry(record["config"]) if record else None

    def records(self, name: str) -> list[dict]:
        self.function_dir(name)
        return [self._record(row) for row in self.conn.execute(
            f"SELECT {_COLUMNS} FROM function_versions WHERE function = ? ORDER BY version",
            (name,))]

    def _record(self, row) -> dict:
        name, number = row["function"], row["version"]
        config = json.loads(row["config"])
        config["directory"] = os.path.join(self.local_dir(name, number), CODE_DIR)
        return {"Version": str(number), "CodeSha256": row["code_sha256"],
                "ConfigSha256": row["settings_sha256"],
                "Description": row["description"] or "",
                "LastModified": _last_modified(row["created"]),
                "CodeSize": row["code_size"] or 0, "config": config}

    # --- this host's copies -----------------------------------------------------------------
    def local_config(self, name: str, version: str | int) -> FunctionConfig | None:
        """The version's config from this host's copy (its `version.json`, written by Sora
        with the copy): what a version's worker reads, without a store connection of its
        own (the arbiter made the copy current before starting it: `ensure_local`)."""
        record = _read_local(self.local_dir(name, version)) if is_version(str(version)) \
            else None
        return function_from_entry(record["config"]) if record else None

    def has_local(self, name: str, version: str | int, identity: tuple) -> bool:
        """Whether this host's copy is the version `identity` (summary's: CodeSha256,
        ConfigSha256, created) names: one small file read, no store query."""
        local = _read_local(self.local_dir(name, version))
        code_hash, settings_hash, created = identity
        return local is not None and local.get("CodeSha256") == code_hash and \
            local.get("ConfigSha256") == settings_hash and \
            local.get("LastModified") == _last_modified(created) and \
            os.path.isdir(os.path.join(self.local_dir(name, version), CODE_DIR))

    def ensure_local(self, name: str, version: str | int) -> FunctionConfig:
        """The version's config, with this host's copy of its code made current first: kept
        if its version.json matches the row, else made from the row's tar (PostgreSQL).
        VersionError 404 if the version does not exist, 500 if its code cannot be had."""
        record = self.get(name, version)
        if record is None:
            raise VersionError(404, "ResourceNotFoundException",
                               f"Function not found: {name}:{version}")
        final = self.local_dir(name, version)
        if _same(_read_local(final), record):
            return function_from_entry(record["config"])
        with self._locked(name):
            if _same(_read_local(final), record):   # another process made it meanwhile
                return function_from_entry(record["config"])
            row = self.conn.execute(
                "SELECT code, code_size FROM function_versions WHERE function = ? AND "
                "version = ?",
                (name, int(version))).fetchone()
            if row is None or row[0] is None:
                raise VersionError(500, "ServiceException", (
                    f"version {version} of {name} has no copy on this host and no code in "
                    f"the store {self.store.display_url}"))
            staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.function_dir(name))
            try:
                os.chmod(staging, 0o755)
                code = os.path.join(staging, CODE_DIR)
                os.mkdir(code, 0o755)
                try:
                    code_tar.unpack(bytes(row[0]), code, max_bytes=row[1])
                except code_tar.UnsafeTar as exc:
                    raise VersionError(500, "ServiceException", (
                        f"version {version} of {name}: its code in the store was refused: "
                        f"{exc}")) from None
                got = code_sha256(code)
                if got != record["CodeSha256"]:
                    raise VersionError(500, "ServiceException", (
                        f"version {version} of {name}: its code from the store hashes to "
                        f"{got}, not its CodeSha256 {record['CodeSha256']}"))
                _write_local(staging, record)
                self._drop_local(name, version)
                os.rename(staging, final)   # whole or absent
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        log.info("function %s: version %s copied from the store to this host", name, version)
        return function_from_entry(record["config"])

    def drop_local(self, name: str, version: str | int) -> None:
        """Remove this host's copy of a version the store no longer has."""
        with self._locked(name):
            if not self.exists(name, str(version)):
                self._drop_local(name, version)

    def _drop_local(self, name: str, version: str | int) -> None:
        folder = self.local_dir(name, version)
        if not os.path.lexists(folder):
            return
        # Renamed first: a reader sees the version whole or not at all.
        doomed = os.path.join(self.function_dir(name),
                              f"{REMOVED_PREFIX}{version}-{uuid.uuid4().hex[:8]}")
        os.rename(folder, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def drop_orphans(self) -> list[str]:
        """Local copies whose version the store does not have (a publish killed between
        the copy's rename and its commit; a version removed while this host was down)."""
        dropped = []
        known = set(self.summary())
        for name in self._local_functions():
            for entry in os.listdir(self.function_dir(name)):
                if is_version(entry) and (name, int(entry)) not in known:
                    self.drop_local(name, entry)
                    dropped.append(f"{name}:{entry}")
        return dropped

    def _local_functions(self) -> list[str]:
        try:
            return sorted(e for e in os.listdir(self.root) if FUNCTION_NAME_RE.match(e) and
                          os.path.isdir(os.path.join(self.root, e)))
        except FileNotFoundError:
            return []

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
        size = _tree_size(staging.code)
        # The tar is made from Sora's own copy (root's), never from the function's folder.
        carried = code_tar.pack(staging.code) if self.carries_code else None
        with self._locked(fn.name):
            for attempt in range(PUBLISH_ATTEMPTS):
                renamed = None
                try:
                    with self.conn.transaction():
                        lock_function(self.conn, fn.name)
                        newest = self.conn.execute(
                            f"SELECT {_COLUMNS} FROM function_versions WHERE function = ? "
                            "ORDER BY version DESC LIMIT 1", (fn.name,)).fetchone()
                        if newest is not None and newest["code_sha256"] == code_hash and \
                                newest["settings_sha256"] == settings_hash:
                            self.discard(staging)
                            return self._record(newest), False
                        number = newest["version"] + 1 if newest is not None else 1
                        final = self.local_dir(fn.name, number)
                        config = version_config(fn, number, os.path.join(final, CODE_DIR))
                        now = time.time()
                        self.conn.execute(
                            "INSERT INTO function_versions (function, version, config, "
                            "code_sha256, settings_sha256, description, created, code, "
                            "code_size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (fn.name, number, json.dumps(dataclasses.asdict(config)),
                             code_hash, settings_hash, staging.description, now, carried,
                             size))
                        record = {"Version": str(number), "CodeSha256": code_hash,
                                  "ConfigSha256": settings_hash,
                                  "Description": staging.description,
                                  "LastModified": _last_modified(now), "CodeSize": size,
                                  "config": dataclasses.asdict(config)}
                        _write_local(staging.folder, record)
                        self._drop_local(fn.name, number)   # a stale copy of no row's
                        os.rename(staging.folder, final)
                        renamed = final
                except backend.INTEGRITY_ERRORS:
                    if renamed:
                        os.rename(renamed, staging.folder)
                    if attempt + 1 == PUBLISH_ATTEMPTS:
                        self.discard(staging)
                        raise
                    continue   # another host took the number: take the next
                except BaseException:
                    if renamed:   # the commit failed: the version does not exist
                        os.rename(renamed, staging.folder)
                    self.discard(staging)
                    raise
                changes.touch(self.function_dir(fn.name))
                return record, True
        raise AssertionError("unreachable")

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
        """Staging folders a killed publish or copy left (at the supervisor's start)."""
        for name in self._local_functions():
            folder = self.function_dir(name)
            for entry in os.listdir(folder):
                if entry.startswith((STAGING_PREFIX, REMOVED_PREFIX)):
                    shutil.rmtree(os.path.join(folder, entry), ignore_errors=True)

    # --- pruning ----------------------------------------------------------------------------
    def prune(self, name: str, keep: int, protected: set[str] = frozenset()) -> list[int]:
        """Remove the function's versions older than its newest `keep`, except those an
        alias names (read in the same transaction, so an alias made on another host at the
        same time either protects its version or is refused) and those in `protected`;
        returns the numbers removed."""
        with self._locked(name):
            with self.conn.transaction():
                lock_function(self.conn, name)
                numbers = self.numbers(name)
                kept = set(protected) | aliased_versions(self.conn, name)
                old = numbers[:-keep] if keep > 0 else numbers
                removed = [n for n in old if str(n) not in kept]
                self.conn.executemany(
                    "DELETE FROM function_versions WHERE function = ? AND version = ?",
                    [(name, n) for n in removed])
            for number in removed:
                self._drop_local(name, number)
            if removed:
                changes.touch(self.function_dir(name))
            return removed

    def remove_function(self, name: str) -> None:
        """Every version and alias of a function (its deletion)."""
        folder = self.function_dir(name)
        with self.conn.transaction():
            lock_function(self.conn, name)
            self.conn.execute("DELETE FROM function_versions WHERE function = ?", (name,))
            self.conn.execute("DELETE FROM function_aliases WHERE function = ?", (name,))
        shutil.rmtree(folder, ignore_errors=True)
        changes.touch(folder)

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


def lock_function(conn, name: str) -> None:
    """Inside a transaction: hold the function's versions and aliases until it ends, on
    every host. SQLite's BEGIN IMMEDIATE already holds the whole file; PostgreSQL takes a
    transaction-scoped advisory lock keyed by the function's name."""
    if conn.dialect == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"sora.versions:{name}".encode()).digest()[:8],
                             "big", signed=True)
        conn.execute("SELECT pg_advisory_xact_lock(?)", (key,))


def aliased_versions(conn, name: str) -> set[str]:
    """The versions some alias of the function names (its primary or additional version)."""
    out = set()
    for row in conn.execute("SELECT document FROM function_aliases WHERE function = ?",
                            (name,)):
        record = json.loads(row[0])
        out.add(record["FunctionVersion"])
        out.update(record.get("RoutingConfig", {}).get("AdditionalVersionWeights", {}))
    return out


def _last_modified(created: float) -> str:
    return time.strftime(LAST_MODIFIED_FORMAT, time.gmtime(created))


def _created(last_modified: str) -> float:
    try:
        return float(calendar.timegm(time.strptime(last_modified, LAST_MODIFIED_FORMAT)))
    except (TypeError, ValueError):
        return time.time()


def _read_local(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, VERSION_FILE), encoding="utf-8") as fh:
            record = json.load(fh)
        return record if isinstance(record, dict) else None
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None


def _write_local(folder: str, record: dict) -> None:
    # 0600: it holds the function's env, which is the operator's, not the function's.
    fd = os.open(os.path.join(folder, VERSION_FILE),
                 os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(record, fh)


def _same(local: dict | None, record: dict) -> bool:
    """Whether this host's copy is the row's version (not a stale one of a number reused
    after the function was deleted, or of another host's import)."""
    return local is not None and all(local.get(k) == record[k] for k in (
        "Version", "CodeSha256", "ConfigSha256", "LastModified")) and \
        os.path.isdir(record["config"]["directory"])

