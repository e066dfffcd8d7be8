"""What a scrape shows (sora.metrics.live, definitions, exposition) from a made-up status:
figures per function, duplicates merged, labels bounded and escaped."""
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sora.metrics import exposition
from sora.metrics.definitions import SoraMetrics, route_of
from sora.metrics.live import ProcessFigures, Snapshot

STATUS = {
    "status": "degraded",
    "functions": {
        "hello": {"state": "RUNNING", "pid": 10, "busy": 2, "idle": 1, "starting": 0,
                  "queued": 5},
        "down": {"state": "FATAL", "pid": None},
        # Broken folders' names need not be function names: both become one `other`.
        "bad name\n": {"state": "FATAL"},
        'evil"}': {"state": "FATAL", "busy": "x"},
    },
}


def samples(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_live_figures_from_status_events_and_processes():
    snapshot = Snapshot(STATUS, {"hello": {"queued": 3, "leased": 1, "dead": 2},
                                 "hello:2": {"queued": 1, "leased": 0, "dead": 0}},
                        [ProcessFigures("supervisor", 1.5, 1 << 20, 12, 1000.0),
                         ProcessFigures("worker-hello", 0.5, 2 << 20, None, 1001.0)])
    text = exposition.render(None, snapshot).decode()
    got = samples(text)
    assert got[("sora_instances", (("function", "hello"), ("state", "busy")))] == 2
    assert got[("sora_instances", (("function", "hello"), ("state", "idle")))] == 1
    assert got[("sora_queued_requests", (("function", "hello"),))] == 5
    assert got[("sora_function_up", (("function", "hello"),))] == 1
    assert got[("sora_function_up", (("function", "down"),))] == 0
    assert got[("sora_function_up", (("function", "other"),))] == 0
    # A version's events count under its function.
    assert got[("sora_async_events", (("function", "hello"), ("state", "queued")))] == 4
    assert got[("sora_async_events", (("function", "hello"), ("state", "dead")))] == 2
    assert got[("sora_process_cpu_seconds_total", (("process", "supervisor"),))] == 1.5
    assert got[("sora_process_resident_memory_bytes", (("process", "worker-hello"),))] == \
        2 << 20
    assert ("sora_process_open_fds", (("process", "worker-hello"),)) not in got
    assert "evil" not in text and "bad name" not in text
    # One series per label set (Prometheus refuses a scrape with a duplicate).
    lines = [line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")]
    assert len(lines) == len(set(lines))


def test_no_status_still_scrapes():
    assert samples(exposition.render(None, Snapshot({})).decode()) == {}


def registry_of(metrics: SoraMetrics) -> CollectorRegistry:
    registry = CollectorRegistry()
    for metric in (metrics.invocations, metrics.duration, metrics.init_duration,
                   metrics.cold_starts, metrics.http_requests):
        registry.register(metric)
    return registry


def record(function="hello", version="$LATEST", trigger="http", status="ok", duration=12.0,
           cold=0, init=None):
    return ("rid", function, version, trigger, 0.0, duration, status, None, cold, None, None,
            init)


def test_records_are_counted_with_bounded_labels():
    metrics = SoraMetrics()
    metrics.count_records([
        record(), record(status="error"), record(trigger="schedule:0", cold=1, init=250.0),
        record(version="3", status="timeout", duration=3000.0),
        # What no worker sends, but a label never carries as it is.
        record(function='x"}\nsora_fake 1', version='1"}\nsora_fake 1', trigger="a\nb",
               status="weird\""),
    ])
    metrics.count_throttled("hello:3", "invoke+tail")
    metrics.count_http(route_of("/functions/hello/a/b"), 200)
    metrics.count_http(route_of('/x"}\n'), 404)
    text = generate_latest(registry_of(metrics)).decode()
    assert "sora_fake" not in text
    got = samples(text)

    def inv(**labels):
        return got.get(("sora_invocations_total", tuple(sorted(labels.items()))), 0)
    assert inv(function="hello", version="$LATEST", trigger="http", status="ok") == 1
    assert inv(function="hello", version="$LATEST", trigger="http", status="error") == 1
    assert inv(function="hello", version="$LATEST", trigger="schedule", status="ok") == 1
    assert inv(function="hello", version="3", trigger="http", status="timeout") == 1
    assert inv(function="hello", version="3", trigger="invoke", status="throttled") == 1
    assert inv(function="other", version="other", trigger="other", status="other") == 1
    assert got[("sora_cold_starts_total", (("function", "hello"),))] == 1
    assert got[("sora_init_duration_seconds_count", (("function", "hello"),))] == 1
    assert got[("sora_invocation_duration_seconds_count", (("function", "hello"),))] == 4
    assert got[("sora_invocation_duration_seconds_bucket", (("function", "hello"),
                                                            ("le", "0.025")))] == 3
    assert got[("sora_http_requests_total", (("code", "200"),
                                             ("route", "/functions/{name}")))] == 1
    assert got[("sora_http_requests_total", (("code", "404"), ("route", "other")))] == 1


def test_route_templates():
    assert route_of("/functions/a") == "/functions/{name}"
    assert route_of("/2015-03-31/functions/a/invocations") == \
        "/2015-03-31/functions/{name}/invocations"
    assert route_of("/2015-03-31/functions/a") == "/2015-03-31/functions/..."
    assert route_of("/api/functions") == "/api/..."
    assert route_of("/ui/") == "/ui/..."
    assert route_of("/metrics") == "/metrics"
    assert route_of("/healthz") == "/healthz"
    assert route_of("/metrics/x") == "other"
