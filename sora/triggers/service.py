"""The trigger service: one process per host runs every schedule and file watcher.

`python -m sora.triggers.service --config PATH`, a supervised child of the supervisor on the
main host (a joined host has no queue), like the dispatcher. It reads the functions from the
supervisor's snapshot (sora.config_snapshot), never from their folders, and runs:

- the scheduler (sora.triggers.scheduler): every enabled schedule, in one asyncio loop;
- a FileWatcher (sora.triggers.files) per enabled file trigger;
- the control socket (sora.triggers.control): `status` and `fire`.

Every firing goes through the Sink (sora.triggers.sink) into the durable queue (the host's
`store:`: queue.db, or the PostgreSQL database a cluster shares), where a dispatcher runs it
like any asynchronous event. On a shared store every host runs the service and the same
schedules; each due time fires once cluster-wide (sora.triggers.scheduler). On SIGHUP (the supervisor sends it after each
reload wrote the snapshot) the snapshot is read again and schedules and watchers are
reconciled: unchanged ones keep running, changed ones restart, disabled or removed ones stop.
Signal handlers only set flags and wake the loop.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import signal
import sys
import time
import zoneinfo

import zmq
import zmq.asyncio

from ..config import ConfigError
from ..config_snapshot import load_host_config_of_child
from ..hotpath import quiet_gc
from ..store import backend
from ..store import triggers as store
from . import control
from .scheduler import Scheduler, route_of
from .sink import Sink, seen_host

log = logging.getLogger("sora.triggers")

WATCHER_BACKOFF = (1.0, 30.0)   # a watcher that failed is started again, doubling up to this


def iso(t: float, timezone: str = "UTC") -> str:
    """ISO 8601 with the offset, in the schedule's timezone."""
    try:
        tz = zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        tz = datetime.timezone.utc
    return datetime.datetime.fromtimestamp(t, tz).isoformat()


def trigger_list(fn) -> list:
    """The function's schedule and file triggers, in their order in `trigger`."""
    return sorted([*getattr(fn, "schedules", ()), *getattr(fn, "files", ())],
                  key=lambda t: t.index)


class WatcherRun:
    """One file trigger's watcher, started again with backoff if it fails."""

    def __init__(self, fn, trigger, sink):
        self.fn, self.trigger, self.sink = fn, trigger, sink
        self.watcher = None
        self.error: str | None = None
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        delay = WATCHER_BACKOFF[0]
        while True:
            try:
                from .files import FileWatcher
                self.watcher = FileWatcher(self.fn, self.trigger, self.sink)
                self.error = None
                await self.watcher.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # noqa: BLE001 - any failure: say it, try again later
                self.error = f"{type(exc).__name__}: {exc}"
                log.error("%s %s: the file watcher failed (%s); starting it again in %.0fs",
                          self.fn.name, route_of(self.trigger), self.error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, WATCHER_BACKOFF[1])

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):   # noqa: BLE001 - it is stopping
                pass

    def status(self) -> dict:
        out: dict = {}
        if self.watcher is not None and hasattr(self.watcher, "status"):
            try:
                out.update(self.watcher.status())
            except Exception as exc:   # noqa: BLE001 - status must answer
                out.update(state="error", detail=f"status failed: {exc}")
        if self.error is not None:
            out.update(state="error", detail=self.error)
        out.setdefault("state", "active")
        return out


class TriggerService:
    def __init__(self, config_path: str):
        self.config_path = config_path
        self.config = load_host_config_of_child(config_path)
        self.state_dir = self.config.stateDir
        self.sink = Sink(self.state_dir, self.config.minFreeDiskMB, self.config.store,
                         seen_host(self.config))
        self.scheduler = Scheduler(self.sink)
        self.watchers: dict[tuple[str, int], WatcherRun] = {}
        self.stopping = False
        self.reread = False
        self.wake = asyncio.Event()
        self.started = time.time()

    # --- signals: handlers only flag ------------------------------------------------------------
    def _on_stop(self) -> None:
        self.stopping = True
        self.wake.set()

    def _on_hup(self) -> None:
        self.reread = True
        self.wake.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        await self.reconcile()
        scheduling = loop.create_task(self.scheduler.run())
        # Bound last: its socket file tells the supervisor the service is ready.
        sock.bind(control.endpoint(self.state_dir))
        serving = loop.create_task(self.serve(sock))
        quiet_gc()
        log.info("trigger service ready: %d schedule(s), %d file watcher(s)",
                 len(self.scheduler.entries), len(self.watchers))
        try:
            while not self.stopping:
                self.wake.clear()
                if self.reread:
                    self.reread = False
                    self.read_config()
                    await self.reconcile()
                await self.wake.wait()
        finally:
            self.scheduler.stop()
            serving.cancel()
            for run in self.watchers.values():
                await run.stop()
            for task in (scheduling, serving):
                try:
                    await task
                except (asyncio.CancelledError, Exception):   # noqa: BLE001 - stopping
                    pass
            sock.close(linger=0)
            ctx.term()
            self.sink.close()
        log.info("trigger service stopped")
        return 0

    def read_config(self) -> None:
        try:
            self.config = load_host_config_of_child(self.config_path)
            log.info("configuration read again")
        except ConfigError as exc:
            log.error("configuration not read again, the former one stays: %s", exc)

    async def reconcile(self) -> None:
        functions = list(self.config.functions)
        await self.scheduler.reconcile(functions)
        wanted = {(fn.name, t.index): (fn, t) for fn in functions
                  for t in getattr(fn, "files", ()) if t.enabled}
        for ident, run in list(self.watchers.items()):
            if wanted.get(ident) != (run.fn, run.trigger):
                del self.watchers[ident]
                await run.stop()
        for ident, (fn, trigger) in wanted.items():
            if ident not in self.watchers:
                self.watchers[ident] = run = WatcherRun(fn, trigger, self.sink)
                run.start()

    # --- the control socket ---------------------------------------------------------------------
    async def serve(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames = await sock.recv_multipart()
            if len(frames) != 4:
                continue
            identity, request_id, op, body = frames
            answer = await self.answer(op, body)
            await sock.send_multipart([identity, request_id,
                                       json.dumps(answer, default=str).encode()])

    async def answer(self, op: bytes, body: bytes) -> dict:
        """The answer to one request, an error included (the socket must keep answering). A
        store error says what failed without the store URL's password (sora.store.backend's
        errors show its display URL)."""
        try:
            return await self.handle(op.decode(), json.loads(body or b"{}"))
        except (ValueError, TypeError, KeyError) as exc:
            return {"error": f"bad request: {exc}", "errorType": "InvalidRequest"}
        except backend.ERRORS as exc:
            return {"error": f"the store could not be read or written: {exc}",
                    "errorType": "StoreUnavailable"}
        except Exception as exc:   # noqa: BLE001 - the socket must keep answering
            log.exception("control op %r failed", op)
            return {"error": f"{type(exc).__name__}: {exc}", "errorType": "InternalError"}

    async def handle(self, op: str, body: dict) -> dict:
        if op == "status":
            return await self.status(body.get("function"))
        if op == "fire":
            return await self.fire(body["function"], body.get("index"), body.get("key"))
        return {"error": f"unknown op {op!r}: expected status or fire",
                "errorType": "InvalidRequest"}

    async def status(self, function: str | None = None) -> dict:
        functions = {}
        for fn in self.config.functions:
            if function is not None and fn.name != function:
                continue
            functions[fn.name] = [await self.trigger_status(fn, t) for t in trigger_list(fn)]
        return {"scheduler": {"state": self.scheduler.state, "since": self.scheduler.since,
                              "alreadyHandled": self.scheduler.already_handled},
                "functions": functions}

    async def trigger_status(self, fn, trigger) -> dict:
        out = {"index": trigger.index, "kind": trigger.kind, "enabled": trigger.enabled,
               "state": "active" if trigger.enabled else "disabled", "detail": None}
        if trigger.kind == "schedule":
            out.update(expression=trigger.expression, timezone=trigger.timezone, next=[])
            entry = self.scheduler.entries.get((fn.name, trigger.key))
            error = self.scheduler.errors.get((fn.name, trigger.index))
            if error is not None:
                out.update(state="error", detail=error)
            elif entry is not None and entry.next_due is not None:
                times = [entry.next_due, *entry.schedule.next_times(entry.next_due, 2)]
                out["next"] = [iso(t, trigger.timezone) for t in times]
        else:
            out.update(path=trigger.path, watching={
                "path": trigger.path, "pattern": trigger.pattern,
                "recursive": trigger.recursive, "events": list(trigger.events)})
            run = self.watchers.get((fn.name, trigger.index))
            if run is not None:
                out.update(run.status())
        last = await self.sink.call(lambda conn: store.firings(conn, fn.name, trigger.key, 1))
        out["lastFiring"] = {k: last[0][k] for k in ("due", "fired", "requestId", "outcome",
                                                     "reason")} if last else None
        return out

    async def fire(self, function: str, index, key: str | None) -> dict:
        fn = next((f for f in self.config.functions if f.name == function), None)
        if fn is None:
            return {"error": f"no function {function!r} on this host",
                    "errorType": "ResourceNotFoundException"}
        triggers = trigger_list(fn)
        if index is None and triggers:
            index = triggers[0].index
        trigger = next((t for t in triggers if t.index == index), None)
        if trigger is None:
            return {"error": f"function {function} has no schedule or file trigger at index "
                             f"{index} (expected one of {[t.index for t in triggers]})",
                    "errorType": "ResourceNotFoundException"}
        if trigger.kind == "schedule":
            request_id = await self.scheduler.fire_now(fn, trigger)
            ids = [request_id] if request_id else []
        else:
            run = self.watchers.get((fn.name, trigger.index))
            if run is None or run.watcher is None:
                return {"error": f"{function} trigger[{index}] is not watching (disabled or "
                                 f"failed)", "errorType": "ResourceConflictException"}
            try:
                ids = list(await run.watcher.fire_now(key))
            except ValueError as exc:   # a key that is no regular file in the folder
                return {"error": str(exc), "errorType": "InvalidParameterValueException"}
            except Exception as exc:   # noqa: BLE001 - not watching yet, the folder gone
                return {"error": f"{function} trigger[{index}]: {exc}",
                        "errorType": "ResourceConflictException"}
        if not ids and trigger.kind == "schedule":
            return {"requestIds": [], "error": "the firing was not stored (QueueFull or "
                    "LowDisk)", "errorType": "TooManyRequestsException"}
        return {"requestIds": ids}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sora.triggers.service")
    parser.add_argument("--config", required=True, help="path to host-config.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s [triggers %(process)d] %(levelname)s %(message)s")

    async def run() -> int:
        return await TriggerService(args.config).run()
    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
