"""The store of functions created through the Lambda management API.

`<stateDir>/functions/<NAME>/` holds `function.json` (written here: the function's settings in
sora.yaml's schema under `config`, validated by sora.config's one set of rules, and Lambda's
own fields under `lambda`) and `code/` (the uploaded zip, extracted by sora.deploy.zip_code).
sora.config loads them with the functionPaths functions.

Every change is made beside the function and renamed into place: a create appears whole or
not at all; replaced code, and deleted functions, move to `.trash/` (the old generation's
instances may still be finishing calls from it while the new one takes over) and are removed
on a later change, once older than TRASH_KEEP. Changes are serialized by an flock on
`.lock`, so the gateway's processes can take requests at once.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
import uuid

from ..config import (MANAGED_CODE_DIR, MANAGED_CONFIG_FILE, ConfigError, FunctionConfig,
                      function_from_data, managed_functions_dir, source_digest)
from .zip_code import ZipLimits, extract

# The outcome of the function's last change going live (sora.gateway.management_api).
STATUS_FILE = "status.json"
# Replaced or deleted code is kept this long, for the instances still finishing calls on it.
TRASH_KEEP = 15 * 60.0


class StoreError(Exception):
    """A change the store refuses: `error_type` and `status` are Lambda's."""

    def __init__(self, error_type: str, status: int, message: str):
        super().__init__(message)
        self.error_type = error_type
        self.status = status


def not_found(name: str) -> StoreError:
    return StoreError("ResourceNotFoundException", 404, f"Function not found: {name}")


class ManagedStore:
    def __init__(self, state_dir: str, limits: ZipLimits):
        self.root = managed_functions_dir(state_dir)
        self.trash = os.path.join(self.root, ".trash")
        self.limits = limits

    # --- reading ----------------------------------------------------------------------------
    def folder(self, name: str) -> str:
        return os.path.join(self.root, name)

    def code_dir(self, name: str) -> str:
        return os.path.join(self.root, name, MANAGED_CODE_DIR)

    def exists(self, name: str) -> bool:
        return os.path.isfile(os.path.join(self.root, name, MANAGED_CONFIG_FILE))

    def read(self, name: str) -> dict | None:
        """The function's function.json, or None if there is no such managed function."""
        try:
            with open(os.path.join(self.root, name, MANAGED_CONFIG_FILE), "rb") as fh:
                document = json.loads(fh.read())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        return document if isinstance(document, dict) else None

    def names(self) -> list[str]:
        try:
            entries = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(name for name in entries if not name.startswith(".") and self.exists(name))

    def status(self, name: str) -> dict:
        """The outcome of the function's last change going live (status.json), or {}."""
        try:
            with open(os.path.join(self.root, name, STATUS_FILE), "rb") as fh:
                return json.loads(fh.read())
        except (OSError, ValueError):
            return {}

    def write_status(self, name: str, status: dict) -> None:
        folder = self.folder(name)
        if os.path.isdir(folder):
            _write_json(os.path.join(folder, STATUS_FILE), status)

    # --- changes ----------------------------------------------------------------------------
    def create(self, name: str, blob: bytes, config: dict, lambda_fields: dict) -> dict:
        """A new function from its zip and settings; StoreError / ZipRefused if refused, with
        nothing written."""
        self._prepare()
        if self.exists(name):
            raise _exists(name)
        stage = tempfile.mkdtemp(prefix=".create-", dir=self.root)
        try:
            code = self._extract(blob, stage)
            document = self._document(name, code, config, lambda_fields, blob)
            _write_json(os.path.join(stage, MANAGED_CONFIG_FILE), document)
            # Until the supervisor reports it live (sora.gateway.management_api.go_live).
            _write_json(os.path.join(stage, STATUS_FILE),
                        {"State": "Pending", "LastUpdateStatus": "InProgress"})
            with self._locked():
                if os.path.lexists(self.folder(name)):
                    raise _exists(name)
                os.rename(stage, self.folder(name))
            return document
        finally:
            shutil.rmtree(stage, ignore_errors=True)   # gone already once renamed

    def update_code(self, name: str, blob: bytes, lambda_fields: dict) -> dict:
        self._prepare()
        if not self.exists(name):
            raise not_found(name)
        stage = tempfile.mkdtemp(prefix=".update-", dir=self.root)
        try:
            code = self._extract(blob, stage)
            with self._locked():
                current = self.read(name)
                if current is None:
                    raise not_found(name)
                document = self._document(name, code, current["config"],
                                          {**current.get("lambda", {}), **lambda_fields}, blob)
                self._to_trash(self.code_dir(name), name)
                os.rename(code, self.code_dir(name))
                _write_json(os.path.join(self.folder(name), MANAGED_CONFIG_FILE), document)
                self._in_progress(name)
            return document
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def update_config(self, name: str, changes: dict, lambda_fields: dict) -> dict:
        """Settings changed (`changes` in sora.yaml's names; a None value removes one)."""
        self._prepare()
        with self._locked():
            current = self.read(name)
            if current is None:
                raise not_found(name)
            config = {**current["config"], **changes}
            config = {key: value for key, value in config.items() if value is not None}
            lambda_now = {**current.get("lambda", {}), **lambda_fields}
            document = self._document(name, self.code_dir(name), config, lambda_now, None)
            _write_json(os.path.join(self.folder(name), MANAGED_CONFIG_FILE), document)
            self._in_progress(name)
        return document

    def delete(self, name: str) -> None:
        self._prepare()
        with self._locked():
            if not self.exists(name):
                raise not_found(name)
            self._to_trash(self.folder(name), name)

    # --- helpers ----------------------------------------------------------------------------
    def _in_progress(self, name: str) -> None:
        """A change is going live: LastUpdateStatus InProgress, State as it was."""
        status = self.status(name)
        self.write_status(name, {"State": status.get("State", "Active"),
                                 "LastUpdateStatus": "InProgress"})

    def _prepare(self) -> None:
        os.makedirs(self.trash, mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)
        self._empty_trash()

    def _extract(self, blob: bytes, stage: str) -> str:
        extracted = extract(blob, stage, self.limits)
        code = os.path.join(stage, MANAGED_CODE_DIR)
        os.rename(extracted.folder, code)
        return code

    def _document(self, name: str, code: str, config: dict, lambda_fields: dict,
                  blob: bytes | None) -> dict:
        """function.json for these settings, once they pass sora.yaml's rules against the
        code they would run (StoreError InvalidParameterValueException if not)."""
        config = {**config, "name": name}
        digest = source_digest(json.dumps(config, sort_keys=True).encode())
        try:
            function_from_data(code, MANAGED_CONFIG_FILE, config, digest, managed=True)
        except ConfigError as exc:
            raise StoreError("InvalidParameterValueException", 400, "; ".join(
                lambda_problem(problem.replace(code, "the zip"))
                for problem in exc.problems)) from None
        fields = dict(lambda_fields)
        if blob is not None:
            from .zip_code import code_sha256
            fields.update(CodeSha256=code_sha256(blob), CodeSize=len(blob))
        fields.update(LastModified=_lambda_time(time.time()), RevisionId=str(uuid.uuid4()))
        return {"config": config, "lambda": fields}

    @contextlib.contextmanager
    def _locked(self):
        fd = os.open(os.path.join(self.root, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _to_trash(self, path: str, name: str) -> None:
        os.rename(path, os.path.join(self.trash, f"{name}-{time.time():.0f}-{uuid.uuid4().hex[:8]}"))

    def _empty_trash(self) -> None:
        now = time.time()
        self._remove_older(self.trash, os.listdir(self.trash), now)
        # Stages a crashed gateway left (a stage is done within a request's time).
        self._remove_older(self.root, [entry for entry in os.listdir(self.root)
                                       if entry.startswith((".create-", ".update-"))], now)

    @staticmethod
    def _remove_older(folder: str, entries: list[str], now: float) -> None:
        """Remove those of `entries` in `folder` last changed over TRASH_KEEP ago."""
        for entry in entries:
            path = os.path.join(folder, entry)
            try:
                if now - os.lstat(path).st_mtime > TRASH_KEEP:
                    shutil.rmtree(path, ignore_errors=True)
            except FileNotFoundError:
                continue

def function_config(store: ManagedStore, name: str) -> FunctionConfig | None:
    """The function's config as sora.config loads it, or None."""
    from ..config import load_managed_function
    try:
        return load_managed_function(store.folder(name))
    except ConfigError:
        return None


# sora.yaml's names of the settings the management API sets, and Lambda's for them.
LAMBDA_FIELDS = {"handler": "Handler", "entrypoint": "Handler", "timeout": "Timeout",
                 "memory": "MemorySize", "env": "Environment.Variables", "language": "Runtime"}


def lambda_problem(problem: str) -> str:
    """A config problem ("handler: expected ...") named by Lambda's field ("Handler: ...")."""
    field_name, colon, rest = problem.partition(":")
    if colon and field_name in LAMBDA_FIELDS:
        return f"{LAMBDA_FIELDS[field_name]}:{rest}"
    return problem


def _exists(name: str) -> StoreError:
    return StoreError("ResourceConflictException", 409, f"Function already exist: {name}")


def _lambda_time(when: float) -> str:
    """Lambda's LastModified: ISO 8601 with milliseconds and +0000."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + \
        f".{int(when * 1000) % 1000:03d}+0000"


def _write_json(path: str, document: dict) -> None:
    folder = os.path.dirname(path)
    fd, temporary = tempfile.mkstemp(prefix=".json-", dir=folder)   # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(document, fh, indent=1, sort_keys=True)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
