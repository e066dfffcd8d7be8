"""Live reload: the arbiter's part (docs/architecture.md, "Live reload").

`Arbiter.reload(only, setup, done)` reads host-config.yaml and every function again, decides
per function (reload_plan.py) and acts:

- added: a new generation starts (setup, then its workers, which load the module and answer
  one warm-up call before READY: `--warm-up`, sora/worker/warmup.py); it joins the served
  functions when every worker is RUNNING.
- removed: its workers are told to stop (SIGTERM: each says DISCONNECT to its clients and the
  control plane, answers what it holds, exits); the control plane lists the function as
  `removed` while they drain, so new calls are not found (404) and calls in flight finish.
- changed (its sora.yaml entry or its folder): a rolling switch. Setup (cached by content hash,
  or as `setup` says), then a new generation of workers with `--warm-up`; once all of them
  are RUNNING (the control plane has their READY, clients are told in MEMBERS) the previous
  generation is drained as above. Until then the previous generation serves alone.
- a new sora.yaml that cannot be read, a setup that fails, a new generation that cannot boot
  (the module throws at load, or the warm-up call times out or ends the runtime: a boot
  error): the switch fails, the previous generation keeps serving, and the failure is in
  the reload's answer, in /healthz (`reload` of the function, and its reason, which `sora ls`
  shows) and in the log.

Host-level settings: those in `reload_plan.LIVE_HOST_SETTINGS` are applied by a SIGHUP to the
gateways' gunicorn masters (new workers read the host config again, then the old ones stop
gracefully), as is a renewed TLS certificate or key at the same paths; any other change is
reported in `needsRestart` and logged.

The answer (`done(report)`) comes once every switch the reload started has finished or failed:
`{"functions": {name: {"action": "added"|"removed"|"replaced"|"unchanged"|"failed",
"reason"?}}, "needsRestart": [...], "errors": [...]}`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from typing import Callable

from .. import config_snapshot
from ..config import BrokenFunction, ConfigError, FunctionConfig, load_host_config
from ..control import admin
from ..isolation import secrets
from ..setup.run import SetupRun
from . import reload_plan as plan
from .child import State, Supervised

log = logging.getLogger("sora.supervisor")

SETUP_MODES = ("auto", "skip", "force")
ADDED, REMOVED, REPLACED, UNCHANGED, FAILED = "added", "removed", "replaced", "unchanged", \
    "failed"


@dataclass
class Switch:
    """A function's next generation on its way: its setup, then its workers."""
    fn: FunctionConfig
    generation: int
    adding: bool                      # a new function (no previous generation)
    workers: list[Supervised]
    setup: SetupRun | None = None
    planned: str = ""        # the folder's fingerprint when the switch began
    fingerprint: str = ""    # after its setup: what later reloads compare with
    started: float = field(default_factory=time.time)


@dataclass
class PendingReload:
    """A reload whose answer waits for the switches it started."""
    report: dict
    waiting: set[str]
    done: Callable[[dict], None] | None


class Reloading:
    """Mixed into the Arbiter (which provides config, workers, setups, plane, ...)."""

    def init_reloading(self) -> None:
        self.generations: dict[str, int] = {fn.name: 1 for fn in self.config.functions}
        # Each function's folder fingerprint when its generation's workers were started.
        self.fingerprints: dict[str, str] = {}
        self.switches: dict[str, Switch] = {}
        self.draining: list[Supervised] = []   # replaced or removed generations' workers
        self.removing: set[str] = set()       # removed functions whose workers still drain
        self.reload_states: dict[str, dict] = {}   # the last reload of each function
        self.reloads: list[PendingReload] = []
        self._removed_configs: dict[str, FunctionConfig] = {}   # of `removing`
        self.cert_digest = self.certificate_digest()
        self.admin_ops: dict[str, Callable[[dict, Callable[[dict], None]], None]] = {
            admin.OP_RELOAD: self.admin_reload}

    # --- the admin channel ----------------------------------------------------------------------
    def handle_admin(self, request: admin.AdminRequest) -> None:
        def reply(answer: dict) -> None:
            self.plane.control.answer_admin(request, answer)
        op = self.admin_ops.get(request.op)
        if op is None:
            reply(admin.error("InvalidParameterValueException",
                              f"unknown op {request.op!r} (expected one of: "
                              f"{', '.join(sorted(self.admin_ops))})"))
            return
        try:
            op(request.args, reply)
        except Exception as exc:  # noqa: BLE001 - an op's bug must not end the supervisor
            log.exception("admin op %s failed", request.op)
            reply(admin.error("ServiceException", f"{request.op} failed: {exc}"))

    def admin_reload(self, args: dict, reply: Callable[[dict], None]) -> None:
        functions, setup = args.get("functions"), args.get("setup", "auto")
        if functions is not None and (not isinstance(functions, list) or
                                      not all(isinstance(n, str) for n in functions)):
            reply(admin.error("InvalidParameterValueException",
                              "functions: expected a list of function names or null"))
            return
        if setup not in SETUP_MODES:
            reply(admin.error("InvalidParameterValueException",
                              f"setup: expected one of {', '.join(SETUP_MODES)}, got {setup!r}"))
            return
        self.reload(set(functions) if functions is not None else None, setup, reply)

    def handle_sighup(self) -> None:
        log.info("SIGHUP: reloading the configuration and every function")
        self.reload(None, "auto", None)

    # --- reload ---------------------------------------------------------------------------------
    def reload(self, only: set[str] | None = None, setup: str = "auto",
               done: Callable[[dict], None] | None = None) -> None:
        """Read the host config and every function again and act on what changed (see the
        module docstring); `done(report)` once every switch it started is over."""
        report: dict = {"functions": {}, "needsRestart": [], "errors": []}
        if self.stopping:
            report["errors"].append("the host is stopping")
            return self._answer(report, done)
        try:
            new = load_host_config(self.config.path)
        except ConfigError as exc:
            log.error("reload: %s; nothing changed", exc)
            report["errors"].append(str(exc))
            return self._answer(report, done)
        if only is None:
            self.apply_host_settings(new, report)
        serving = {fn.name: fn for fn in self.config.functions}
        broken_before = {b.name: b.reason for b in self.config.broken}
        plans = plan.plan_functions(serving, self.fingerprints, broken_before, new, only)
        if only is not None:
            for name in sorted(only - plans.keys()):
                report["functions"][name] = {"action": FAILED, "reason": (
                    f"{self.config.path}: no function named {name!r} in functionPaths")}
        # Every switch is waited for before any starts: one may fail at once (its setup
        # cannot start), which must not answer the reload before the others are under way.
        pending = PendingReload(report, set(), done)
        starts = []
        new_broken = {b.name: b for b in new.broken}
        for name, item in plans.items():
            if item.action in (plan.ADD, plan.SWITCH):
                pending.waiting.add(name)
                if not self.joins_switch(item.config, setup):   # else: that one does this
                    starts.append(item)
            elif item.action == plan.REMOVE:
                self.remove_function(name)
                report["functions"][name] = {"action": REMOVED}
            elif item.action == plan.FAIL:
                if name in serving:
                    self.note_failed(name, item.reason)
                else:   # a new or newly broken folder: listed as broken, as at start
                    self.set_broken(new_broken[name])
                report["functions"][name] = {"action": FAILED, "reason": item.reason}
            else:
                if name in serving and self.reload_states.get(name, {}).get("state") == \
                        "failed" and name not in self.switches:
                    # Back to what serves: the failure is over.
                    self.reload_states.pop(name, None)
                report["functions"][name] = {"action": UNCHANGED}
        if only is None:   # broken before, fine or gone now
            keep = {b.name for b in new.broken} | {fn.name for fn in new.functions}
            self.config = dataclasses.replace(
                self.config, broken=[b for b in self.config.broken if b.name in keep])
        if not pending.waiting:
            self.write_snapshot()
            return self._answer(report, done)
        for item in starts:   # before this reload waits: their reloads are told, not it
            if item.config.name in self.switches:
                self.cancel_switch(item.config.name, "superseded by a later reload")
        self.reloads.append(pending)
        for item in starts:
            self.begin_switch(item.config, setup, adding=item.action == plan.ADD,
                              why=item.reason)
        self.write_snapshot()

    def _answer(self, report: dict, done: Callable[[dict], None] | None) -> None:
        # The clients' view first: once the answer is out, an added function is called, a
        # removed one is not found, and a replaced one's new generation takes the calls.
        if self.plane is not None:
            self.publish()
        failed = {n: f for n, f in report["functions"].items() if f["action"] == FAILED}
        changed = {n: f["action"] for n, f in report["functions"].items()
                   if f["action"] != UNCHANGED}
        log.log(logging.ERROR if failed or report["errors"] else logging.INFO,
                "reload done: %s%s%s%s", ", ".join(f"{n} {a}" for n, a in changed.items())
                or "nothing changed",
                "".join(f"; {n} failed: {f.get('reason')}" for n, f in failed.items()),
                f"; needs a restart: {', '.join(report['needsRestart'])}"
                if report["needsRestart"] else "",
                "".join(f"; {e}" for e in report["errors"]))
        if done is not None:
            done(report)

    def finish_function(self, name: str, action: str, reason: str = "") -> None:
        """A switch is over: tell the reloads that wait for it."""
        for pending in list(self.reloads):
            if name not in pending.waiting:
                continue
            entry = {"action": action}
            if reason:
                entry["reason"] = reason
            pending.report["functions"][name] = entry
            pending.waiting.discard(name)
            if not pending.waiting:
                self.reloads.remove(pending)
                self._answer(pending.report, pending.done)

    # --- host-level settings --------------------------------------------------------------------
    def certificate_digest(self) -> str:
        server = self.config.server
        return plan.files_digest([server.sslCertPath, server.sslKeyPath]) \
            if server.httpsPort is not None else ""

    def apply_host_settings(self, new, report: dict) -> None:
        live, restart = plan.host_changes(self.config, new)
        report["needsRestart"] = restart
        if restart:
            log.warning("reload: %s changed; these take effect at the next restart of the "
                        "host", ", ".join(restart))
        if live:
            server = dataclasses.replace(self.config.server, **{
                k.split(".", 1)[1]: getattr(new.server, k.split(".", 1)[1])
                for k in live if k.startswith("server.")})
            self.config = dataclasses.replace(self.config, server=server,
                                              apiKeys=new.apiKeys)
        digest = self.certificate_digest()
        renewed = digest != self.cert_digest
        self.cert_digest = digest
        for name, gateway in self.gateways.items():
            if (live or (renewed and name == "https")) and gateway.pid is not None:
                # gunicorn starts new workers (which read the host config and load the
                # certificate again) and stops the old ones gracefully.
                log.info("reload: %s gateway re-reads %s", name, ", ".join(
                    [*live, *(["the TLS certificate"] if renewed and name == "https"
                              else [])]))
                try:
                    os.kill(gateway.proc.pid, signal.SIGHUP)
                except ProcessLookupError:
                    pass

    # --- generations ----------------------------------------------------------------------------
    def joins_switch(self, fn: FunctionConfig, setup: str) -> bool:
        """Whether the switch under way for `fn` (if any) is for this very config and folder:
        then a second reload waits for it rather than starting it over."""
        switch = self.switches.get(fn.name)
        return switch is not None and setup != "force" and switch.fn == fn and \
            switch.planned == plan.fingerprint(fn.directory, fn.data_dirs)

    def begin_switch(self, fn: FunctionConfig, setup: str, adding: bool, why: str) -> None:
        name = fn.name
        if name in self.switches:
            self.cancel_switch(name, "superseded by a later reload")
        if name in self.setups:   # the first generation's setup: the new one replaces it
            self.setups.pop(name).kill()
            for worker in self.workers_of(name):
                if worker.state is State.SETUP:
                    worker.to(State.STOPPED, "replaced by a reload before its setup ended")
        generation = self.generations.get(name, 0) + 1
        self.generations[name] = generation
        workers = []
        for number in range(1, fn.workers + 1):
            key = name if number == 1 else f"{name}#{number}"
            worker = Supervised(key, "worker", self.worker_launch(fn, warm_up=True),
                                state=State.SETUP)
            worker.generation = generation
            workers.append(worker)
        switch = self.switches[name] = Switch(fn, generation, adding, workers,
                                              planned=plan.fingerprint(fn.directory, fn.data_dirs))
        log.info("reload: function %s %s (%s): starting generation %d", name,
                 "added" if adding else "changed", why, generation)
        self.reload_states[name] = {"state": "starting", "generation": generation,
                                    "since": time.time(), "why": why}
        if (path := secrets.sandboxed_dir(self.state_dir, fn)) is not None:
            secrets.prepare_sandboxed_dir(path, fn)
        if setup != "skip":
            run = SetupRun(fn, self.state_dir, force=setup == "force" or
                           fn.coldStart == "always-setup",
                           withheld=secrets.declared_env_names(
                               [*self.config.functions, fn]),
                           docker_socket=self.config.server.docker.socket)
            switch.setup = run
            try:
                run.start()
            except OSError as exc:
                run.outcome = None
                self.fail_switch(name, f"setup could not start: {exc}")

    def step_switches(self, now: float) -> None:
        for name, switch in list(self.switches.items()):
            if switch.workers[0].state is State.SETUP:
                if switch.setup is not None:
                    outcome = switch.setup.poll()
                    if outcome is None:
                        continue
                    self._last_exit_at = now   # its stragglers may be re-parented to us
                    if not outcome.ok:
                        self.fail_switch(name, f"setup failed: {outcome.reason}")
                        continue
                switch.fingerprint = plan.fingerprint(switch.fn.directory, switch.fn.data_dirs)
                for worker in switch.workers:
                    worker.spawn(now)
                continue
            fatal = next((w for w in switch.workers if w.state is State.FATAL), None)
            if fatal is not None:
                # A new generation gets no second try (start_retries=1): "; gave up after 1
                # failures in a row" would only be noise in the reason.
                self.fail_switch(name, fatal.reason.split("; gave up after ")[0])
            elif all(w.state is State.RUNNING for w in switch.workers):
                self.promote(name)

    def promote(self, name: str) -> None:
        """The new generation serves: it takes the function's place, the previous one
        drains."""
        switch = self.switches.pop(name)
        fn = switch.fn
        for old in self.workers_of(name):
            del self.workers[old.name]
            self.retire(old, f"replaced by generation {switch.generation} (reload)")
        for worker in switch.workers:
            worker.launch = self.worker_launch(fn)   # later restarts: as any worker's
            self.workers[worker.name] = worker
        functions = [f for f in self.config.functions if f.name != name]
        index = next((i for i, f in enumerate(self.config.functions) if f.name == name),
                     len(functions))
        functions.insert(index, fn)
        self.config = dataclasses.replace(
            self.config, functions=functions,
            broken=[b for b in self.config.broken if b.name != name])
        self.configs[name] = dataclasses.asdict(fn)
        self.fingerprints[name] = switch.fingerprint
        self.reload_states[name] = {"state": "done", "generation": switch.generation,
                                    "since": time.time()}
        log.info("reload: function %s: generation %d serves%s", name, switch.generation,
                 "" if switch.adding else "; the previous one drains")
        self.write_snapshot()
        self.finish_function(name, ADDED if switch.adding else REPLACED)

    def fail_switch(self, name: str, reason: str) -> None:
        switch = self.switches.pop(name)
        if switch.setup is not None:
            switch.setup.kill()
        for worker in switch.workers:
            self.retire(worker, "its generation failed to start")
        if switch.adding:
            self.reload_states[name] = {"state": "failed", "reason": reason,
                                        "generation": switch.generation,
                                        "since": time.time(), "serving": "none"}
            self.set_broken_reason(switch.fn, reason)
        else:
            self.note_failed(name, reason)
        self.write_snapshot()
        self.finish_function(name, FAILED, reason)

    def cancel_switch(self, name: str, why: str) -> None:
        switch = self.switches.pop(name)
        if switch.setup is not None:
            switch.setup.kill()
        for worker in switch.workers:
            self.retire(worker, why)
        self.finish_function(name, FAILED, why)

    def note_failed(self, name: str, reason: str) -> None:
        """A reload of a serving function failed: the previous generation keeps serving."""
        log.error("reload: function %s: %s; the previous code keeps serving", name, reason)
        self.reload_states[name] = {"state": "failed", "reason": reason,
                                    "serving": "previous",
                                    "generation": self.generations.get(name, 1),
                                    "since": time.time()}

    def set_broken(self, broken) -> None:
        self.config = dataclasses.replace(
            self.config, broken=[*(b for b in self.config.broken if b.name != broken.name),
                                 broken])

    def set_broken_reason(self, fn: FunctionConfig, reason: str) -> None:
        self.set_broken(BrokenFunction(fn.name, fn.directory, reason))

    def remove_function(self, name: str) -> None:
        if name in self.switches:
            self.cancel_switch(name, "the function was removed")
        if name in self.setups:
            self.setups.pop(name).kill()
        for worker in self.workers_of(name):
            del self.workers[worker.name]
            self.retire(worker, "its function was removed (reload)")
        fn = next(f for f in self.config.functions if f.name == name)
        self.config = dataclasses.replace(
            self.config, functions=[f for f in self.config.functions if f.name != name])
        self.configs.pop(name, None)
        self.fingerprints.pop(name, None)
        self.reload_states.pop(name, None)
        if any(w for w in self.draining if function_of(w) == name):
            self.removing.add(name)
        self._removed_configs[name] = fn
        log.info("reload: function %s removed; its workers finish what they hold", name)

    def retire(self, worker: Supervised, why: str) -> None:
        """Stop a worker gracefully (SIGTERM: DISCONNECT, finish what it holds, exit)."""
        if worker.pid is not None and worker.state in (State.STARTING, State.RUNNING):
            worker.to(State.STOPPING, why)
            worker.stop_deadline = time.monotonic() + self.config.server.gracefulTimeout
            try:
                os.kill(worker.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.draining.append(worker)
        elif worker.state in (State.SETUP, State.BACKOFF):
            worker.to(State.STOPPED, why)

    def step_draining(self, now: float) -> None:
        for worker in list(self.draining):
            if worker.pid is None:
                self.draining.remove(worker)
            elif now >= worker.stop_deadline:
                log.warning("worker %s (pid %d) did not finish within %.0fs; killing it",
                            worker.name, worker.pid, self.config.server.gracefulTimeout)
                worker.signal(signal.SIGKILL)
        for name in list(self.removing):
            if not any(function_of(w) == name for w in self.draining):
                self.removing.discard(name)
                fn = self._removed_configs.pop(name, None)
                if fn is not None and name not in {f.name for f in self.config.functions} \
                        and (path := secrets.sandboxed_dir(self.state_dir, fn)) is not None:
                    shutil.rmtree(path, ignore_errors=True)

    def worker_children(self) -> list[Supervised]:
        """Every worker process: the serving generations', the next ones', the draining."""
        return [*self.workers.values(),
                *(w for s in self.switches.values() for w in s.workers), *self.draining]

    def write_snapshot(self) -> None:
        """The configs the children read: what serves, with each switch's new config in its
        place (the new generation's workers read it at their start)."""
        functions = {fn.name: fn for fn in self.config.functions}
        for name, switch in self.switches.items():
            functions[name] = switch.fn
        config_snapshot.write(config_snapshot.snapshot_path(self.state_dir),
                              list(functions.values()), self.config.broken)

    # --- what health shows ----------------------------------------------------------------------
    def reload_status(self, name: str, info: dict) -> None:
        """Add the function's reload state to its health entry (and to the reason `sora ls`
        shows when the last reload failed)."""
        state = self.reload_states.get(name)
        switch = self.switches.get(name)
        if switch is not None:
            worker = switch.workers[0]
            state = {**(state or {}), "state": "switching", "newState": worker.state.value,
                     "newReason": worker.reason}
        if state is not None:
            info["reload"] = state
            if state.get("state") == "failed" and state.get("serving") == "previous":
                info["reason"] = (f"reload failed ({state['reason']}); the previous code "
                                  f"serves")
        info["generation"] = self.generations.get(name, 1)
        draining = [w for w in self.draining if function_of(w) == name]
        if draining:
            info["draining"] = [{"pid": w.pid, "generation": getattr(w, "generation", 1),
                                 "reason": w.reason} for w in draining]


def function_of(worker: Supervised) -> str:
    """The function a worker serves (its key without the "#n" of a second or later one)."""
    return worker.name.partition("#")[0]
