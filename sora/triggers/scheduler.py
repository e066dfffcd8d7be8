"""The scheduler: one asyncio loop fires every schedule of the host's functions on time.

Each enabled schedule is an Entry with its next due time (wall clock, epoch seconds). The loop
sleeps until the earliest one (at most MAX_SLEEP, and it reads the wall clock again at each
wake, so a clock step or a suspend is caught up), then fires what is due.

Exactly one firing per due time: the last due time handled (fired or skipped) is persisted in
the same transaction that enqueues the firing (sora.store.triggers.fire with `once`), so a
restart, even after kill -9, never fires a time twice. On a store several hosts share
(PostgreSQL), every host's scheduler runs the same schedules on the same times (a rate()'s
anchor is the shared first_seen) and each due time is decided under the trigger's row lock:
the first host fires or skips it, the others find it handled (AlreadyFired, logged at debug)
and go on to the next time; so each time fires once cluster-wide, and a host going down leaves
the others firing. At start, and whenever a
schedule comes back, what was missed since the last due time handled is dealt with by its
`missed` policy: `latest` fires the most recent missed time once, `skip` records it as skipped.
`overlap: forbid` skips a firing (recorded, reason Overlap) while the previous firing's event
is still queued or running. A refused enqueue (the function's caps) is recorded as QueueFull.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from ..store import backend
from ..store import triggers as store

log = logging.getLogger("sora.triggers")

MAX_SLEEP = 30.0        # a wake at least this often: the wall clock may have been stepped
RETRY_AFTER = 1.0       # the store could not be written: try the same due time again


def route_of(trigger) -> str:
    return f"{trigger.kind}:{trigger.index}"


@dataclass
class Entry:
    fn: object              # FunctionConfig
    trigger: object         # ScheduleTrigger
    schedule: object        # sora.triggers.schedule.Schedule
    next_due: float | None  # None: never again (an at() that fired)
    retry_at: float | None = None   # the store failed: the same due time again from then

    def wake_at(self) -> float | None:
        if self.next_due is None:
            return None
        return self.next_due if self.retry_at is None else max(self.next_due, self.retry_at)


def _default_parse(expression: str, timezone: str, anchor: float):
    from .schedule import parse
    return parse(expression, timezone, anchor=anchor)


def _default_payload(fn, trigger, due: float, event_id: str) -> bytes:
    from .shapes import function_region, scheduled_event
    return scheduled_event(fn.name, trigger, due, function_region(fn), event_id)


class Scheduler:
    def __init__(self, sink, parse: Callable | None = None, payload: Callable | None = None,
                 clock: Callable[[], float] = time.time):
        self.sink = sink
        self.parse = parse or _default_parse
        self.payload = payload or _default_payload
        self.clock = clock
        self.entries: dict[tuple[str, str], Entry] = {}
        self.errors: dict[tuple[str, int], str] = {}   # (function, index): why it cannot run
        self.wake = asyncio.Event()
        self.stopping = False
        self.since = clock()
        self.state = "starting"
        # Due times this scheduler found decided already: on a shared store, those another
        # host fired or skipped first (status shows it: every host runs, one decides).
        self.already_handled = 0
        # Schedules that could not start because the store did not answer (a PostgreSQL
        # store down, or restarting, when the service started or reloaded): started again
        # from the loop once it answers, not left off until the next reload.
        self.unstarted: dict[tuple[str, str], tuple] = {}
        self.start_retry_at: float | None = None

    # --- which schedules ------------------------------------------------------------------------
    async def reconcile(self, functions) -> None:
        """Run the enabled schedules of `functions` (FunctionConfigs): keep those unchanged,
        start the new ones (dealing with what they missed), drop the others."""
        wanted: dict[tuple[str, str], tuple] = {}
        for fn in functions:
            for trigger in getattr(fn, "schedules", ()):
                if trigger.enabled:
                    wanted[(fn.name, trigger.key)] = (fn, trigger)
                else:
                    try:
                        await self.sink.call(lambda conn, f=fn.name, k=trigger.key: (
                            store.set_paused(conn, f, k, True, self.clock())))
                    except backend.ERRORS as exc:
                        log.error("%s: could not note a disabled schedule: %s", fn.name, exc)
        for ident in list(self.entries):
            if ident not in wanted:
                del self.entries[ident]
        self.errors = {}
        self.unstarted = {}
        for ident, (fn, trigger) in wanted.items():
            entry = self.entries.get(ident)
            if entry is not None and entry.trigger == trigger:
                entry.fn = fn   # its caps or region may have changed: no effect on times
                continue
            self.entries.pop(ident, None)
            try:
                self.entries[ident] = await self._start(fn, trigger)
            except ValueError as exc:
                self.errors[(fn.name, trigger.index)] = str(exc)
                log.error("%s %s (%s): cannot be scheduled: %s", fn.name, route_of(trigger),
                          trigger.expression, exc)
            except backend.ERRORS as exc:
                self._not_started(ident, fn, trigger, exc)
        self.state = "running"
        self.wake.set()

    def _not_started(self, ident, fn, trigger, exc: Exception) -> None:
        if ident not in self.unstarted:
            log.error("%s %s (%s): not started, the store could not be read or written (%s); "
                      "trying again every %.0fs", fn.name, route_of(trigger),
                      trigger.expression, exc, RETRY_AFTER)
        self.unstarted[ident] = (fn, trigger)
        self.errors[(fn.name, trigger.index)] = \
            f"the store could not be read or written: {exc}; trying again"
        self.start_retry_at = self.clock() + RETRY_AFTER

    async def _start_unstarted(self) -> None:
        """Start the schedules the store kept from starting; stop at the first that fails
        again (the store is still down: the others would only wait for it too)."""
        for ident, (fn, trigger) in list(self.unstarted.items()):
            try:
                entry = await self._start(fn, trigger)
            except backend.ERRORS as exc:
                self._not_started(ident, fn, trigger, exc)
                return
            except ValueError as exc:   # parsed before: not expected, but not to retry
                del self.unstarted[ident]
                self.errors[(fn.name, trigger.index)] = str(exc)
                continue
            del self.unstarted[ident]
            self.errors.pop((fn.name, trigger.index), None)
            self.entries[ident] = entry
            log.info("%s %s (%s): started, the store answers again", fn.name,
                     route_of(trigger), trigger.expression)
        self.start_retry_at = None

    async def _start(self, fn, trigger) -> Entry:
        now = self.clock()
        key = trigger.key
        # Whole seconds: a rate() fires on them, so the event's `time` (to the second) is exact.
        anchor = await self.sink.call(lambda conn: store.first_seen(conn, fn.name, key,
                                                                    math.ceil(now)))
        schedule = self.parse(trigger.expression, trigger.timezone, anchor)
        st = await self.sink.call(lambda conn: store.state(conn, fn.name, key)) or {}
        baseline = st.get("last_due") or anchor
        if await self.sink.call(lambda conn: store.set_paused(conn, fn.name, key, False, now)):
            # Enabled again: what it passed while disabled was not missed, it was off.
            baseline = now
        missed = schedule.latest_between(baseline, now) if baseline < now else None
        next_due = schedule.next_after(max(baseline, now))
        if missed is not None:
            if trigger.missed == "latest":
                log.info("%s %s: fired late for %s, missed while the host was down or the "
                         "schedule was off", fn.name, route_of(trigger), _iso(missed))
                next_due = missed
            else:
                await self._skip(fn, trigger, route_of(trigger), missed, "Missed")
        return Entry(fn, trigger, schedule, next_due)

    # --- the loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        while not self.stopping:
            self.wake.clear()
            now = self.clock()
            if self.unstarted and (self.start_retry_at or 0) <= now:
                await self._start_unstarted()
            for entry in list(self.entries.values()):
                at = entry.wake_at()
                if at is not None and at <= now:
                    await self._fire_due(entry)
            now = self.clock()
            dues = [at for e in self.entries.values() if (at := e.wake_at()) is not None]
            if self.unstarted and self.start_retry_at is not None:
                dues.append(self.start_retry_at)
            timeout = MAX_SLEEP if not dues else min(max(min(dues) - now, 0.0), MAX_SLEEP)
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()

    async def _fire_due(self, entry: Entry) -> None:
        fn, trigger, due = entry.fn, entry.trigger, entry.next_due
        route = route_of(trigger)
        try:
            await self._fire_one(fn, trigger, route, due)
        except backend.ERRORS as exc:
            # Not stored: the same due time is tried again (late rather than never); said
            # once, not each second the store stays down.
            (log.error if entry.retry_at is None else log.debug)(
                "%s %s: firing for %s not stored (%s); trying again every %.0fs", fn.name,
                route, _iso(due), exc, RETRY_AFTER)
            entry.retry_at = self.clock() + RETRY_AFTER
            return
        if entry.retry_at is not None:
            log.info("%s %s: firing for %s stored, the store answers again", fn.name, route,
                     _iso(due))
        entry.retry_at = None
        now = self.clock()
        following = entry.schedule.next_after(due)
        if following is not None and following <= now:
            # The loop was held up past whole periods: the times between are missed.
            latest = entry.schedule.latest_between(due, now)
            if trigger.missed == "latest":
                following = latest
            else:
                await self._skip(fn, trigger, route, latest, "Missed")
                following = entry.schedule.next_after(now)
        entry.next_due = following

    async def _fire_one(self, fn, trigger, route: str, due: float) -> None:
        key = trigger.key
        if trigger.overlap == "forbid":
            def busy(conn):
                st = store.state(conn, fn.name, key)
                return st is not None and store.in_flight(conn, st["last_request_id"])
            if await self.sink.call(busy):
                log.info("%s %s: %s skipped, the previous firing is still queued or running "
                         "(overlap: forbid)", fn.name, route, _iso(due))
                await self._skip(fn, trigger, route, due, "Overlap")
                return
        request_id = str(uuid.uuid4())
        try:
            await self.sink.fire(fn, trigger, route, self.payload(fn, trigger, due, request_id),
                                 due, request_id=request_id, once=True)
        except store.AlreadyFired:
            # Another host sharing the store decided this time first (or this process did,
            # before a crash): its outcome stands.
            self.already_handled += 1
            log.debug("%s %s: %s was handled already", fn.name, route, _iso(due))

    async def _skip(self, fn, trigger, route: str, due: float, reason: str) -> None:
        """Record a scheduled time as skipped, unless it was handled already (by another host
        sharing the store): one outcome per due time."""
        try:
            await self.sink.skip(fn, trigger, route, due, reason, once=True)
        except store.AlreadyFired:
            self.already_handled += 1
            log.debug("%s %s: %s was handled already (not skipped here)", fn.name, route,
                      _iso(due))

    async def fire_now(self, fn, trigger) -> str | None:
        """A manual firing (`sora triggers fire`): enqueued now, whatever the overlap policy,
        leaving the schedule's own times as they are."""
        now = self.clock()
        request_id = str(uuid.uuid4())
        return await self.sink.fire(fn, trigger, route_of(trigger),
                                    self.payload(fn, trigger, now, request_id), now,
                                    request_id=request_id, advance=False)

    def next_due(self, function: str, key: str) -> float | None:
        entry = self.entries.get((function, key))
        return entry.next_due if entry is not None else None


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
