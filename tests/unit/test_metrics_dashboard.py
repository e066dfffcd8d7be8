"""deploy/grafana/sora.json: valid JSON that Grafana imports (panels with targets, the
function variable), whose every query names only metrics Sora exposes."""
import json
import re
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "sora.json"
EXPOSED = {"sora_invocations_total", "sora_invocation_duration_seconds_bucket",
           "sora_init_duration_seconds_bucket", "sora_cold_starts_total", "sora_instances",
           "sora_queued_requests", "sora_async_events", "sora_function_up",
           "sora_http_requests_total", "sora_process_cpu_seconds_total",
           "sora_process_resident_memory_bytes", "sora_process_open_fds"}


def test_dashboard_queries_name_only_exposed_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "function"} <= variables
    used = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
            used |= set(re.findall(r"\bsora_[a-z_]+", expr))
    assert used <= EXPOSED, used - EXPOSED
    assert {"sora_invocations_total", "sora_instances", "sora_function_up"} <= used
