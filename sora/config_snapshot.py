"""The functions' configs as the supervisor loaded them, handed to its children.

A function's `sora.yaml` is the operator's, but it sits in a folder that the function's setup
(an npm `postinstall`, say) and, with `writableFolder`, the function itself can write. So it is
read once, by the supervisor, before any setup runs, and every process that needs it afterwards
— workers (and their restarts), gateways, the dispatcher — reads this snapshot instead:
`<stateDir>/run/functions.json`, written by the supervisor at start (mode 0600, replaced
atomically) in the state dir, which no sandbox mounts. Nothing a function writes after the
supervisor started can change how Sora runs it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile

from . import protocol as p
from .config import (BrokenFunction, ConfigError, EventInvokeConfig, FunctionConfig, HostConfig,
                     SecretSpec, load_host_config, trigger_from_dict)

FILE_NAME = "functions.json"


def snapshot_path(state_dir: str) -> str:
    return os.path.join(p.run_dir(state_dir), FILE_NAME)


def write(path: str, functions: list[FunctionConfig], broken: list[BrokenFunction]) -> None:
    """Write the snapshot (replacing any former one at once, so a reader never sees half)."""
    blob = json.dumps({"functions": [dataclasses.asdict(fn) for fn in functions],
                       "broken": [dataclasses.asdict(b) for b in broken]}).encode()
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{FILE_NAME}.", dir=folder)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def read(path: str) -> tuple[list[FunctionConfig], list[BrokenFunction]]:
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read())
        return ([function_from_entry(entry) for entry in data["functions"]],
                [BrokenFunction(**entry) for entry in data["broken"]])
    except FileNotFoundError:
        raise ConfigError(path, ["expected the functions' configs written by the supervisor "
                                 "at its start (start Sora with sora-supervisor), got no "
                                 "file"]) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(path, [f"expected the functions' configs written by the supervisor, "
                                 f"got an unreadable file ({exc})"]) from None


def load_host_config_of_child(config_path: str) -> HostConfig:
    """A child's view of the host: host-config.yaml (the operator's, out of every sandbox's
    reach), and the functions from the supervisor's snapshot rather than their folders."""
    config = load_host_config(config_path, read_functions=False)
    functions, broken = read(snapshot_path(config.stateDir))
    return dataclasses.replace(config, functions=functions, broken=broken)


def function_from_entry(entry: dict) -> FunctionConfig:
    """A FunctionConfig from its snapshot entry (`dataclasses.asdict`), as written here or sent
    by a joined host in its MEMBERS (sora.function_table)."""
    entry = dict(entry)
    entry["eventInvoke"] = EventInvokeConfig(**entry["eventInvoke"])
    entry["secrets"] = tuple(SecretSpec(**spec) for spec in entry["secrets"])
    entry["trigger"] = tuple(trigger_from_dict(t) for t in entry["trigger"])
    return FunctionConfig(**entry)
