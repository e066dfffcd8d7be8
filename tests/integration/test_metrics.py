"""GET /metrics against a real host with two gateway workers: counts match the calls made
whichever worker served them, survive kill -9 of a gateway worker and of the function's worker
(no double count, no reset, no new files), the route's scopes, and no injection into the
exposition."""
from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support import served, wait_for, write_function

pytestmark = pytest.mark.integration

ADMIN = "admin-key-0123456789abcdef"
INVOKE = "invoke-key-0123456789abcdef"
SCRAPER = "metrics-key-0123456789abcd"

# Fails when asked to (?fail=1): the error status is counted too.
FLAKY = """
exports.handler = async (event) => {
  if ((event.queryStringParameters || {}).fail) throw new Error('asked to fail');
  return { statusCode: 200, body: 'ok' };
};
"""

SLOW = """
exports.handler = async () => {
  await new Promise((resolve) => setTimeout(resolve, 400));
  return { statusCode: 200, body: 'ok' };
};
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("metrics")
    dirs = [write_function(base / "fns", "flaky", {"index.js": FLAKY}, name="flaky"),
            # One call at a time and none waiting: the others are refused (throttled).
            write_function(base / "fns", "narrow", {"index.js": SLOW}, name="narrow",
                           maxInstances=1, concurrency=1, maxQueued=0, timeout=1)]
    yield from served(base, dirs, https=False, api_key=ADMIN,
                      server={"gatewayWorkers": 2}, extra={"auth": {"apiKeys": [
                          {"name": "ops", "key": ADMIN, "scopes": ["admin"]},
                          {"name": "ci", "key": INVOKE, "scopes": ["invoke"]},
                          {"name": "prometheus", "key": SCRAPER, "scopes": ["metrics"]}]}})


def scrape(host, key=SCRAPER) -> str:
    r = requests.get(host.url + "/metrics", headers={"Authorization": f"Bearer {key}"},
                     timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return r.text


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value}; parsing it proves the exposition well formed."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def invocations(text: str, status: str, function: str = "flaky") -> float:
    key = ("sora_invocations_total", (("function", function), ("status", status),
                                      ("trigger", "http"), ("version", "$LATEST")))
    return samples(text).get(key, 0.0)


def http_count(text: str, route: str = "/functions/{name}") -> float:
    return sum(v for (name, labels), v in samples(text).items()
               if name == "sora_http_requests_total" and ("route", route) in labels)


def call(host, fail: bool = False) -> int:
    # A new connection each: gunicorn's two workers both take some of them.
    r = requests.get(host.url + "/functions/flaky" + ("?fail=1" if fail else ""),
                     headers={"Authorization": f"Bearer {INVOKE}", "Connection": "close"},
                     timeout=30)
    return r.status_code


def counted(host, ok: float, error: float) -> str:
    """The scrape once it shows these invocations, and as many function URL requests (the
    gateway writes its HTTP counts once a second)."""
    return wait_for(lambda: (t := scrape(host)) and invocations(t, "ok") == ok and
                    invocations(t, "error") == error and http_count(t) == ok + error and t,
                    timeout=20, what=f"{ok} ok and {error} error invocations counted")


def gateway_workers(host) -> list[psutil.Process]:
    master = host.health()["gateways"]["http"]["pid"]
    return psutil.Process(master).children()


def metric_files(host) -> set[str]:
    return set(os.listdir(host.base / "state" / "metrics"))


def test_counts_match_the_calls_across_gateway_workers_and_restarts(host):
    # Calls on new connections until both gateway workers have counted some (which worker
    # accepts a connection is the kernel's choice: 24 in a row once all went to one).
    codes = []
    both = {"counter_gateway-http-0.db", "counter_gateway-http-1.db"}

    def spread():
        codes.append(call(host, fail=len(codes) % 4 == 0))
        return len(codes) >= 24 and both <= metric_files(host)
    wait_for(spread, timeout=60, what="both gateway workers to count calls")
    ok, error = codes.count(200), codes.count(502)
    assert ok + error == len(codes) and error == (len(codes) + 3) // 4, codes
    text = counted(host, ok, error)
    files = metric_files(host)
    assert both | {"counter_recorder-0.db", "histogram_recorder-0.db"} <= files, files
    values = samples(text)
    assert values[("sora_invocation_duration_seconds_count", (("function", "flaky"),))] == \
        len(codes)
    assert values[("sora_cold_starts_total", (("function", "flaky"),))] >= 1
    assert values[("sora_function_up", (("function", "flaky"),))] == 1
    processes = {dict(labels)["process"] for name, labels in values
                 if name == "sora_process_resident_memory_bytes"}
    assert {"supervisor", "gateway-http", "gateway-http-0", "gateway-http-1", "recorder",
            "dispatcher", "worker-flaky"} <= processes, processes

    # kill -9 a gateway worker and the function's worker: the counts go on from where they
    # were (no reset, no double count) and no file is added.
    victim = gateway_workers(host)[0]
    victim.send_signal(signal.SIGKILL)
    wait_for(lambda: len(ws := gateway_workers(host)) == 2 and victim not in ws,
             what="gunicorn to replace its worker")
    host.kill_worker("flaky")
    codes = [call(host, fail=i % 4 == 0) for i in range(12)]
    assert codes.count(200) == 9 and codes.count(502) == 3, codes
    ok, error = ok + 9, error + 3
    text = counted(host, ok, error)
    assert metric_files(host) == files
    # The recorder too: what it had not committed is resent to the new one, counted once.
    recorder = host.health()["recorder"]["pid"]
    os.kill(recorder, signal.SIGKILL)
    codes = [call(host) for _ in range(5)]
    wait_for(lambda: (r := host.health()["recorder"])["state"] == "RUNNING" and
             r["pid"] != recorder, what="a new recorder")
    text = counted(host, ok + 5, error)
    assert metric_files(host) == files
    # Counts stay put (nothing counted twice by a late resend).
    assert invocations(scrape(host), "ok") == ok + 5


def test_throttled_calls_are_counted_by_the_gateway(host):
    def one(_):
        return requests.get(host.url + "/functions/narrow", timeout=30,
                            headers={"Authorization": f"Bearer {INVOKE}"}).status_code
    # 10 calls of 0.4 s at once, run one at a time: those not run in time are refused, 429
    # (its queue full) or 503 (no instance within its timeout, 1 s), and never recorded.
    with ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(one, range(10)))
    refused = codes.count(429) + codes.count(503)
    assert refused >= 1 and codes.count(200) + refused == 10, codes
    wait_for(lambda: (t := scrape(host)) and
             invocations(t, "throttled", "narrow") == refused and
             invocations(t, "ok", "narrow") == 10 - refused, timeout=20,
             what=f"{refused} throttled calls counted")


def test_live_figures(host):
    text = wait_for(lambda: (t := scrape(host)) and samples(t).get(
        ("sora_instances", (("function", "flaky"), ("state", "idle")))) and t,
        what="the idle instance in sora_instances")
    values = samples(text)
    assert values[("sora_queued_requests", (("function", "flaky"),))] == 0
    assert values[("sora_instances", (("function", "flaky"), ("state", "busy")))] == 0
    flaky = host.health()["functions"]["flaky"]
    assert {"busy", "idle", "starting", "queued"} <= set(flaky)


def test_scopes(host):
    url = host.url + "/metrics"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, headers={"Authorization": f"Bearer {INVOKE}"},
                        timeout=10).status_code == 403
    assert requests.get(url, headers={"Authorization": f"Bearer {SCRAPER}"},
                        timeout=10).status_code == 200
    assert requests.get(url, headers={"Authorization": f"Bearer {ADMIN}"},
                        timeout=10).status_code == 200
    # A metrics key reaches nothing else.
    scraper = {"Authorization": f"Bearer {SCRAPER}"}
    for path in ("/api/functions", "/functions/flaky", "/api/functions/flaky/logs"):
        assert requests.get(host.url + path, headers=scraper, timeout=10).status_code == 403
    assert "functions" not in requests.get(host.url + "/healthz", headers=scraper,
                                           timeout=10).json()


def test_a_callers_path_cannot_inject_into_the_exposition(host):
    bad = '/functions/x%22%7D%201%0Asora_injected%7Ba%3D%22b/'
    r = requests.get(host.url + bad, headers={"Authorization": f"Bearer {INVOKE}"},
                     timeout=10)
    assert r.status_code in (400, 404)
    requests.get(host.url + '/nowhere%22%0Asora_injected%201', timeout=10)
    # Names and qualifiers a caller makes up grow no series: only what ran is counted.
    invoke = {"Authorization": f"Bearer {INVOKE}"}
    for i in range(10):
        requests.get(f"{host.url}/functions/made-up-{i}", headers=invoke, timeout=10)
        requests.post(f"{host.url}/2015-03-31/functions/flaky:{i + 7}/invocations",
                      headers=invoke, data="{}", timeout=10)
    text = scrape(host)
    assert "sora_injected" not in text
    counted_labels = {(dict(labels)["function"], dict(labels)["version"])
                      for name, labels in samples(text) if name == "sora_invocations_total"}
    assert counted_labels <= {("flaky", "$LATEST"), ("narrow", "$LATEST")}, counted_labels
    routes = {dict(labels).get("route") for name, labels in samples(text)
              if name == "sora_http_requests_total"}
    assert routes <= {"/functions/{name}", "/metrics", "/healthz", "/api/...", "other",
                      "/2015-03-31/functions/{name}/invocations", "/2015-03-31/functions/...",
                      "/ui/..."}, routes
