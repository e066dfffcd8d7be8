"""The figures /metrics reads at scrape time rather than counts: instances by state, queued
calls, whether each function serves, async events by state, and each Sora process's CPU,
memory, fds and start time.

`LiveCollector` turns a snapshot (the supervisor's STATUS, queue.db's event counts, the process
list of `sora.metrics.processes`) into metric families; it does no I/O of its own, so the unit
tests feed it a made-up status.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .definitions import function_label

INSTANCE_STATES = ("busy", "idle", "starting")
EVENT_STATES = ("queued", "leased", "dead")


@dataclass
class ProcessFigures:
    process: str          # role and slot: gateway-http-0, worker-hello, supervisor, ...
    cpu_seconds: float
    resident_bytes: int
    open_fds: int | None  # None where it cannot be read (another user's process)
    start_time: float


@dataclass
class Snapshot:
    status: dict                                    # the control plane's STATUS (/healthz)
    events: dict[str, dict[str, int]] = field(default_factory=dict)   # queue.counts
    processes: list[ProcessFigures] = field(default_factory=list)


def _count(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and value >= 0 else 0.0


class LiveCollector:
    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot

    def collect(self):
        functions = self.snapshot.status.get("functions") or {}
        instances = GaugeMetricFamily("sora_instances", "Instances of each function by state "
                                      "(from the workers' heartbeats, summed over hosts).",
                                      labels=["function", "state"])
        queued = GaugeMetricFamily("sora_queued_requests", "Calls waiting for an instance.",
                                   labels=["function"])
        up = GaugeMetricFamily("sora_function_up", "1: the function serves (RUNNING); 0: "
                               "starting, backing off, FATAL or broken.", labels=["function"])
        # By label: names that are no function name (a broken folder's) all become `other`,
        # and one label set may appear only once in an exposition.
        figures: dict[str, list[float]] = {}
        for name, info in functions.items():
            if not isinstance(info, dict):
                continue
            label = function_label(name)
            serving = 1.0 if info.get("state") == "RUNNING" else 0.0
            row = [_count(info.get(key)) for key in (*INSTANCE_STATES, "queued")] + [serving]
            if label in figures:
                known = figures[label]
                row = [a + b for a, b in zip(known[:4], row[:4])] + [min(known[4], serving)]
            figures[label] = row
        for label in sorted(figures):
            row = figures[label]
            for i, state in enumerate(INSTANCE_STATES):
                instances.add_metric([label, state], row[i])
            queued.add_metric([label], row[3])
            up.add_metric([label], row[4])
        yield instances
        yield queued
        yield up

        events = GaugeMetricFamily("sora_async_events", "Asynchronous events by state "
                                   "(queue.db).", labels=["function", "state"])
        # Every function has its series (0 with no events), so a dashboard sees it from the start.
        summed = {label: dict.fromkeys(EVENT_STATES, 0.0) for label in figures}
        for key, states in self.snapshot.events.items():
            per = summed.setdefault(function_label(key), dict.fromkeys(EVENT_STATES, 0.0))
            for state in EVENT_STATES:
                per[state] += _count(states.get(state))
        for name in sorted(summed):
            for state in EVENT_STATES:
                events.add_metric([name, state], summed[name][state])
        yield events

        cpu = CounterMetricFamily("sora_process_cpu_seconds", "CPU time (user and system) "
                                  "of each Sora process.", labels=["process"])
        memory = GaugeMetricFamily("sora_process_resident_memory_bytes", "Resident memory of "
                                   "each Sora process.", labels=["process"])
        fds = GaugeMetricFamily("sora_process_open_fds", "Open file descriptors of each Sora "
                                "process.", labels=["process"])
        started = GaugeMetricFamily("sora_process_start_time_seconds", "Start time of each "
                                    "Sora process (Unix time).", labels=["process"])
        for proc in self.snapshot.processes:
            cpu.add_metric([proc.process], proc.cpu_seconds)
            memory.add_metric([proc.process], proc.resident_bytes)
            if proc.open_fds is not None:
                fds.add_metric([proc.process], proc.open_fds)
            started.add_metric([proc.process], proc.start_time)
        yield cpu
        yield memory
        yield fds
        yield started
