"""A function's secrets (sora.yaml `secrets`): read once when its worker starts, offered to its
instances as files (and, where asked, environment variables), and kept out of its logs.

The files live in a folder of their own per worker, in memory (/dev/shm) where there is one,
mode 0700 with files 0400, and are removed when the worker stops. Values never go into the
config objects, records or APIs; lines the function prints have every secret value replaced
by `****` before they are written anywhere.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import tempfile

from ..config import ConfigError, FunctionConfig
from ..versions.qualifier import LATEST
from . import nofollow
from .sandbox import sandbox_uid

SECRETS_DIR_ENV = "SORA_SECRETS_DIR"
MASK = b"****"
# Values shorter than this are not masked in logs (masking "1" would mangle every line).
MIN_MASKED = 4
# A secret is a key or a password, not a data set: a bigger file is a mistake.
MAX_SECRET_BYTES = 1 << 20


def read_secrets(fn: FunctionConfig) -> dict[str, str]:
    """name -> value; a ConfigError names the secret and what was wrong (never the value)."""
    values, problems = {}, []
    for spec in fn.secrets:
        if spec.file is not None:
            path = os.path.join(fn.directory, os.path.expanduser(spec.file))
            try:
                values[spec.name] = _read_file(fn.directory, os.path.expanduser(spec.file))
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"secrets.{spec.name}.file: expected a readable UTF-8 regular "
                                f"file reached without symbolic links, got {path} "
                                f"({getattr(exc, 'strerror', None) or exc})")
        else:
            value = os.environ.get(spec.env)
            if value is None:
                problems.append(f"secrets.{spec.name}.env: expected a variable set in the "
                                f"host's environment, got {spec.env!r} (not set)")
            else:
                values[spec.name] = value
    if problems:
        raise ConfigError(fn.source, problems)
    return values


def _read_file(folder: str, path: str) -> str:
    """A secret file's content. Read as root, from a folder the function's setup (and, with
    `writableFolder`, the function) can change: a link planted in place of the file, or of a
    folder on its way, would hand the function whatever it points to, and a fifo would hang
    the worker. So no link is followed (sora.isolation.nofollow), relative paths from the
    function folder, absolute ones from `/`, and only a regular file with one link is read."""
    if os.path.isabs(path):
        root, relative = "/", os.path.normpath(path)
    else:
        root, relative = folder, os.path.normpath(path)
        if relative == ".." or relative.startswith("../"):   # outside the folder
            root, relative = "/", os.path.normpath(os.path.join(folder, path))
    data = nofollow.read_beneath(root, relative.lstrip("/"), max_bytes=MAX_SECRET_BYTES,
                                 single_link=True)
    return data.decode("utf-8").rstrip("\n")


def _base() -> str:
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()


def _prefix(function: str, pid: int) -> str:
    return f"sora-secrets-{function}-{pid}-"


def sandboxed_dir(state_dir: str, fn: FunctionConfig) -> str | None:
    """The secrets folder of a sandboxed function with secrets (None for any other): one fixed
    path per host and function, made by the supervisor before anything starts, because a
    pre-started sandbox binds it when it starts (before its worker has read the secrets into
    it)."""
    if not (fn.sandboxed and fn.secrets):
        return None
    host = hashlib.sha1(os.path.abspath(state_dir).encode()).hexdigest()[:10]
    # A published version has its own (`.vN`: no function name has a dot): its worker reads
    # its secrets from its own copy of the folder, and sharing $LATEST's folder let each
    # worker's start overwrite the other's files — $LATEST's instances read a version's stale
    # value, and a version's read $LATEST's new one, which its worker did not mask in logs.
    version = "" if fn.version == LATEST else f".v{fn.version}"
    return os.path.join(_base(), f"sora-secrets-{host}-{fn.name}{version}")


def prepare_sandboxed_dir(path: str, fn: FunctionConfig) -> None:
    """Make the folder, 0700 and owned by the function's sandbox uid."""
    os.close(_open_own_dir(path, sandbox_uid(fn)))


def _open_own_dir(path: str, owner: int) -> int:
    """A descriptor of the folder `path` (made if missing), 0700 and owned by `owner`. Its
    parent (/dev/shm) is writable by every local user and the path can be guessed, so what is
    there is opened without following a link and taken only if Sora or `owner` owns it; the
    mode and owner are set on the descriptor, not by name."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if (uid := os.fstat(fd).st_uid) not in (os.geteuid(), owner):
            raise nofollow.UnsafePath(f"{path}: expected a folder of Sora's or uid {owner}, "
                                      f"got one of uid {uid}")
        os.fchmod(fd, 0o700)
        os.fchown(fd, owner, owner)
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_leftovers(function: str, pid: int) -> None:
    """The folder of a worker that died without removing it (the supervisor calls this when
    it reaps the worker)."""
    prefix = _prefix(function, pid)
    for path in glob.glob(os.path.join(_base(), glob.escape(prefix) + "*")):
        # Only mkdtemp's own suffix (it has no dash) may follow: `a` with pid 12 must not take
        # the folder of a function named `a-12` (`sora-secrets-a-12-345-…`).
        if "-" not in os.path.basename(path)[len(prefix):]:
            shutil.rmtree(path, ignore_errors=True)


class Secrets:
    def __init__(self, fn: FunctionConfig, values: dict[str, str], state_dir: str):
        self.fn = fn
        self.values = values
        self.directory: str | None = None
        # A sandboxed function's folder (sandboxed_dir): fixed, owned by its uid, kept at stop.
        self.fixed_dir = sandboxed_dir(state_dir, fn)
        self._masked = sorted({v.encode() for v in values.values() if len(v) >= MIN_MASKED},
                              key=len, reverse=True)

    def write_files(self) -> None:
        """Write the files (owned by the sandbox uid for a sandboxed function), through a
        descriptor of the folder: no name is followed if it is a link."""
        if not self.values:
            return
        # A container's runtime reads them as the function's uid too (bound read-only).
        owner = sandbox_uid(self.fn) if self.fixed_dir is not None or \
            self.fn.isolation == "container" else os.geteuid()
        if self.fixed_dir is not None:
            self.directory = self.fixed_dir
        else:
            self.directory = tempfile.mkdtemp(prefix=_prefix(self.fn.name, os.getpid()),
                                              dir=_base())
        dir_fd = _open_own_dir(self.directory, owner)
        try:
            for name, value in self.values.items():
                try:
                    os.unlink(name, dir_fd=dir_fd)   # a fixed folder keeps the last worker's
                except FileNotFoundError:
                    pass
                nofollow.create_beneath(dir_fd, name, value.encode("utf-8"), owner, 0o400)
        finally:
            os.close(dir_fd)

    def environment(self) -> dict[str, str]:
        """What the instances get on top of the function's own environment."""
        env = {spec.name: self.values[spec.name] for spec in self.fn.secrets if spec.asEnv}
        if self.directory is not None:
            env[SECRETS_DIR_ENV] = self.directory
        return env

    def redact(self, line: bytes) -> bytes:
        for value in self._masked:
            if value in line:
                line = line.replace(value, MASK)
        return line

    def remove(self) -> None:
        if self.directory is not None and self.fixed_dir is None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def declared_env_names(functions: list[FunctionConfig]) -> frozenset[str]:
    """Every host variable some function of the host takes a secret from (`{env: NAME}`):
    withheld from every setup, whichever function it runs for."""
    return frozenset(spec.env for fn in functions for spec in fn.secrets if spec.env)
