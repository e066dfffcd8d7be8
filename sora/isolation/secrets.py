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
from .sandbox import sandbox_uid

SECRETS_DIR_ENV = "SORA_SECRETS_DIR"
MASK = b"****"
# Values shorter than this are not masked in logs (masking "1" would mangle every line).
MIN_MASKED = 4


def read_secrets(fn: FunctionConfig) -> dict[str, str]:
    """name -> value; a ConfigError names the secret and what was wrong (never the value)."""
    values, problems = {}, []
    for spec in fn.secrets:
        if spec.file is not None:
            path = os.path.join(fn.directory, os.path.expanduser(spec.file))
            try:
                with open(path, encoding="utf-8") as fh:
                    values[spec.name] = fh.read().rstrip("\n")
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"secrets.{spec.name}.file: expected a readable UTF-8 file, "
                                f"got {path} ({getattr(exc, 'strerror', None) or exc})")
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
    return os.path.join(_base(), f"sora-secrets-{host}-{fn.name}")


def prepare_sandboxed_dir(path: str, fn: FunctionConfig) -> None:
    """Make the folder, 0700 and owned by the function's sandbox uid."""
    owner = sandbox_uid(fn.name)
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    os.chown(path, owner, owner)


def remove_leftovers(function: str, pid: int) -> None:
    """The folder of a worker that died without removing it (the supervisor calls this when
    it reaps the worker)."""
    for path in glob.glob(os.path.join(_base(), glob.escape(_prefix(function, pid)) + "*")):
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
        """Write the files (owned by the sandbox uid for a sandboxed function)."""
        if not self.values:
            return
        owner = sandbox_uid(self.fn.name) if self.fixed_dir is not None else None
        if self.fixed_dir is not None:
            prepare_sandboxed_dir(self.fixed_dir, self.fn)
            self.directory = self.fixed_dir
        else:
            self.directory = tempfile.mkdtemp(prefix=_prefix(self.fn.name, os.getpid()),
                                              dir=_base())
        for name, value in self.values.items():
            path = os.path.join(self.directory, name)
            try:
                os.unlink(path)   # a fixed folder keeps the last worker's files
            except FileNotFoundError:
                pass
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(value)
            if owner is not None:
                os.chown(path, owner, owner)

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
