"""The functions a client process (a gateway, the dispatcher) serves calls for: this host's own
(its config snapshot at the process's start, then the configs MEMBERS carries for them) and
those only joined hosts serve (their configs, from MEMBERS).

This host's functions change with a reload (issue 17): the control plane's MEMBERS carries
every function's config (`local: true` for this host's), so an added function is known, a
changed one's auth, timeout and event settings apply, and one marked `removed` is not found
(404), without restarting the gateways or the dispatcher. A local entry without a config is a
broken function (known, 503).

A function served only by a joined host is known to the main host through the control plane's
MEMBERS, which carries its config as that host's supervisor read it (its config snapshot entry,
`dataclasses.asdict(FunctionConfig)`: the operator's sora.yaml on that host, trusted like the
host itself once CURVE authenticated it). The gateways take its auth (`auth: none` is public),
its event caps and call waits from there, the dispatcher its eventInvoke settings, and the
records API accepts its name (its records and logs come to this host's store over tcp).

A function both local and remote runs by the local config. A remote function's config is kept
after its hosts leave MEMBERS (lost, restarting): its queued events wait for it rather than
being dead-lettered as a function that never existed, and its callers get a 503 with
Retry-After, not a 404.

Lookups of names this host does not have wait (once per process, FIRST_MEMBERS_WAIT at most)
for the first MEMBERS, so that the first call of a remote function after a gateway started is
not refused for want of news.
"""
from __future__ import annotations

import dataclasses
import logging

from .config import BrokenFunction, FunctionConfig, HostConfig
from .config_snapshot import function_from_entry
from .messaging.client import BROKER_SLACK, FIRST_MEMBERS_WAIT

log = logging.getLogger("sora.functions")

_FIELDS = frozenset(f.name for f in dataclasses.fields(FunctionConfig))


def call_wait(fn: FunctionConfig | None) -> float:
    """How long a caller waits for an invocation's answer: the invocation may first wait for
    capacity for up to the function's timeout, then run for up to the timeout."""
    return BROKER_SLACK if fn is None else fn.timeout * 2 + BROKER_SLACK


class FunctionTable:
    def __init__(self, config: HostConfig, client=None):
        """`client`: the process's InvocationClient, whose MEMBERS feed the remote configs
        (None: this host's functions only)."""
        self.config = config
        self.local: dict[str, FunctionConfig] = {fn.name: fn for fn in config.functions}
        self.broken = {b.name: b for b in config.broken}
        # Functions only other hosts serve, by the config they sent (kept once seen).
        self.remote: dict[str, FunctionConfig] = {}
        self._entries: dict[str, dict] = {}   # as received, to skip unchanged ones
        self._local_entries: dict[str, dict] = {}   # this host's, likewise
        self._refused: set[str] = set()       # unreadable configs, logged once each
        self.version = 0                      # changes whenever `remote` does
        self._waits = {name: call_wait(fn) for name, fn in self.local.items()}
        self.client = client
        if client is not None:
            client.add_members_listener(self.update)

    # --- MEMBERS ----------------------------------------------------------------------------
    def update(self, members: dict) -> None:
        """Take this host's functions as MEMBERS lists them (added, changed, removed, broken),
        and the configs of the functions only other hosts serve."""
        listed = members.get("functions", {})
        for name, spec in listed.items():
            if spec.get("local"):
                self._update_local(name, spec)
                continue
            if name in self.local:
                continue
            entry = spec.get("config")
            if entry is None:   # on a worker, if its host put it there
                entry = next((w["config"] for w in spec.get("workers", ())
                              if isinstance(w.get("config"), dict)), None)
            if not isinstance(entry, dict) or entry == self._entries.get(name):
                continue
            try:
                fn = function_from_entry({k: v for k, v in entry.items() if k in _FIELDS})
                if fn.name != name:
                    raise ValueError(f"it names function {fn.name!r}")
            except (TypeError, ValueError, KeyError) as exc:
                if name not in self._refused:
                    self._refused.add(name)
                    log.error("the config another host sent for function %s cannot be used "
                              "(%s): its calls get this host's defaults, and it is not public",
                              name, exc)
                continue
            self._refused.discard(name)
            self._entries[name] = entry
            self.remote[name] = fn
            self._waits[name] = call_wait(fn)
            self.version += 1

        if any(spec.get("local") for spec in listed.values()):
            # A control plane that lists this host's functions: one it no longer lists is gone.
            for name in [n for n in self.local if n not in listed]:
                self._forget_local(name)

    def _update_local(self, name: str, spec: dict) -> None:
        if spec.get("removed"):
            self._forget_local(name)
            self.broken.pop(name, None)
            return
        entry = spec.get("config")
        if not isinstance(entry, dict):
            if not spec.get("available", True) and name not in self.local:
                self.broken[name] = BrokenFunction(name, "", spec.get("reason", ""))
            return
        if entry == self._local_entries.get(name):
            return
        try:
            fn = function_from_entry({k: v for k, v in entry.items() if k in _FIELDS})
        except (TypeError, ValueError, KeyError) as exc:
            log.error("the control plane's config for function %s cannot be used (%s)", name,
                      exc)
            return
        self._local_entries[name] = entry
        self.broken.pop(name, None)
        if self.local.get(name) != fn:
            self.local[name] = fn
            self._waits[name] = call_wait(fn)
            self.version += 1

    def _forget_local(self, name: str) -> None:
        if self.local.pop(name, None) is not None:
            self._local_entries.pop(name, None)
            self._waits.pop(name, None)
            self.version += 1

    # --- lookups ----------------------------------------------------------------------------
    def get(self, name: str) -> FunctionConfig | None:
        """The function's config: this host's own, else the one another host sent."""
        fn = self.local.get(name)
        return fn if fn is not None else self.remote.get(name)

    def knows(self, name: str) -> bool:
        """Known here: a function of this host (serving or broken) or of a joined host."""
        return name in self.local or name in self.remote or name in self.broken

    def is_remote(self, name: str) -> bool:
        return name not in self.local and name in self.remote

    def is_public(self, name: str | None) -> bool:
        """`auth: none`: its function URL is open to all."""
        fn = self.get(name) if name else None
        return fn is not None and fn.auth == "none"

    def wait(self, name: str) -> float:
        return self._waits.get(name, BROKER_SLACK)

    def event_caps(self, name: str) -> tuple[int, int] | None:
        """(most events stored, most payload bytes stored) for the function's queue."""
        fn = self.get(name)
        if fn is None:
            return None
        return fn.eventInvoke.maxQueuedEvents, fn.eventInvoke.maxQueuedMB << 20

    def names(self) -> list[str]:
        """Every function calls may be made for: this host's, then the remote ones."""
        return [*self.local, *(name for name in self.remote if name not in self.local)]

    def functions(self) -> list[FunctionConfig]:
        return [self.get(name) for name in self.names()]

    async def settled(self, name: str | None) -> None:
        """Before answering about a name this host does not have: wait for the first MEMBERS
        (once per process), which may bring it from a joined host."""
        if (name and name not in self.local and name not in self.remote
                and name not in self.broken and self.client is not None):
            await self.client.members_known(FIRST_MEMBERS_WAIT)

    async def lookup(self, name: str) -> FunctionConfig | None:
        await self.settled(name)
        return self.get(name)

    async def known(self, name: str) -> bool:
        await self.settled(name)
        return self.knows(name)
