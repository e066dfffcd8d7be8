"""The dispatcher: runs the accepted asynchronous events, at least once each.

One process per host, supervised like the recorder. It leases due events from the queue
(`sora.store.queue`), sends each straight to a worker of its function exactly like a gateway
sends a request (same client, `sora.messaging.client`, trigger `event`), and settles it by the
answer:

- success: acknowledged (purged);
- the worker holding it was lost (it died, fell silent, its host was cut off: WORKER_LOST):
  queued again at once to run elsewhere, the attempt stored but not counted, until its age
  runs out: an event lost with a host is run again, at least once, whatever its retries;
- the function failed (error, timeout, crash, no answer): the attempt and its error
  are stored; it is retried after `retryDelaySeconds`, doubling, while retries
  (`maximumRetryAttempts`) and age (`maximumEventAgeInSeconds`) last, else dead-lettered;
- the function could not take it (throttled, not ready yet, setup failed): back in the queue
  without using up an attempt, until its age runs out (checked then, and every
  LEASE_SWEEP_INTERVAL for events that have waited that long without an attempt);
- an event it cannot be given: dead-lettered at once; so are the events of a function that is
  no longer on the host.

The functions are this host's and those only joined hosts serve, by the config their host
sent in MEMBERS (sora.function_table): their events are leased and run like local ones, and
wait (uncounted, until their age runs out) while no host serving them is connected. An event
of a function that is known nowhere is dead-lettered, but on the main host of a cluster only
once the first MEMBERS came and only after the default event age: it may be a joined host's,
whose host is away while this dispatcher started.

At most `maxConcurrency` events of a function run at once (per host: on a PostgreSQL store
each host's dispatcher leases on its own). Gateways nudge their host's dispatcher after storing
an event (`events.sock`), so it starts at once; it also looks every IDLE_POLL seconds.

Leases carry their owner (`<host id>#<pid>`, sora.store.backend.host_id): at start a
dispatcher returns its own host's leases to the queue (only a dispatcher of this host that is
gone could hold them), never another host's; expired leases of any owner are returned every
LEASE_SWEEP_INTERVAL. A lease covers the function's timeout, the broker's wait and
LEASE_MARGIN, so only a lost run's lease expires; and it settles an event only while its own
lease is the event's last. On a store shared by several hosts (PostgreSQL), an event of a
function this host does not know may be another host's: it is dead-lettered only once older
than the default event age. While the store cannot be reached, the loop waits and tries again,
and a run's outcome is kept and settled once the store is back (until its lease runs out).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time

import zmq

from .. import protocol as p
from ..config import EventInvokeConfig, FunctionConfig, HostConfig
from ..config_snapshot import load_host_config_of_child
from ..function_table import FunctionTable
from ..messaging.client import InvocationClient, BrokerTimeout, BrokerUnavailable, host_keys
from ..hotpath import quiet_gc
from ..metrics import registry as metrics_registry
from ..store import backend, queue
from ..store.records import TRIGGER_KINDS

log = logging.getLogger("sora.dispatcher")

IDLE_POLL = 1.0
LEASE_MARGIN = 30.0          # a lease outlives the call's wait, so only a lost one expires
LEASE_SWEEP_INTERVAL = 10.0
STORE_RETRY = 0.5            # the store could not be reached: try again this much later
# PostgreSQL: the longest wait for a pooled connection. The store's calls run on the event
# loop (as SQLite's always did), so while the database is down each call holds the loop this
# long, not the backend's default 5 s.
STORE_WAIT_MS = 1000
MAX_RETRY_DELAY = 300.0
THROTTLED_DELAY = 0.5        # the function's queue was full: try again soon
NOT_READY_DELAY = 2.0        # the function is starting, backing off or failed

# Answers that mean the function did not take the event: not an attempt. NOT_FOUND is one of
# them: the dispatcher sends only events of functions in its config, so the control plane
# does not know the function yet (the host is starting); a function gone from the config is
# dead-lettered by the sweep instead.
NOT_TAKEN = {p.NO_CAPACITY: THROTTLED_DELAY, p.THROTTLED: THROTTLED_DELAY,
             p.UNAVAILABLE: NOT_READY_DELAY,
             p.NOT_FOUND: NOT_READY_DELAY}
# Of those, a full queue or no instance in time: counted as `throttled` invocations.
THROTTLING = (p.NO_CAPACITY, p.THROTTLED)
# The worker holding the event was lost: it runs again elsewhere, not as a used-up attempt.
WORKER_LOST_DELAY = 0.2
# Answers that no retry can change.
HOPELESS = {p.BAD_REQUEST: "InvalidEvent"}


def meta_of(event: queue.Event) -> bytes:
    """The trigger the worker records the run as: a scheduled or file trigger's firing (route
    `schedule:N` / `file:N`, sora.triggers) as that route, any other event as `event`."""
    kind, _, index = event.trigger.partition(":")
    if kind in TRIGGER_KINDS and index.isdigit():
        return event.trigger.encode()
    return p.TRIGGER_EVENT


def retry_delay(fn: FunctionConfig, attempts: int) -> float:
    """The wait after the `attempts`-th failed attempt."""
    return min(fn.eventInvoke.retryDelaySeconds * 2 ** (attempts - 1), MAX_RETRY_DELAY)


class Dispatcher:
    metrics = None   # its SoraMetrics once run() counts (server.metrics)

    def __init__(self, config: HostConfig, client: InvocationClient | None = None):
        self.config = config
        self.state_dir = config.stateDir
        self.client = client if client is not None else InvocationClient(
            p.control_endpoint(self.state_dir), self.state_dir, host_keys(config))
        # This host's functions and those only joined hosts serve (from MEMBERS).
        self.functions = FunctionTable(config, self.client)
        self.running: dict[str, int] = {}
        self.tasks: set[asyncio.Task] = set()
        self.stopping = False
        self.wake = asyncio.Event()
        self.conn = None     # a sora.store.backend connection, opened by run()
        self.owner: str | None = None    # what this dispatcher's leases carry
        self.released = False            # its host's leases of before it started returned
        self.store_down = False          # the last look at the store failed (logged once)

    def _on_signal(self) -> None:
        # Run by the event loop (loop.add_signal_handler), not in signal context: only flag.
        self.stopping = True
        self.wake.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)
        self.owner = queue.lease_owner(backend.host_id(self.config), os.getpid())
        if self.config.server.metrics:   # its throttled events (sora.metrics.definitions)
            self.metrics = metrics_registry.start(self.state_dir, "dispatcher")
        client = self.client
        client.start()   # subscribed at once: the functions of joined hosts come in MEMBERS
        ctx = zmq.Context()
        nudges = ctx.socket(zmq.PULL)
        nudges.bind(p.events_endpoint(self.state_dir))
        nudge_fd = nudges.getsockopt(zmq.FD)
        loop.add_reader(nudge_fd, self._drain_nudges, nudges)
        quiet_gc()
        log.info("dispatcher %d ready", os.getpid())
        try:
            await self._loop(client)
            if self.tasks:
                log.info("stopping: waiting for %d running event(s)", len(self.tasks))
                await asyncio.wait(self.tasks, timeout=max(
                    1.0, self.config.server.gracefulTimeout - 1.0))
        finally:
            loop.remove_reader(nudge_fd)
            nudges.close(linger=0)
            ctx.term()
            client.close()
            if self.conn is not None:
                self.conn.close()
        return 0

    def _drain_nudges(self, sock: zmq.Socket) -> None:
        # ZeroMQ's fd is edge-triggered: read until nothing is left.
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            sock.recv(zmq.NOBLOCK)
            self.wake.set()

    def _release_own_leases(self, now: float) -> None:
        # A queue.db is this host's alone: every lease in it is of a dispatcher that is gone
        # (whatever host name it ran under). A shared store: only this host's.
        shared = self.conn.dialect == "postgresql"
        released = queue.release_leases(self.conn, now, expired_only=False,
                                        host_id=backend.host_id(self.config) if shared else None)
        self.released = True
        if released:
            log.info("%d event(s) leased before a crash or stop are queued again", released)

    async def _loop(self, client: InvocationClient) -> None:
        next_sweep = time.monotonic()
        while not self.stopping:
            self.wake.clear()
            try:
                timeout = self._look(client, next_sweep <= time.monotonic())
            except backend.SchemaTooNew:
                raise   # no wait mends that: the host's log says what to do
            except backend.ERRORS as exc:
                # The store is down or restarting (its pool reconnects by itself): nothing is
                # leased meanwhile; runs under way keep their outcome until it is back.
                if not self.store_down:
                    log.error("the event store cannot be reached (%s); trying again", exc)
                self.store_down = True
                timeout = STORE_RETRY
            else:
                if self.store_down:
                    log.info("the event store is back")
                self.store_down = False
                if next_sweep <= time.monotonic():
                    next_sweep = time.monotonic() + LEASE_SWEEP_INTERVAL
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    def _look(self, client: InvocationClient, sweep: bool) -> float:
        """One look at the queue: the sweep when it is time, then lease and start what is
        due. Returns how long to wait before the next look (unless nudged)."""
        now = time.time()
        if self.conn is None:
            # Opened here, not at start, so a store that cannot be reached yet is waited for
            # like one lost later. NORMAL, not FULL: what the dispatcher commits (leases,
            # acknowledgements, retries) may be lost by a power cut, never by a crash, and
            # losing one only makes an event run again; the events themselves were committed
            # durably by the gateways.
            wait = {"busy_ms": STORE_WAIT_MS} if self.config.store.kind == "postgresql" else {}
            self.conn = backend.connect(self.config.store, self.state_dir, "queue",
                                        synchronous="NORMAL", **wait)
        if not self.released:
            self._release_own_leases(now)
        if sweep:
            if queue.release_leases(self.conn, now):
                log.warning("event leases ran out without an answer; queued again")
            for name in queue.queued_functions(self.conn, now):
                if not self.functions.knows(name):  # removed since accepted
                    self._bury_orphans(name, now)
            for fn in self.functions.functions():
                self._bury_expired(fn, now)
        # Events for a published version are stored under its key (`NAME:N`, resolved
        # when accepted) and run by that version's worker.
        for name in [*self.functions.names(), *queue.queued_versions(self.conn, now)]:
            self._start_due(client, name, now)
        due = queue.next_due(self.conn)
        return IDLE_POLL if due is None or due <= now else min(due - now, IDLE_POLL)

    def _bury_orphans(self, name: str, now: float) -> None:
        reason = "FunctionUnavailable" if self.config.knows(name) else "FunctionNotFound"
        older_than = float("inf")
        if getattr(self.conn, "dialect", "") == "postgresql":
            # A store shared by several hosts: it may be a function other hosts serve (or
            # one broken here that runs there). Theirs to run; only an event left waiting
            # past the default event age is dead.
            reason = "EventAgeExceeded"
            older_than = now - EventInvokeConfig().maximumEventAgeInSeconds
        elif reason == "FunctionNotFound" and self.config.cluster.listen:
            # The main host of a cluster: it may be a function of a joined host that is away
            # (this dispatcher started since, so never heard of it). Its events wait out the
            # default event age, as they would for the function itself.
            if self.client.members_version is None:
                return   # not even this host's control plane has spoken yet
            reason = "EventAgeExceeded"
            older_than = now - EventInvokeConfig().maximumEventAgeInSeconds
        n = queue.bury_expired(self.conn, name, older_than, reason)
        if n:
            log.error("%d event(s) for %s dead-lettered: %s", n, name, reason)

    def _bury_expired(self, fn: FunctionConfig, now: float) -> None:
        """Events that waited past their age without a failed attempt (the host was down, the
        function throttled or not ready); a failed attempt checks the age itself."""
        max_age = fn.eventInvoke.maximumEventAgeInSeconds
        expired = queue.bury_expired(self.conn, fn.name, now - max_age, "EventAgeExceeded")
        if expired:
            log.warning("%d event(s) for %s were older than %.0fs and were dead-lettered",
                        expired, fn.name, max_age)

    def _start_due(self, client: InvocationClient, name: str, now: float) -> None:
        fn = self.functions.get(name.partition(":")[0])   # a version: its function's settings
        if fn is None:
            return   # a version of a function gone since: its events age out
        free = fn.eventInvoke.maxConcurrency - self.running.get(name, 0)
        if free <= 0:
            return
        wait = self.functions.wait(name)
        for event in queue.lease(self.conn, name, free, now, wait + LEASE_MARGIN, self.owner):
            self.running[name] = self.running.get(name, 0) + 1
            task = asyncio.get_running_loop().create_task(self._run(client, fn, event, wait,
                                                                    name))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _run(self, client: InvocationClient, fn: FunctionConfig, event: queue.Event,
                   wait: float, key: str | None = None) -> None:
        """Run one event; `key`: the data path's key it runs on (`NAME:N` for a published
        version; default the function's name)."""
        key = key or fn.name
        start = time.time()
        began = time.monotonic()
        try:
            try:
                status, body, *_ = await client.invoke(key, event.request_id.encode(),
                                                       event.payload, wait, meta_of(event))
            except BrokerUnavailable:   # not sent (no control plane, no worker): not an attempt
                status, body = p.UNAVAILABLE, p.error_body(
                    "Sora.BrokerUnavailable", "The host's control plane is not running")
            except BrokerTimeout:
                status, body = p.TIMEOUT, p.error_body(
                    "Sora.NoAnswer", f"No answer from the function's worker within {wait:.0f}s")
            await self._settle_while_leased(fn, event, status, body, start,
                                            (time.monotonic() - began) * 1000)
        finally:
            self.running[key] -= 1
            self.wake.set()

    async def _settle_while_leased(self, fn: FunctionConfig, event: queue.Event,
                                   status: bytes, body: bytes, start: float,
                                   duration_ms: float) -> None:
        """Settle the run; while the store cannot be reached, try again until the lease is
        about to run out (then it runs again once the lease expires: nothing is lost)."""
        while True:
            if not self.store_down:   # while it is, the loop's looks find out when it is back
                try:
                    self.settle(fn, event, status, body, start, duration_ms)
                    return
                except backend.ERRORS as exc:
                    if not self.store_down:
                        log.error("the event store cannot be reached (%s); trying again", exc)
                    self.store_down = True
            if time.time() + STORE_RETRY >= event.lease_until - 1.0:
                log.error("could not settle event %s (the store cannot be reached); it runs "
                          "again once its lease runs out", event.request_id)
                return
            await asyncio.sleep(STORE_RETRY)

    def settle(self, fn: FunctionConfig, event: queue.Event, status: bytes, body: bytes,
               start: float, duration_ms: float) -> None:
        if status == p.OK:
            if not queue.ack(self.conn, event.id, event.owner):
                self._lost_lease(event)
            return
        error_type, message = p.parse_error(body)
        attempt = queue.Attempt(start, duration_ms, error_type, message)
        now = time.time()
        age_limit = event.accepted + fn.eventInvoke.maximumEventAgeInSeconds
        if status in HOPELESS:
            self._bury(event, HOPELESS[status], attempt)
        elif status == p.WORKER_LOST:
            due = now + WORKER_LOST_DELAY
            if due > age_limit:
                self._bury(event, "EventAgeExceeded", attempt)
            else:
                log.warning("event %s for %s was lost with its worker (%s); running it again",
                            event.request_id, fn.name, message[:200])
                self._requeue(event, due, attempt, counted=False)
        elif status in NOT_TAKEN:
            if status in THROTTLING and self.metrics is not None:
                self.metrics.count_throttled(event.function, meta_of(event).decode())
            due = now + NOT_TAKEN[status]
            if due > age_limit:
                self._bury(event, "EventAgeExceeded", attempt)
            else:
                self._requeue(event, due, None, counted=False)
        elif event.attempts > fn.eventInvoke.maximumRetryAttempts:
            self._bury(event, "RetriesExhausted", attempt)
        else:
            due = now + retry_delay(fn, event.attempts)
            if due > age_limit:
                self._bury(event, "EventAgeExceeded", attempt)
            else:
                log.info("event %s for %s failed (attempt %d, %s); retrying in %.1fs",
                         event.request_id, fn.name, event.attempts, error_type, due - now)
                self._requeue(event, due, attempt)

    def _requeue(self, event: queue.Event, due: float, attempt: queue.Attempt | None,
                 counted: bool = True) -> None:
        if not queue.requeue(self.conn, event.id, due, attempt, counted, event.owner):
            self._lost_lease(event)

    def _lost_lease(self, event: queue.Event) -> None:
        # The lease ran out and another dispatcher leased the event since (or it was
        # dead-lettered, or acknowledged): that one settles it.
        log.warning("event %s for %s: the lease ran out before it was settled; its next "
                    "lease settles it", event.request_id, event.function)

    def _bury(self, event: queue.Event, reason: str, attempt: queue.Attempt) -> None:
        log.warning("event %s for %s dead-lettered: %s (last error %s: %s)", event.request_id,
                    event.function, reason, attempt.error_type, attempt.error_message[:200])
        if not queue.bury(self.conn, event.id, reason, attempt, event.owner):
            self._lost_lease(event)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sora.events.dispatcher")
    parser.add_argument("--config", required=True, help="path to host-config.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s [dispatcher %(process)d] %(levelname)s %(message)s")
    return asyncio.run(Dispatcher(load_host_config_of_child(args.config)).run())


if __name__ == "__main__":
    sys.exit(main())
