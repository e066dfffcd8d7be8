"""GET /metrics through the gateway app (falcon.testing, a fake control plane): who may scrape
it (admin key, `metrics` scope, open without keys), `server.metrics: false`, and what a key
with scope `metrics` may not reach."""
import json

import falcon.testing
import pytest
import yaml

from sora import protocol as p
from sora.config import ApiKey, ConfigError, load_host_config
from sora.gateway.app import create_app
from sora.gateway.metrics_route import CountedApp
from sora.metrics.definitions import SoraMetrics
from tests.support import write_function

ADMIN = "admin-key-0123456789abcdef"
INVOKE = "invoke-key-0123456789abcdef"
SCRAPER = "metrics-key-0123456789abcd"
STATUS = {"status": "ok", "functions": {"known": {"state": "RUNNING", "busy": 1, "idle": 2,
                                                  "starting": 0, "queued": 0}}}


class FakeClient:
    async def invoke(self, function, request_id, payload, timeout, meta=p.TRIGGER_HTTP):
        return [p.OK, b'{"statusCode": 200, "body": "hi"}']

    async def status(self, request_id, timeout=3.0):
        return json.dumps(STATUS).encode()

    def add_members_listener(self, listener):
        pass

    async def members_known(self, timeout=2.0):
        return True


def config_of(tmp_path, keys=True, **server):
    fn = write_function(tmp_path / "fns", "known",
                        {"index.js": "exports.handler = async () => 1;"}, name="known")
    doc = {"functionPaths": [str(fn)], "stateDir": str(tmp_path / "state"),
           "server": {"httpPort": 1, "bind": "127.0.0.1", **server}}
    if keys:
        doc["auth"] = {"apiKeys": [{"name": "ops", "key": ADMIN, "scopes": ["admin"]},
                                   {"name": "ci", "key": INVOKE, "scopes": ["invoke"]},
                                   {"name": "prom", "key": SCRAPER, "scopes": ["metrics"]}]}
    path = tmp_path / "host-config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_host_config(str(path))


def get(app, path, key=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return falcon.testing.TestClient(app).simulate_get(path, headers=headers)


def test_scopes(tmp_path):
    app = create_app(config_of(tmp_path), FakeClient())
    assert get(app, "/metrics").status_code == 401
    assert get(app, "/metrics", "wrong-key-0123456789abcdef").status_code == 401
    assert get(app, "/metrics", INVOKE).status_code == 403
    for key in (SCRAPER, ADMIN):
        r = get(app, "/metrics", key)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert 'sora_instances{function="known",state="idle"} 2.0' in r.text
    # The metrics scope reaches nothing else.
    for path in ("/api/functions", "/functions/known", "/api/functions/known/logs"):
        assert get(app, path, SCRAPER).status_code == 403, path
    assert "functions" not in get(app, "/healthz", SCRAPER).json


def test_open_without_keys_and_off_when_disabled(tmp_path):
    assert get(create_app(config_of(tmp_path, keys=False), FakeClient()),
               "/metrics").status_code == 200
    off = create_app(config_of(tmp_path, keys=False, metrics=False), FakeClient())
    assert get(off, "/metrics").status_code == 404


def test_metrics_setting_is_a_boolean(tmp_path):
    with pytest.raises(ConfigError):
        config_of(tmp_path, metrics="yes please")


def test_api_key_scope():
    def key(*scopes):
        return ApiKey("k", b"", scopes)
    assert key("metrics").allows("metrics")
    assert key("admin").allows("metrics")
    assert not key("invoke").allows("metrics")
    assert not key("metrics").allows("admin")
    assert not key("metrics").allows("invoke", "known")


def test_counted_app_counts_each_response_by_route_and_code(tmp_path):
    metrics = SoraMetrics()
    app = CountedApp(create_app(config_of(tmp_path, keys=False), FakeClient()), metrics)
    client = falcon.testing.TestClient(app)
    assert client.simulate_get("/functions/known").status_code == 200
    assert client.simulate_get("/nowhere").status_code == 404
    assert client.simulate_get("/functions/known/x").status_code == 200
    app.flush()   # written once a second by the event loop, or at exit
    counts = {tuple(s.labels.values()): s.value for m in metrics.http_requests.collect()
              for s in m.samples if s.name.endswith("_total")}
    assert counts[("/functions/{name}", "200")] == 2
    assert counts[("other", "404")] == 1


def test_counted_app_leaves_no_frame_of_its_own_on_the_request():
    """CountedApp hands back the app's own coroutine, and the app's sends reach the server's
    send as its own awaitable: no coroutine of CountedApp's is on the request task's stack
    (every resumption of the task would pass through it), yet the response is counted."""
    import asyncio
    import inspect

    async def app(scope, receive, send):
        await asyncio.sleep(0)   # a wait, as for the worker's reply
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent = []

    async def send(message):
        sent.append(message["type"])

    async def main():
        counted = CountedApp(app, SoraMetrics())
        call = counted({"type": "http", "path": "/functions/a"}, None, send)
        assert call.cr_code is app.__code__
        counted_send = call.cr_frame.f_locals["send"]
        assert not inspect.iscoroutinefunction(counted_send)
        await call
        assert sent == ["http.response.start", "http.response.body"]
        assert counted.pending == {("/functions/{name}", 201): 1}
        counted.flush()

    asyncio.run(main())
