"""The recorder's counting is summed per series over a batch (sora.metrics.definitions
count_records, observe_many): the same counts as one observe() per record, with a handful
of writes to the values per batch rather than several per record."""
import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest, values

from sora.metrics.definitions import DURATION_BUCKETS, SoraMetrics, observe_many

from tests.unit.test_metrics_collector import record, registry_of, samples


def test_observe_many_matches_observe():
    rng = random.Random(19)
    # Bucket bounds exactly (a value equal to a bound belongs to it), between them, beyond
    # the last, zero and below zero (clamped to zero, as the recorder does).
    values_ms = [b * 1000 for b in DURATION_BUCKETS] + [0.0, -5.0, 2e6] + \
        [rng.uniform(0, 400_000) for _ in range(500)]
    one, many = (Histogram("h", "h", ["f"], buckets=DURATION_BUCKETS, registry=None)
                 for _ in range(2))
    for ms in values_ms:
        one.labels("a").observe(max(0.0, ms) / 1000)
    observe_many(many.labels("a"), values_ms)
    got_one, got_many = (samples(generate_latest(registry_with(h)).decode())
                         for h in (one, many))
    assert got_one.keys() == got_many.keys()
    for key, value in got_one.items():
        assert abs(got_many[key] - value) <= 1e-9 * max(1.0, value), key


def registry_with(metric) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(metric)
    return registry


def test_a_batch_writes_each_series_once(monkeypatch):
    """100 records of two series: before, every record was an inc() and an observe() (a sum
    and a bucket) of its own, 300 writes in all; now each series' values are written once."""
    writes = []

    class CountedValue(values.MutexValue):
        def inc(self, amount):
            writes.append(amount)
            super().inc(amount)

    monkeypatch.setattr(values, "ValueClass", CountedValue)
    metrics = SoraMetrics()
    batch = [record(duration=3.0) for _ in range(60)] + \
        [record(status="error", duration=40.0, cold=1, init=120.0) for _ in range(40)]
    metrics.count_records(batch)
    # invocations x2, one duration bucket per series and the duration sum, cold starts,
    # init duration's bucket and sum
    assert len(writes) <= 8, writes
    got = samples(generate_latest(registry_of(metrics)).decode())
    inv = ("sora_invocations_total", (("function", "hello"), ("status", "ok"),
                                      ("trigger", "http"), ("version", "$LATEST")))
    assert got[inv] == 60
    assert got[("sora_invocation_duration_seconds_count", (("function", "hello"),))] == 100
    assert got[("sora_invocation_duration_seconds_bucket", (("function", "hello"),
                                                            ("le", "0.005")))] == 60
    assert got[("sora_cold_starts_total", (("function", "hello"),))] == 40
    assert got[("sora_init_duration_seconds_count", (("function", "hello"),))] == 40
    assert abs(got[("sora_invocation_duration_seconds_sum", (("function", "hello"),))]
               - (60 * 0.003 + 40 * 0.04)) < 1e-9
