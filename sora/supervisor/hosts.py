"""This host's part in a cluster (design: docs/architecture.md, "Several hosts").

The main host (`cluster.listen`) runs `JoinedHosts`: the cluster listener, whose callbacks (on
the listener's thread) check what each joined host says it serves (`checked_members`) and
queue it for the arbiter's loop, which hands it to the control plane (`forward`: the plane's
ControlHandle belongs to the arbiter's thread). A joined host (`sora-supervisor join`) runs an
Uplink fed by its own control plane (`ControlPlane(on_local=uplink.set_members)`).

What a joined host sends is trusted as far as its CURVE key is: its functions' configs are its
operator's, as the main host's are. What it cannot be trusted with is who it is: each worker's
`host` and `serverKey` are set here from the name it joined under and the key it authenticated
with (never from its JSON), and only tcp endpoints are kept (an `ipc://` path would point the
main host's gateways at a socket of the main host's own).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import queue
import typing
from typing import Callable

from .. import config_snapshot
from ..cluster.link import ClusterListener, listener_for
from ..config import FUNCTION_NAME_RE, TCP_ENDPOINT_RE, ClusterConfig, FunctionConfig

log = logging.getLogger("sora.supervisor.hosts")

MAX_REASON = 2000
_FIELDS = frozenset(f.name for f in dataclasses.fields(FunctionConfig))
# The plain fields' types: a dataclass does not check them, and the main host's gateways
# compute with them (a `timeout` that is text would fail every call of the function there).
_PLAIN = {name: kind for name, kind in typing.get_type_hints(FunctionConfig).items()
          if kind in (str, int, float, bool)}


def checked_members(host: str, members: dict, key: str) -> dict:
    """A joined host's members as the control plane takes them: {function: {"available",
    "reason", "maxQueued", "maxWait", "state", "instances", "inFlight", "busy", "idle",
    "starting", "queued", "config"?,
    "workers": [{"id", "endpoint", "host", "serverKey"}]}}, each worker's host and serverKey
    being `host` and `key` (the name it joined under, the key it authenticated with).
    Entries that are not what they should be are left out, and logged."""
    out: dict[str, dict] = {}
    for name, info in members.items():
        if not isinstance(name, str) or not FUNCTION_NAME_RE.match(name) or \
                not isinstance(info, dict):
            log.warning("host %s: ignored a function entry %r (not a function name with an "
                        "object)", host, str(name)[:80])
            continue
        entry = {"available": info.get("available", True) is True,
                 "reason": str(info.get("reason") or "")[:MAX_REASON],
                 "maxQueued": _number(info.get("maxQueued"), int, 100),
                 "maxWait": _number(info.get("maxWait"), float, 3.0),
                 "state": str(info.get("state") or ""),
                 "instances": _number(info.get("instances"), int, 0),
                 "inFlight": _number(info.get("inFlight"), int, 0),
                 **{key: _number(info.get(key), int, 0)
                    for key in ("busy", "idle", "starting", "queued")},
                 "workers": []}
        config = info.get("config")
        if config is not None:
            problem = _config_problem(name, config)
            if problem:
                log.warning("host %s: the config it sent for %s cannot be used: %s", host,
                            name, problem)
                entry.update(available=False, reason=f"its config from host {host} cannot "
                             f"be used: {problem}")
            else:
                entry["config"] = config
        for worker in info.get("workers") or []:
            checked = _worker(host, name, worker, key)
            if checked is not None:
                entry["workers"].append(checked)
        out[name] = entry
    return out


def _worker(host: str, function: str, worker, key: str) -> dict | None:
    if not isinstance(worker, dict):
        return None
    endpoint, identity = worker.get("endpoint"), worker.get("id")
    if not isinstance(identity, str) or not identity.startswith(function + "/"):
        log.warning("host %s: ignored a worker of %s with id %r", host, function,
                    str(identity)[:80])
        return None
    if not isinstance(endpoint, str) or not TCP_ENDPOINT_RE.match(endpoint):
        log.warning("host %s: ignored worker %s at %r (expected a tcp://HOST:PORT endpoint)",
                    host, identity, str(endpoint)[:120])
        return None
    said = worker.get("serverKey")
    if said is not None and said != key:
        log.warning("host %s: worker %s names serverKey %s, but the host authenticated with "
                    "%s; using the latter", host, identity, str(said)[:40], key)
    return {"id": identity, "endpoint": endpoint, "host": host, "serverKey": key}


def _config_problem(name: str, config) -> str:
    if not isinstance(config, dict):
        return "not an object"
    if config.get("name") != name:
        return f"it names function {config.get('name')!r}"
    try:
        # Fields this version does not know (a joined host running a newer Sora) are left
        # to the clients, which read what they know.
        config_snapshot.function_from_entry({k: v for k, v in config.items() if k in _FIELDS})
    except (TypeError, KeyError, ValueError) as exc:
        return f"not a function's config ({exc})"
    for field, kind in _PLAIN.items():
        value = config.get(field)
        if field not in config or (kind is float and isinstance(value, int)):
            ok = True
        else:
            ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if ok and kind in (int, float) and isinstance(value, (int, float)):
            ok = math.isfinite(value) and value >= 0
        if not ok:
            return f"{field}: expected a {kind.__name__} (a number not below 0), got {value!r}"[:200]
    directory = config.get("directory")
    if not (isinstance(directory, str) and directory.startswith("/") and directory != "/"):
        return f"directory: expected an absolute path of a folder, got {directory!r}"[:200]
    return ""


def _number(value, kind, default):
    # Not finite: JSON's 1e999 is inf, which int() cannot take.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or \
            not math.isfinite(value):
        return default
    return kind(value)


class JoinedHosts:
    """The main host's listener for joins, feeding the control plane through the arbiter."""

    def __init__(self, cluster: ClusterConfig, wake: Callable[[], None]):
        self.local_name = cluster.name
        self.wake = wake
        self.updates: queue.Queue[tuple] = queue.Queue()
        self.listener: ClusterListener = listener_for(cluster, self._on_members,
                                                      self._on_lost)

    def start(self) -> None:
        self.listener.start()   # a bind error raises here

    def stop(self) -> None:
        self.listener.stop()

    def heard(self) -> dict[str, float]:
        """Joined host -> time.time() it was last heard (for status)."""
        return {h["name"]: h["lastHeard"] for h in self.listener.hosts()}

    def forward(self, control) -> None:
        """On the arbiter's thread: hand what the listener queued to the control plane."""
        while True:
            try:
                update = self.updates.get_nowait()
            except queue.Empty:
                return
            if update[0] == "set":
                control.set_remote(update[1], update[2], update[3])
            else:
                control.drop_remote(update[1])

    # --- the listener's thread ------------------------------------------------------------------
    def _on_members(self, name: str, members: dict) -> None:
        if name == self.local_name:
            log.error("a host joined under this host's own name %r; its functions are "
                      "ignored (give it another cluster.name)", name)
            return
        key = self.listener.host_key(name)
        if key is None:
            return   # dropped meanwhile
        address = next((h["address"] for h in self.listener.hosts() if h["name"] == name),
                       None)
        self.updates.put(("set", name, checked_members(name, members, key), address))
        self.wake()

    def _on_lost(self, name: str, why: str) -> None:
        self.updates.put(("drop", name))
        self.wake()
