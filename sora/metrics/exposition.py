"""One scrape: every slot's counters merged (prometheus_client's MultiProcessCollector over the
host's metrics folder) and the live figures, in the Prometheus text format."""
from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from .live import LiveCollector, Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(metrics_dir: str | None, snapshot: Snapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    if metrics_dir is not None and os.path.isdir(metrics_dir):
        MultiProcessCollector(registry, path=metrics_dir)
    registry.register(LiveCollector(snapshot))
    return generate_latest(registry)
