"""The arbiter: the supervisor's main loop (after gunicorn's arbiter).

It binds the listeners' ports first (listeners.py: a taken port fails the start at once), runs
each function's setup, spawns one worker per function and one gunicorn master per listener
(HTTP, HTTPS) on the socket it bound, restarts what exits with backoff, parks what keeps
failing as FATAL, and stops everything cleanly. Signal handlers only queue the signal; the loop
wakes on a pipe (signal.set_wakeup_fd), handles queued signals by name, reaps children, then
manages the rest. Once the gateways answer it announces "Sora is serving", then each
function's way to ready (progress.py).

`sora-supervisor join` runs the same arbiter as a joined host (`joining`): no listeners,
gateways, dispatcher or recorder; its workers serve on tcp (CURVE) at `cluster.advertise` and
send their records to the main host, and an Uplink tells the main host what it serves
(hosts.py). A main host with `cluster.listen` also takes joins there (hosts.JoinedHosts).

The supervisor is a child subreaper: a process that a dying worker or runtime leaves behind is
re-parented here, and the loop kills and reaps it, so nothing outlives its function.
"""
from __future__ import annotations

import ctypes
import dataclasses
import fcntl
import json
import logging
import os
import select
import shutil
import signal
import socket
import sys
import time

import psutil
import zmq

from .. import protocol as p
from .. import config_snapshot
from ..metrics import registry as metrics_registry
from ..config import FunctionConfig, HostConfig
from ..hotpath import quiet_gc
from ..protocol import events_socket
from ..store import backend as store_backend
from ..store.recorder import records_socket
from ..triggers import control as triggers_control
from ..config import ConfigError
from ..runtimes import runtime_for
from ..isolation import cgroups, sandbox, secrets
from ..isolation.secrets import remove_leftovers as remove_secret_files
from ..containers import channel
from ..control.plane import ControlPlane
from ..cluster.keys import load_keys
from ..cluster.link import Uplink, uplink_for
from .hosts import JoinedHosts
from . import listeners
from .child import Launch, State, Supervised, describe_exit
from .container_sweeps import ContainerSweeps
from .progress import FunctionProgress, StartupProgress
from .reload_plan import fingerprint
from .reloading import Reloading, function_of
from .watch import Watcher, folders_of
from ..runtimes.pool import RuntimePool
from ..setup.run import SetupRun
from ..versions.qualifier import data_key, split_key
from .versions import Versions

log = logging.getLogger("sora.supervisor")

_PR_SET_CHILD_SUBREAPER = 36
WORKER_START_RETRIES = 3
GATEWAY_START_RETRIES = 3
EXIT_GATEWAY_FATAL = 1
# Orphans found this soon after one of our children exited (or while stopping) are what that
# child left (a dead worker's runtimes, a gateway's workers): expected, logged at debug.
ORPHANS_EXPECTED_FOR = 10.0


class StateDirBusy(Exception):
    """Another supervisor holds the state dir."""


class Arbiter(Reloading):
    def __init__(self, config: HostConfig, joining: bool = False, watch: bool = False):
        self.config = config
        # The operator's secrets are no sandbox's to read, wherever they lie (sandbox.hide).
        sandbox.hide([config.path, config.server.sslKeyPath, config.cluster.keys])
        # A joined host (`sora-supervisor join`): workers only, serving the main host.
        self.joining = joining
        self.joined_hosts: JoinedHosts | None = None   # the main host's, with cluster.listen
        self.uplink: Uplink | None = None               # a joined host's link to the main one
        # Each function's config as its snapshot entry, for the control plane's MEMBERS.
        self.configs = {fn.name: dataclasses.asdict(fn) for fn in config.functions}
        self.state_dir = config.stateDir
        self.signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        # Worker processes by key: the function's name for its first, "name#2"... for more
        # (`workers` in sora.yaml); each is supervised on its own.
        self.workers: dict[str, Supervised] = {}
        self.setups: dict[str, SetupRun] = {}
        self.gateways: dict[str, Supervised] = {}
        self.stopping = False
        self.hurry = False   # a second stop signal: no more waiting for in-flight work
        self.stop_phase = ""
        self.exit_code = 0
        self.plane: ControlPlane | None = None
        self.runtime_pool: RuntimePool | None = None
        self.recorder = Supervised("recorder", "recorder", self.recorder_launch())
        self.dispatcher = Supervised("dispatcher", "dispatcher", self.dispatcher_launch())
        # Schedules and file watchers (sora.triggers.service): started and stopped with the
        # dispatcher, on the main host only.
        self.triggers = Supervised("triggers", "triggers", self.triggers_launch())
        self._triggers_stale = False
        self._last_status = b""
        # The cgroup version whose limits instances run under ("v1", "v2"), or None.
        self.cgroups = cgroups.detect()
        self._announced = False
        self.sockets: dict[str, socket.socket] = {}   # the listeners, bound in prepare()
        self.progress: StartupProgress | None = None
        self._last_exit_at = float("-inf")
        self.init_reloading()   # live reload (reloading.py): generations, switches, admin ops
        # Published versions: their workers (on demand), publishing and pruning.
        self.versions = Versions(self)
        self.admin_ops["publish"] = self.versions.publish
        # Watch mode (`start --watch`, `sora dev`): a saved file reloads its function (watch.py).
        self.watch = watch
        self.watcher: Watcher | None = None
        # What containers of this host's workers and setups were left (container_sweeps.py):
        # only once a function runs in containers (a host without any needs no engine).
        self.sweeps = ContainerSweeps(config.server.docker.socket, self.state_dir)
        if any(fn.containerized for fn in config.functions):
            self.sweeps.use()

    # --- signals: handlers only queue -----------------------------------------------------------
    def _on_signal(self, signum, _frame) -> None:
        self.signals.append(signum)

    def wakeup(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full, so the loop is due to wake anyway

    def install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD,
                    signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            name = signal.Signals(signum).name.lower()
            handler = getattr(self, f"handle_{name}", None)
            if handler:
                handler()

    def handle_sigterm(self) -> None:
        self.begin_stop("SIGTERM")

    def handle_sigint(self) -> None:
        self.begin_stop("SIGINT")

    def handle_sigquit(self) -> None:
        self.begin_stop("SIGQUIT")

    # handle_sighup: a reload (reloading.py).

    def handle_sigchld(self) -> None:
        pass  # it woke the loop; reap_children does the work

    # --- children -------------------------------------------------------------------------------
    def worker_launch(self, fn: FunctionConfig, warm_up: bool = False) -> Launch:
        """`warm_up`: a reload's new generation, which loads the module before READY and
        is not restarted if it fails (the previous generation serves)."""
        config = self.config
        # The config the supervisor loaded before setup, never the folder's sora.yaml again.
        argv = [sys.executable, "-m", "sora.worker", "--name", data_key(fn.name, fn.version),
                "--functions", config_snapshot.snapshot_path(self.state_dir),
                "--state-dir", self.state_dir,
                "--control", p.control_endpoint(self.state_dir),
                "--log-file-max-mb", str(config.logs.maxFileMB),
                "--log-files-kept", str(config.logs.keepFiles),
                "--log-bytes-per-invocation", str(config.records.maxLogBytesPerInvocation),
                "--min-free-disk-mb", str(config.minFreeDiskMB)]
        cluster = config.cluster
        if cluster.advertise:   # served on tcp (CURVE) for other hosts' clients
            argv += ["--advertise", cluster.advertise, "--keys", cluster.keys,
                     # A call's body or an event's, whichever may be larger.
                     "--max-body-bytes", str(max(config.server.maxBodyBytes,
                                                 config.server.maxEventBytes))]
        if cluster.controlPlane:   # records go to the main host's recorder
            # With "=": a z85 key may begin with "-", which argparse would take for an option.
            argv += ["--records-endpoint", cluster.records_endpoint,
                     "--records-server-key=" + cluster.controlPlaneKey.decode()]
        if warm_up:
            argv.append("--warm-up")
        if fn.containerized:   # the engine its instances run in (never shown to a function)
            argv += ["--docker-socket", config.server.docker.socket,
                     "--prestarted-runtimes", str(config.prestartedRuntimes)]
            self.sweeps.use()
        return Launch(argv, dict(os.environ), start_timeout=max(30.0, fn.timeout) + 15,
                      start_retries=1 if warm_up else WORKER_START_RETRIES)

    def gateway_launch(self, listener: str) -> Launch:
        argv = [sys.executable, "-m", "gunicorn", "--config", "python:sora.gateway.gunicorn_conf",
                "sora.gateway.app:create_app()"]
        fd = self.sockets[listener].fileno()
        env = dict(os.environ, SORA_CONFIG=self.config.path, SORA_LISTENER=listener,
                   SORA_LISTEN_FD=str(fd))
        return Launch(argv, env, start_timeout=30.0, start_retries=GATEWAY_START_RETRIES,
                      pass_fds=(fd,))

    def recorder_launch(self) -> Launch:
        records = self.config.records
        argv = [sys.executable, "-m", "sora.store.recorder", "--state-dir", self.state_dir,
                "--max-per-function", str(records.maxPerFunction),
                "--max-age-hours", str(records.maxAgeHours),
                "--max-store-mb", str(records.maxStoreMB),
                "--min-free-disk-mb", str(self.config.minFreeDiskMB)]
        if self.config.cluster.listen:   # joined hosts' records, on listen's port + 1
            argv += ["--cluster-listen", self.config.cluster.listen,
                     "--keys", self.config.cluster.keys]
        if self.config.server.metrics:
            argv.append("--metrics")
        argv += ["--config", self.config.path]   # its `store:` (never a URL on a command line)
        return Launch(argv, dict(os.environ), start_timeout=30.0,
                      start_retries=WORKER_START_RETRIES)

    def dispatcher_launch(self) -> Launch:
        argv = [sys.executable, "-m", "sora.events.dispatcher", "--config", self.config.path]
        return Launch(argv, dict(os.environ), start_timeout=30.0,
                      start_retries=WORKER_START_RETRIES)

    def triggers_launch(self) -> Launch:
        argv = [sys.executable, "-m", "sora.triggers.service", "--config", self.config.path]
        return Launch(argv, dict(os.environ), start_timeout=30.0,
                      start_retries=WORKER_START_RETRIES)

    def workers_of(self, function: str) -> list[Supervised]:
        return [w for w in self.workers.values() if function_of(w) == function]

    def listeners(self) -> dict[str, int]:
        return listeners.ports(self.config)

    def services(self) -> list[Supervised]:
        """The dispatcher, the trigger service and the recorder (last: it stops last): a
        joined host has none (the main host's serve it)."""
        return [] if self.joining else [self.dispatcher, self.triggers, self.recorder]

    def first_stopped(self) -> list[Supervised]:
        """The services stopped with the gateways: the dispatcher and the trigger service
        take no new events, and what the dispatcher runs finishes while workers serve."""
        return self.services()[:-1]

    def last_stopped(self) -> list[Supervised]:
        """The recorder: last, so it stores what the workers sent on their way out."""
        return self.services()[-1:]

    def write_snapshot(self) -> None:
        """After a reload wrote the snapshot: the trigger service reads it again (SIGHUP),
        so enabling or disabling a trigger needs no restart."""
        super().write_snapshot()
        if self.triggers not in self.services() or self.triggers.pid is None:
            return   # one that starts later reads the new snapshot
        if self.triggers.state is State.RUNNING:
            self.triggers.signal(signal.SIGHUP)
        else:
            # Still starting: it may have read the former snapshot, and before its handler
            # is installed SIGHUP would end it. Told once it is ready (manage).
            self._triggers_stale = True

    def all_children(self) -> list[Supervised]:
        return [*self.gateways.values(), *self.services(), *self.worker_children()]

    def reap_children(self, now: float) -> bool:
        exited = False
        for child in self.all_children():
            code = child.poll_exit()
            if code is None:
                continue
            exited = True
            self._last_exit_at = now
            why = f"pid {child.proc.pid} {describe_exit(code)}"
            if child.kind == "worker":
                function = function_of(child)
                if code == p.EXIT_IDLE and child.state is State.RUNNING and ":" in function:
                    # A version idle past its idleTimeout: forgotten (not restarted) until
                    # its next call wakes it (sora.supervisor.versions).
                    child.to(State.STOPPING, "idle: no instance and no call for its "
                                             "idleTimeout")
                self.plane.control.forget_worker(p.worker_identity(function, child.proc.pid))
                # Its data endpoint's socket file, if it could not remove it (killed).
                remove_file(p.ipc_path(p.worker_data_endpoint(self.state_dir, child.proc.pid)))
                # (named by the function's name, a version's worker too)
                remove_secret_files(split_key(function)[0], child.proc.pid)
                cgroups.remove_leftovers(split_key(function)[0], child.proc.pid)
                channel.remove_leftovers(p.run_dir(self.state_dir), child.proc.pid)
                self.sweeps.after_worker(child.proc.pid)   # its containers (killed -9)
                if code == p.EXIT_BOOT_ERROR:
                    why = "cannot boot: " + (p.take_boot_error(self.state_dir, function)
                                             or "the worker exited with a boot error")
            child.on_exit(code, now, why)
            if child.kind == "gateway" and child.state is State.FATAL and not self.stopping:
                log.error("the %s listener cannot start (%s); stopping the host", child.name,
                          child.reason)
                self.exit_code = EXIT_GATEWAY_FATAL
                self.begin_stop(f"{child.name} listener failed")
        return exited

    def reap_orphans(self) -> None:
        """Kill and reap processes that were re-parented to us (we are a subreaper).

        Expected, and logged at debug: what a child of ours that just exited left (a worker's
        runtimes, a setup's stragglers), what is left while the host stops, and bubblewrap's
        init (it outlives the bwrap that started it by a moment whenever a sandboxed command
        ends, e.g. each confined rsync of a setup). Otherwise a process outlived its parent
        with none of ours exiting (a function's runtime that daemonized a child): that is
        told at info. (A process can name itself "bwrap": that changes a log level only.)"""
        expected = self.stopping or \
            time.monotonic() - self._last_exit_at < ORPHANS_EXPECTED_FOR
        own_group = os.getpgid(0)
        try:
            children = psutil.Process().children()
        except psutil.Error:
            return
        # Listed after the children: a child started since is not among them, and one the
        # runtime pool was starting while they were listed is known by the time pids() returns.
        known = {c.proc.pid for c in self.all_children() if c.proc is not None}
        known |= {s.proc.pid for s in self.setups.values() if s.proc is not None}
        known |= {s.setup.proc.pid for s in self.switches.values()   # a reload's setups
                  if s.setup is not None and s.setup.proc is not None}
        known |= self.versions.pids()   # publishes' copies (reaped here, they would seem 0)
        if self.runtime_pool is not None:
            known |= self.runtime_pool.pids()  # the pool reaps its own
        for proc in children:
            if proc.pid in known:
                continue
            name = _name_of(proc)   # before it is killed: a zombie has no name to read
            try:
                group = os.getpgid(proc.pid)
                if group != own_group:
                    os.killpg(group, signal.SIGKILL)
                os.kill(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                os.waitpid(proc.pid, 0)
                log.log(logging.DEBUG if expected or name == "bwrap" else logging.INFO,
                        "reaped orphaned process %d (%s)%s", proc.pid, name,
                        "" if expected or name == "bwrap" else
                        ", left behind by a process that exited")
            except ChildProcessError:
                pass

    # --- managing -------------------------------------------------------------------------------
    def start_functions(self) -> None:
        for fn in self.config.functions:
            run = SetupRun(fn, self.state_dir, force=fn.coldStart == "always-setup",
                           withheld=secrets.declared_env_names(self.config.functions),
                           docker_socket=self.config.server.docker.socket)
            self.setups[fn.name] = run
            for number in range(1, fn.workers + 1):
                key = fn.name if number == 1 else f"{fn.name}#{number}"
                self.workers[key] = Supervised(key, "worker", self.worker_launch(fn),
                                               state=State.SETUP)
            try:
                run.start()
            except OSError as exc:
                run.outcome = None
                for worker in self.workers_of(fn.name):
                    worker.to(State.FATAL, f"setup could not start: {exc}")

    def manage(self, now: float) -> None:
        self.step_switches(now)
        self.step_draining(now)
        self.versions.refresh(now)
        self.versions.step(now)
        for name, run in list(self.setups.items()):
            workers = self.workers_of(name)
            if workers[0].state is not State.SETUP:
                continue
            outcome = run.poll()
            if outcome is None:
                continue
            del self.setups[name]
            self._last_exit_at = now   # its stragglers may be re-parented to us
            if outcome.ok:
                log.info("function %s: setup %s", name, "unchanged, skipped" if outcome.skipped
                         else "done")
                # What a reload compares the folder with (reload_plan.fingerprint).
                self.fingerprints[name] = fingerprint(run.fn.directory, run.fn.data_dirs)
            for worker in workers:
                if outcome.ok:
                    worker.spawn(now)
                else:
                    worker.to(State.FATAL, outcome.reason)
        for child in self.all_children():
            if child.due(now):
                if child.kind == "gateway":
                    self.spawn_gateway(child, now)
                else:
                    child.spawn(now)
            elif child.start_overdue(now):
                log.error("%s %s: not ready after %.0fs; killing it", child.kind, child.name,
                          child.launch.start_timeout)
                child.signal(signal.SIGKILL)
        for child, socket_file in ((self.recorder, records_socket(self.state_dir)),
                                   (self.dispatcher, events_socket(self.state_dir)),
                                   (self.triggers, triggers_control.socket_path(self.state_dir))):
            if child in self.services() and child.state is State.STARTING and child.pid and os.path.exists(socket_file):
                child.mark_ready(now)
                if child is self.triggers and self._triggers_stale:
                    self._triggers_stale = False
                    child.signal(signal.SIGHUP)
        for name, gateway in self.gateways.items():
            if gateway.state is State.STARTING and gateway.pid and \
                    os.path.exists(p.gateway_ready_path(self.state_dir, name)):
                gateway.mark_ready(now)
        if not self._announced and self.gateways and \
                all(g.state is State.RUNNING for g in self.gateways.values()):
            self._announced = True
            self.announce()
        if not self._announced and self.joining:
            self._announced = True
            self.announce_joining()
        if self._announced:
            self.report_progress(now)

    def spawn_gateway(self, gateway: Supervised, now: float) -> None:
        try:   # the new gunicorn tells it is ready by making the file again
            os.unlink(p.gateway_ready_path(self.state_dir, gateway.name))
        except FileNotFoundError:
            pass
        gateway.spawn(now)

    def report_progress(self, now: float) -> None:
        """Each function's way to ready, after "Sora is serving" (see progress.py)."""
        if self.progress is None or self.progress.summed_up:
            return
        seen = []
        for fn in self.config.functions:
            worker = self.workers[fn.name]
            run = self.setups.get(fn.name)
            seen.append(FunctionProgress(
                fn.name, worker.state, worker.reason,
                setup_command=run.current_command if run is not None else None,
                setup_log=run.log_path if run is not None else None))
        for level, line in self.progress.lines(now, seen):
            log.log(level, "%s", line)

    def announce(self) -> None:
        host = self.config.server.bind
        shown = "localhost" if host in ("0.0.0.0", "::", "127.0.0.1") else host
        lines = []
        for listener, port in self.listeners().items():
            for fn in self.config.functions:
                if fn.http:   # one without an http trigger has no URL (issue 18)
                    lines.append(f"  {listener}://{shown}:{port}/functions/{fn.name}")
            lines.append(f"  {listener}://{shown}:{port}/healthz")
        waiting = [fn.name for fn in self.config.functions
                   if self.workers[fn.name].state not in (State.RUNNING, State.FATAL)]
        if waiting:
            lines.append(f"  waiting for {len(waiting)} function(s) to be ready: "
                         f"{', '.join(waiting)} (progress below)")
        log.info("Sora is serving:\n%s", "\n".join(lines))

    def announce_joining(self) -> None:
        cluster = self.config.cluster
        lines = [f"  {fn.name}" for fn in self.config.functions]
        log.info("Sora host %s joins the cluster at %s; its workers serve on tcp://%s "
                 "(CURVE):\n%s", cluster.name, cluster.controlPlane, cluster.advertise,
                 "\n".join(lines) or "  (no functions)")

    def handle_control_events(self, now: float) -> None:
        while not self.plane.events.empty():
            event, identity = self.plane.events.get_nowait()
            if event == "admin":
                self.handle_admin(identity)
                continue
            if event == "wake":   # a call for a published version that has no worker
                self.versions.wake(identity.decode(errors="replace"), now)
                continue
            name = identity.rsplit(b"/", 1)[0].decode()
            pid = p.identity_pid(identity)
            # Any generation's: the serving one, a switch's new one, a draining one.
            worker = next((w for w in self.worker_children()
                           if function_of(w) == name and w.pid == pid), None)
            if worker is None:
                continue
            if event == "ready":
                worker.mark_ready(now)
            elif event == "silent":
                log.error("worker %s fell silent; killing it", identity.decode())
                worker.signal(signal.SIGKILL)

    def function_table(self) -> dict[str, dict]:
        table = {}
        for fn in self.config.functions:
            worker = self.workers[fn.name]   # the function's first worker speaks for it
            table[fn.name] = {"maxQueued": fn.maxQueued, "maxWait": fn.timeout,
                              "concurrency": fn.concurrency, "memory": fn.memory,
                              "available": worker.state is not State.FATAL,
                              "reason": worker.reason, "config": self.configs[fn.name]}
        for name, switch in self.switches.items():
            if name not in table:   # a reload's new function: its workers announce it
                fn = switch.fn
                table[name] = {"maxQueued": fn.maxQueued, "maxWait": fn.timeout,
                               "concurrency": fn.concurrency, "memory": fn.memory,
                               "available": True, "reason": "starting (reload)",
                               "config": dataclasses.asdict(fn)}
        for name in self.removing:   # listed while its workers finish what they hold
            fn = self._removed_configs.get(name)
            if fn is not None and name not in table:
                table[name] = {"maxQueued": fn.maxQueued, "maxWait": fn.timeout,
                               "concurrency": fn.concurrency, "memory": fn.memory,
                               "available": True, "reason": "removed", "removed": True}
        for broken in self.config.broken:
            table.setdefault(broken.name, {"maxQueued": 0, "maxWait": 1.0, "available": False,
                                           "reason": broken.reason})
        table.update(self.versions.table())
        return table

    def status(self) -> dict:
        functions = {}
        for fn in self.config.functions:
            workers = self.workers_of(fn.name)
            info = workers[0].describe()
            if len(workers) > 1:
                info["workerProcesses"] = [w.describe() for w in workers]
            info.update(language=fn.language, timeout=fn.timeout, minInstances=fn.minInstances,
                        maxInstances=fn.maxInstances, concurrency=fn.concurrency)
            self.reload_status(fn.name, info)
            functions[fn.name] = info
        for name, switch in self.switches.items():
            if switch.adding and name not in functions:   # a reload's new function, starting
                info = switch.workers[0].describe()
                info.update(language=switch.fn.language, timeout=switch.fn.timeout)
                self.reload_status(name, info)
                functions[name] = info
        for broken in self.config.broken:
            functions.setdefault(shown_name(broken, functions),
                                 {"kind": "worker", "state": State.FATAL.value,
                                  "reason": broken.reason, "pid": None, "restarts": 0,
                                  "since": None, "directory": broken.directory})
        gateways = {name: g.describe() for name, g in self.gateways.items()}
        healthy = all(f["state"] == State.RUNNING.value for f in functions.values())
        status = {"status": "stopping" if self.stopping else ("ok" if healthy else "degraded"),
                  "cgroups": self.cgroups, "functions": functions, "gateways": gateways}
        if not self.joining:
            status.update(recorder=self.recorder.describe(),
                          dispatcher=self.dispatcher.describe(),
                          triggers=self.triggers.describe())
        return status

    def publish(self) -> None:
        """Tell the control plane about function availability and health, when either
        changed."""
        table = self.function_table()
        status = self.status()
        blob = json.dumps([table, status], sort_keys=True, default=str).encode()
        if blob != self._last_status:
            self._last_status = blob
            self.plane.control.set_functions(table)
            self.plane.control.set_status(status)

    # --- stopping -------------------------------------------------------------------------------
    def begin_stop(self, why: str) -> None:
        if self.stopping:
            # Asked twice (a second Ctrl-C): stop waiting for in-flight work.
            log.warning("%s again: killing everything now", why)
            self.hurry = True
            for child in self.all_children():
                child.stop_deadline = 0.0
            return
        self.stopping = True
        log.info("stopping (%s): gateways and the dispatcher first, then workers", why)
        # The gateways keep their own copies; with ours closed, the ports close as they exit.
        listeners.close_all(self.sockets)
        for run in self.setups.values():
            run.kill()
        for switch in self.switches.values():
            if switch.setup is not None:
                switch.setup.kill()
        for child in self.all_children():
            if child.state in (State.SETUP, State.BACKOFF):
                child.to(State.STOPPED, why)
        # The dispatcher stops with the gateways: it takes no new events, and the events it
        # runs finish while the workers still serve.
        self._stop_group([*self.gateways.values(), *self.first_stopped()])
        self.stop_phase = "gateways"

    def _stop_group(self, children) -> None:
        deadline = time.monotonic() + (0.0 if self.hurry else self.config.server.gracefulTimeout)
        for child in children:
            if child.pid is not None and child.state in (State.STARTING, State.RUNNING):
                child.to(State.STOPPING, "host stopping")
                child.stop_deadline = deadline
                # The child's own process only: it stops its children itself, gracefully.
                try:
                    os.kill(child.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def step_stop(self, now: float) -> bool:
        """Advance the stop; True once everything has exited."""
        group = {"gateways": [*self.gateways.values(), *self.first_stopped()],
                 "workers": self.worker_children(),
                 "recorder": self.last_stopped()}[self.stop_phase]
        alive = [c for c in group if c.pid is not None]
        for child in alive:
            if now >= child.stop_deadline:
                log.warning("%s %s did not stop within %.0fs; killing it", child.kind,
                            child.name, self.config.server.gracefulTimeout)
                child.signal(signal.SIGKILL)
        if alive:
            return False
        if self.stop_phase == "gateways":
            self.stop_phase = "workers"
            self._stop_group(self.worker_children())
            return False
        if self.stop_phase == "workers":
            # Last, so it stores what the workers sent on their way out.
            self.stop_phase = "recorder"
            self._stop_group(self.last_stopped())
            return False
        return True

    # --- main loop ------------------------------------------------------------------------------
    def lock_state_dir(self) -> None:
        """One supervisor per state dir: a second one would take over the control plane's and
        workers' sockets."""
        path = os.path.join(p.run_dir(self.state_dir), "supervisor.lock")
        self._lock = open(path, "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            owner = self._lock.read().strip() or "?"
            raise StateDirBusy(f"{self.config.path}: stateDir: expected a folder no other "
                               f"supervisor uses, but {self.state_dir} is in use by pid "
                               f"{owner}") from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(str(os.getpid()))
        self._lock.flush()

    def prepare_store(self) -> None:
        """The store's schema created or migrated before any child opens it; a newer one
        (SchemaTooNew) ends the start. A database that cannot be reached now is only
        logged: each child opens it on its own, retrying, and serves once it answers."""
        try:
            store_backend.prepare(self.config.store, self.state_dir)
        except store_backend.SchemaTooNew:
            raise
        except store_backend.ERRORS as exc:
            log.warning("the store %s cannot be opened now (its users try again): %s",
                        self.config.store.display_url, exc)
        else:
            log.info("store: %s", self.config.store.display_url)

    def prepare(self) -> None:
        p.make_run_dir(self.state_dir)
        self.lock_state_dir()
        self.prepare_store()
        metrics_registry.reset(self.state_dir)   # counts start at zero with the host
        self.versions.store.remove_staging()   # what a killed publish left
        # Before anything starts or is announced: a taken port ends the start here, at once.
        if not self.joining:
            self.sockets = listeners.bind_all(self.config)
        # Before any setup runs: what the children learn of the functions (see config_snapshot).
        config_snapshot.write(config_snapshot.snapshot_path(self.state_dir),
                              self.config.functions, self.config.broken)
        # Socket files left by a host that was killed: readiness is told by their existence.
        for socket_file in (records_socket(self.state_dir), events_socket(self.state_dir),
                            triggers_control.socket_path(self.state_dir)):
            remove_file(socket_file)
        for name in os.listdir(p.run_dir(self.state_dir)):
            if name.startswith("w-") and name.endswith(".sock"):   # workers' data endpoints
                remove_file(os.path.join(p.run_dir(self.state_dir), name))
        cgroups.remove_orphaned_groups()   # and its cgroups
        channel.remove_leftovers(p.run_dir(self.state_dir))   # and its containers' FIFOs
        # And its containers: no other supervisor has this stateDir (the lock above), so
        # every container labelled with this host's id is a leftover.
        self.sweeps.at_start()
        ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self.install_signals()
        quiet_gc()  # the control plane thread shares this process
        cluster = self.config.cluster
        if self.joining:
            self.uplink = uplink_for(cluster)
        elif cluster.listen:
            self.joined_hosts = JoinedHosts(cluster, self.wakeup)
        self.plane = ControlPlane(
            p.control_endpoint(self.state_dir), wake=self.wakeup,
            max_instances=self.config.limits.maxInstances,
            max_memory_mb=self.config.limits.maxMemoryMB, host=cluster.name,
            # The serverKey of this host's tcp endpoints (cluster.advertise).
            server_key=load_keys(cluster.keys).public_text if cluster.advertise else None,
            address=cluster.advertise or _address_of(cluster.listen),
            on_local=self.uplink.set_members if self.uplink else None,
            heard=self.joined_hosts.heard if self.joined_hosts else None,
            admin_endpoint=p.admin_endpoint(self.state_dir))
        self.plane.start()
        if self.joined_hosts is not None:
            try:
                self.joined_hosts.start()
            except zmq.ZMQError as exc:
                raise listeners.ListenerUnavailable(
                    f"{self.config.path}: cluster.listen: cannot listen on {cluster.listen} "
                    f"({exc})") from None
        if self.uplink is not None:
            self.uplink.start()
        for fn in self.config.functions:
            if (path := secrets.sandboxed_dir(self.state_dir, fn)) is not None:
                # Made before any sandbox binds it; its worker writes the secrets into it.
                secrets.prepare_sandboxed_dir(path, fn)
        kinds = self.standby_kinds()
        if kinds and self.config.prestartedRuntimes:
            self.runtime_pool = RuntimePool(self.state_dir, kinds)
            self.runtime_pool.start()

    def standby_kinds(self) -> list[tuple[list[str], int]]:
        """The command lines worth pre-starting and how many of each: `prestartedRuntimes` per
        interpreter and start-up flags that the functions' instances would run, and one per
        sandboxed function (its sandbox binds that function's folder)."""
        kinds: list[tuple[list[str], int]] = []
        for fn in self.config.functions:
            runtime = runtime_for(fn.language)
            if fn.isolation == "container":
                continue  # its worker keeps its own pre-started containers (containers.spares)
            if fn.runtime is not None or not runtime.standby(fn):
                continue  # a runtime of the function's own may be built by its setup
            try:
                runtime.prepare(fn)
            except ConfigError:
                continue
            argv, size = runtime.argv(fn), self.config.prestartedRuntimes
            if fn.sandboxed:
                if not sandbox.available():
                    continue
                argv = sandbox.wrap(argv, fn, secrets.sandboxed_dir(self.state_dir, fn))
                size = 1
            if all(argv != known for known, _ in kinds):
                kinds.append((argv, size))
        return kinds

    def run(self) -> int:
        self.prepare()
        for broken in self.config.broken:
            log.error("function %s is broken and skipped: %s", broken.name, broken.reason)
        now = time.monotonic()
        self.progress = StartupProgress([fn.name for fn in self.config.functions], now)
        self.start_functions()
        if self.watch:   # after the first setups began: their writes are no developer's
            self.watcher = Watcher(folders_of(self.config), self.state_dir, self.wakeup)
            self.watcher.start()
        # The control plane learns the functions before the dispatcher subscribes.
        self.publish()
        for service in self.services():
            service.spawn(now)
        for listener in self.listeners() if not self.joining else ():
            self.gateways[listener] = Supervised(listener, "gateway",
                                                 self.gateway_launch(listener))
            self.spawn_gateway(self.gateways[listener], now)
        last_sweep = now
        try:
            while True:
                busy = self.setups or self.switches or self.versions.busy() or any(
                    c.state is State.STARTING for c in self.all_children())
                self.sleep(0.1 if busy or self.stopping else 1.0)
                self.handle_signals()
                if self.watcher is not None and not self.stopping:
                    self.hand_over_changes()
                now = time.monotonic()
                if self.joined_hosts is not None:
                    self.joined_hosts.forward(self.plane.control)
                self.handle_control_events(now)
                exited = self.reap_children(now)
                if exited or now - last_sweep > 2.0:
                    self.reap_orphans()
                    last_sweep = now
                if self.stopping:
                    if self.step_stop(now):
                        break
                else:
                    self.manage(now)
                self.publish()
        finally:
            self.shutdown()
        return self.exit_code

    def hand_over_changes(self) -> None:
        """Reload what the watcher saw change (the watcher's thread only queues; here the loop
        acts), telling it which setups run now and which folders to watch."""
        running = [*self.setups.items(),
                   *((name, s.setup) for name, s in self.switches.items() if s.setup)]
        self.watcher.hand_over(self.reload, {name: run.before for name, run in running
                                             if run.outcome is None})
        self.watcher.set_folders(folders_of(self.config))

    def sleep(self, timeout: float) -> None:
        try:
            ready, _, _ = select.select([self._wake_r], [], [], timeout)
        except InterruptedError:
            return
        if ready:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass

    def shutdown(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        for child in self.all_children():
            child.signal(signal.SIGKILL)
            if child.proc is not None and child.proc.returncode is None:
                child.proc.wait()
        for run in self.setups.values():
            run.kill()
        self.versions.shutdown()
        self.sweeps.at_stop()   # every worker and setup has exited
        if self.runtime_pool is not None:
            self.runtime_pool.stop()
            self.runtime_pool = None
        for fn in [*self.config.functions, *self.versions.configs.values()]:
            if (path := secrets.sandboxed_dir(self.state_dir, fn)) is not None:
                shutil.rmtree(path, ignore_errors=True)
        listeners.close_all(self.sockets)
        self.reap_orphans()
        cgroups.remove_orphaned_groups(wait=2.0)   # what was busy when its worker tried
        if self.uplink is not None:
            self.uplink.stop()   # the main host drops this host at once (its workers are gone)
        if self.joined_hosts is not None:
            self.joined_hosts.stop()
        if self.plane is not None:
            self.plane.control.stop()
            self.plane.join(timeout=5)
            self.plane.control.close()
        log.info("stopped")


def _address_of(endpoint: str | None) -> str | None:
    """The address part of a tcp://ADDRESS:PORT endpoint."""
    return endpoint[len("tcp://"):].rsplit(":", 1)[0] if endpoint else None


def remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def shown_name(broken, functions: dict) -> str:
    """The name health shows a broken function under: its own, unless a function that serves
    has it (a duplicate name), then with its folder's name (its whole path if that is taken
    too), so both are listed; the reason names both folders in full."""
    if broken.name not in functions:
        return broken.name
    short = f"{broken.name} ({os.path.basename(broken.directory.rstrip('/'))})"
    return short if short not in functions else f"{broken.name} ({broken.directory})"


def _name_of(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return "?"
