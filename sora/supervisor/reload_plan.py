"""What a reload does, decided apart from doing it (policy without processes, unit-tested).

`plan_functions` compares the functions the host serves (their configs as loaded, and a
fingerprint of each folder taken when its generation started) with a fresh read of the host
config, and says per function: `add` (new), `remove` (gone from the config), `switch` (its
config entry or its folder changed: a rolling switch to a new generation), `keep` (unchanged),
or `fail` (its new `sora.yaml` cannot be used: the previous code keeps serving). `host_changes`
sorts the host-level settings that changed into those applied live and those that need a
restart (`needsRestart`), so nothing changed is silently ignored.

The folder fingerprint is the path, size, modification and change time and inode of every
entry (links not followed), not its content: it is taken for every function on each reload,
in the arbiter's loop, and reading a folder's node_modules would hold the loop for seconds.
A touched file therefore counts as a change (a needless but harmless switch); setup's own
cache still decides by content whether setup runs again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass

from ..config import BrokenFunction, FunctionConfig, HostConfig

ADD, REMOVE, SWITCH, KEEP, FAIL = "add", "remove", "switch", "keep", "fail"

# Never part of the fingerprint: written by the runtimes themselves (Python's bytecode cache,
# with `isolation: none`) or not code (a VCS's folder).
_SKIPPED = {".git", "__pycache__", ".sora"}

# Host settings a reload applies without a restart: the gateways' gunicorn masters are sent
# SIGHUP and their new workers read the host config again (sora.gateway.app), the only
# readers of these. Every other host-level setting that changed is reported in `needsRestart`.
LIVE_HOST_SETTINGS = frozenset({"auth.apiKeys", "server.maxBodyBytes", "server.maxEventBytes",
                                "server.errorDetail"})


@dataclass(frozen=True)
class FunctionPlan:
    name: str
    action: str                           # ADD, REMOVE, SWITCH, KEEP, FAIL
    reason: str = ""
    config: FunctionConfig | None = None  # the new config (ADD, SWITCH)


def fingerprint(directory: str, data_dirs: tuple[str, ...] = ()) -> str:
    """A digest of the folder's entries' names and stat data (see the module docstring),
    leaving out its file triggers' folders (`data_dirs`, relative: FunctionConfig.data_dirs);
    "" when the folder cannot be read."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        for root, dirs, files, root_fd in os.fwalk(directory, follow_symlinks=False):
            rel_root = os.path.relpath(root, directory)
            dirs[:] = sorted(d for d in dirs if d not in _SKIPPED and
                             os.path.normpath(os.path.join(rel_root, d)) not in data_dirs)
            for name in sorted(files + [d for d in dirs
                                        if os.path.islink(os.path.join(root, d))]):
                try:
                    st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
                except OSError:
                    continue
                digest.update(b"%s\0%d:%d:%d:%d:%o\n" % (
                    os.path.join(root, name).encode(errors="surrogateescape"), st.st_size,
                    st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode))
    except OSError:
        return ""
    return digest.hexdigest()


def config_changes(old: FunctionConfig, new: FunctionConfig) -> list[str]:
    """The fields of a function's config that differ (for the log and the report)."""
    a, b = dataclasses.asdict(old), dataclasses.asdict(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def plan_functions(serving: dict[str, FunctionConfig], fingerprints: dict[str, str],
                   broken_before: dict[str, str], new: HostConfig,
                   only: set[str] | None = None,
                   current_fingerprint=fingerprint) -> dict[str, FunctionPlan]:
    """Per function, what a reload does (see the module docstring).

    `serving`: the functions the host runs now (name -> config); `fingerprints`: their folders'
    at the start of their generation; `broken_before`: the functions that were broken (name ->
    reason); `new`: the host config read again; `only`: the names to look at (None: all)."""
    wanted = (lambda name: True) if only is None else (lambda name: name in only)
    plans: dict[str, FunctionPlan] = {}
    new_broken: dict[str, BrokenFunction] = {b.name: b for b in new.broken}
    for fn in new.functions:
        if not wanted(fn.name):
            continue
        old = serving.get(fn.name)
        if old is None:
            plans[fn.name] = FunctionPlan(fn.name, ADD, "new in the configuration", fn)
            continue
        changed = config_changes(old, fn)
        if changed:
            plans[fn.name] = FunctionPlan(fn.name, SWITCH,
                                          "sora.yaml changed: " + ", ".join(changed), fn)
        elif current_fingerprint(fn.directory, fn.data_dirs) != fingerprints.get(fn.name):
            plans[fn.name] = FunctionPlan(fn.name, SWITCH, "its folder changed", fn)
        else:
            plans[fn.name] = FunctionPlan(fn.name, KEEP, "", fn)
    listed = {fn.name for fn in new.functions}
    for name in serving:
        if name in listed or not wanted(name):
            continue
        if name in new_broken:
            # Its sora.yaml is there but cannot be used: the previous config keeps serving.
            plans[name] = FunctionPlan(name, FAIL, new_broken[name].reason)
        else:
            plans[name] = FunctionPlan(name, REMOVE, "no longer in the configuration")
    for name, broken in new_broken.items():
        if name in plans or name in serving or not wanted(name):
            continue
        if broken_before.get(name) == broken.reason:
            plans[name] = FunctionPlan(name, KEEP, broken.reason)
        else:
            plans[name] = FunctionPlan(name, FAIL, broken.reason)
    return plans


def _flat(config: HostConfig) -> dict[str, object]:
    """The host-level settings by dotted name (functions, broken and the path left out)."""
    out: dict[str, object] = {}
    for f in dataclasses.fields(config):
        if f.name in ("functions", "broken", "path"):
            continue
        value = getattr(config, f.name)
        if f.name == "apiKeys":
            # Compared by name, digest, scopes and secret (the secret is not in __eq__).
            out["auth.apiKeys"] = [(k.name, k.digest, k.scopes, k.secret) for k in value]
        elif dataclasses.is_dataclass(value):
            for sub in dataclasses.fields(value):
                out[f"{f.name}.{sub.name}"] = getattr(value, sub.name)
        else:
            out[f.name] = value
    return out


def host_changes(old: HostConfig, new: HostConfig) -> tuple[list[str], list[str]]:
    """(settings applied live, settings that need a restart), by dotted name, sorted."""
    a, b = _flat(old), _flat(new)
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return ([k for k in changed if k in LIVE_HOST_SETTINGS],
            [k for k in changed if k not in LIVE_HOST_SETTINGS])


def files_digest(paths: list[str | None]) -> str:
    """A digest of the files' contents (the TLS certificate and key): renewed files at the
    same paths are re-read by a reload."""
    digest = hashlib.blake2b(digest_size=16)
    for path in paths:
        if not path:
            continue
        try:
            with open(path, "rb") as fh:
                digest.update(fh.read())
        except OSError as exc:
            digest.update(f"unreadable:{exc.errno}".encode())
        digest.update(b"\0")
    return digest.hexdigest()
