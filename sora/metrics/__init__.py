"""Prometheus metrics (`GET /metrics`): counters and histograms in prometheus_client's
multiprocess mode under stable slot ids (registry, slots, definitions), and figures read at
scrape time (live, processes); exposition merges both. docs/architecture.md, "Metrics"."""
