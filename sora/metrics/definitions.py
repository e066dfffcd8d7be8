"""Every counter and histogram Sora writes, in one place (names, labels, buckets), and the
helpers that count into them.

They are made per process by `sora.metrics.registry.start` (after it has pointed
prometheus_client at the process's slot files), never at import: a process that does not count
makes no files. Live figures (instances, queues, events, process metrics) are not here: the
scrape reads them (sora.metrics.live).

Label values are bounded: function names are checked against the function-name pattern,
versions must be `$LATEST` or a number, statuses and triggers come from a fixed list; anything
else is counted under `other`, so no caller or function can grow the series without end.
"""
from __future__ import annotations

import re
from bisect import bisect_left

from prometheus_client import Counter, Histogram

from ..config import FUNCTION_NAME_RE

STATUSES = ("ok", "error", "timeout", "crashed", "throttled")
TRIGGERS = ("http", "invoke", "event", "schedule", "file")
VERSION_RE = re.compile(r"^(\$LATEST|[0-9]{1,9})$")
OTHER = "other"
CHILDREN_MAX = 10_000   # label children cached by raw values (beyond: looked up each time)

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0, 300.0, 900.0)
INIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# The route templates sora_http_requests_total uses (never a raw path: that is the caller's).
ROUTES = ("/functions/{name}", "/2015-03-31/functions/{name}/invocations",
          "/2015-03-31/functions/...", "/api/...", "/ui/...", "/metrics", "/healthz", OTHER)


def function_label(name: str) -> str:
    """A function's name as a label: NAME of NAME:QUALIFIER, `other` if it is no name."""
    name = name.partition(":")[0]
    return name if FUNCTION_NAME_RE.match(name) else OTHER


def version_label(version: str) -> str:
    return version if VERSION_RE.match(version) else OTHER


def trigger_label(trigger: str) -> str:
    """The trigger's kind: `schedule:0` -> `schedule`."""
    kind = trigger.partition(":")[0].partition("+")[0]
    return kind if kind in TRIGGERS else OTHER


def status_label(status: str) -> str:
    return status if status in STATUSES else OTHER


def route_of(path: str) -> str:
    """The route template of a request path (its label)."""
    if path.startswith("/functions/"):
        return "/functions/{name}"
    if path.startswith("/2015-03-31/"):
        if path.startswith("/2015-03-31/functions/") and path.endswith("/invocations"):
            return "/2015-03-31/functions/{name}/invocations"
        return "/2015-03-31/functions/..."
    if path.startswith("/api/"):
        return "/api/..."
    if path == "/ui" or path.startswith("/ui/"):
        return "/ui/..."
    if path == "/metrics":
        return "/metrics"
    if path == "/healthz":
        return "/healthz"
    return OTHER


def observe_many(child, milliseconds: list[float]) -> None:
    """What `child.observe(ms / 1000)` for each value would do, with one write per bucket
    touched and one for the sum: the values are sorted into buckets here (bisect: a value
    goes to the first bucket whose bound is >= it, as observe() does), then each bucket's
    count is added at once. Uses the histogram child's `_upper_bounds`, `_buckets` and `_sum`
    (prometheus_client's own fields; tests/unit/test_metrics_batching.py checks the result
    against observe())."""
    bounds = child._upper_bounds
    counts: dict[int, int] = {}
    total = 0.0
    for ms in milliseconds:
        seconds = max(0.0, ms) / 1000
        total += seconds
        i = bisect_left(bounds, seconds)
        counts[i] = counts.get(i, 0) + 1
    for i, n in counts.items():
        child._buckets[i].inc(n)
    child._sum.inc(total)


class SoraMetrics:
    """The counters and histograms of one process (all of them: a process only writes files
    for the series it touches)."""

    def __init__(self):
        self.invocations = Counter(
            "sora_invocations", "Invocations by how they ended (throttled: refused before "
            "they ran, counted by the gateway and the dispatcher; the rest from the records).",
            ["function", "version", "trigger", "status"], registry=None)
        self.duration = Histogram(
            "sora_invocation_duration_seconds", "How long invocations ran (from the records).",
            ["function"], buckets=DURATION_BUCKETS, registry=None)
        self.init_duration = Histogram(
            "sora_init_duration_seconds", "Init (cold start) durations of instances that "
            "served an invocation (from the records).", ["function"], buckets=INIT_BUCKETS,
            registry=None)
        self.cold_starts = Counter(
            "sora_cold_starts", "Invocations served by a new instance (cold starts).",
            ["function"], registry=None)
        self.http_requests = Counter(
            "sora_http_requests", "HTTP requests the gateway answered, by route template and "
            "status code.", ["route", "code"], registry=None)
        # Label children by their raw values: a dict lookup per count rather than labels()'
        # checks and the label functions; at most CHILDREN_MAX raw keys are kept.
        self._http_children: dict[tuple[str, int], object] = {}
        self._record_children: dict[tuple, tuple] = {}

    def count_records(self, records: list[tuple]) -> None:
        """Count committed invocation records, as sora.store.recorder.parse makes them:
        (request id, function, version, trigger, start, duration ms, status, error type,
        cold, error message, max memory MB, init duration ms).

        Summed over the batch first, then written once per series: each write to a
        multiprocess value takes its lock and packs into its mmap'd file, and a histogram's
        observe() walks its buckets in Python; per record that was ~5 us, in the recorder's
        loop. Here a record costs a dict lookup and a list append, and a batch (one commit)
        a handful of writes, so the counts still reach the files with the commit."""
        per_series: dict[tuple, list] = {}
        for record in records:
            key = (record[1], record[2], record[3], record[6])
            entry = per_series.get(key)
            if entry is None:
                entry = per_series[key] = [0, [], 0, []]   # records, ms, cold, init ms
            entry[0] += 1
            entry[1].append(record[5])
            if record[8]:
                entry[2] += 1
            if len(record) > 11 and record[11] is not None:
                entry[3].append(record[11])
        # The histograms and cold starts are per function: a function's series share them.
        durations: dict[object, list[float]] = {}
        inits: dict[object, list[float]] = {}
        for key, (n, spans, cold, init_spans) in per_series.items():
            invocations, duration, cold_starts, init_duration = self._record_children_of(key)
            invocations.inc(n)
            durations.setdefault(duration, []).extend(spans)
            if cold:
                cold_starts.inc(cold)
            if init_spans:
                inits.setdefault(init_duration, []).extend(init_spans)
        for histograms in (durations, inits):
            for child, spans in histograms.items():
                observe_many(child, spans)

    def _record_children_of(self, key: tuple) -> tuple:
        """(invocations, duration, cold starts, init duration) children of a record's raw
        (function, version, trigger, status)."""
        found = self._record_children.get(key)
        if found is None:
            function = function_label(key[0])
            found = (self.invocations.labels(function, version_label(key[1]),
                                             trigger_label(key[2]), status_label(key[3])),
                     self.duration.labels(function), self.cold_starts.labels(function),
                     self.init_duration.labels(function))
            if len(self._record_children) < CHILDREN_MAX:
                self._record_children[key] = found
        return found

    def count_throttled(self, key: str, trigger: str) -> None:
        """A call refused before it ran (its function's queue full, or no instance freed up
        in time): no record is made of it, so the refusing process counts it."""
        name, _, qualifier = key.partition(":")
        self.invocations.labels(function_label(name), version_label(qualifier or "$LATEST"),
                                trigger_label(trigger), "throttled").inc()

    def count_http(self, route: str, code: int, n: int = 1) -> None:
        child = self._http_children.get((route, code))
        if child is None:
            child = self._http_children[(route, code)] = \
                self.http_requests.labels(route, str(code))
        child.inc(n)
