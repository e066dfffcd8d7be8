"""sora.store.stats: the dashboard's and `sora top`'s figures over a temp store, SQLite and
PostgreSQL (`store_backend`)."""
import itertools
import json
import math
import sqlite3

import pytest
import yaml

from sora.store import backend, db, records, schema, stats
from tests.support import store_setting, write_function

T0 = 1_800_000_000.0
_ids = itertools.count()


@pytest.fixture
def conn(store_backend, tmp_path):
    return backend.connect(store_backend, str(tmp_path), "records")


@pytest.fixture
def sqlite_conn(tmp_path):
    return db.connect(str(tmp_path))


def add(conn, rows):
    """rows: (function, start, duration ms, status, cold) -> records through records.commit."""
    records.commit(conn, [
        (f"req-{next(_ids)}", function, "$LATEST", "http", start, duration, status,
         None if status == "ok" else "Error", int(cold), None, 128, None)
        for function, start, duration, status, cold in rows], [])


def test_summary_counts_calls_errors_cold_starts_and_exact_percentiles(conn):
    # 100 calls of 1..100 ms: nearest rank gives p50 = 50, p99 = 99 exactly.
    add(conn, [("a", T0 + i, float(i + 1), "ok", i < 3) for i in range(100)])
    add(conn, [("b", T0, 10.0, "error", True), ("b", T0 + 1, 30.0, "timeout", False),
               ("b", T0 + 2, 20.0, "crashed", False), ("b", T0 + 3, 5.0, "ok", False)])
    figures = stats.summary(conn, T0, T0 + 1000)
    assert figures["a"] == {"calls": 100, "errors": 0, "p50": 50.0, "p99": 99.0,
                            "coldStarts": 3}
    # [5, 10, 20, 30]: p50 = the 2nd, p99 = the 4th; every status but ok is an error.
    assert figures["b"] == {"calls": 4, "errors": 3, "p50": 10.0, "p99": 30.0,
                            "coldStarts": 1}
    assert list(figures) == ["a", "b"]


def test_one_call_is_its_own_p50_and_p99(conn):
    add(conn, [("a", T0, 12.3456, "ok", False)])
    assert stats.summary(conn, T0, T0 + 1)["a"] == {
        "calls": 1, "errors": 0, "p50": 12.346, "p99": 12.346, "coldStarts": 0}


def test_summary_window_is_half_open_and_leaves_out_functions_without_calls(conn):
    add(conn, [("a", T0 - 0.001, 1.0, "ok", False), ("a", T0, 2.0, "ok", False),
               ("a", T0 + 10, 3.0, "error", False), ("old", T0 - 100, 1.0, "ok", False)])
    figures = stats.summary(conn, T0, T0 + 10)
    assert figures == {"a": {"calls": 1, "errors": 0, "p50": 2.0, "p99": 2.0,
                             "coldStarts": 0}}
    assert stats.summary(conn, T0 + 20, T0 + 30) == {}


def test_summary_until_defaults_to_now(conn):
    import time
    now = time.time()
    add(conn, [("a", now - 5, 1.0, "ok", False), ("a", now + 3600, 1.0, "ok", False)])
    assert stats.summary(conn, now - 60)["a"]["calls"] == 1


def test_series_has_every_bucket_oldest_first_with_empty_ones_zero(conn):
    add(conn, [("a", T0 + 1, 4.0, "ok", True), ("a", T0 + 2, 8.0, "error", False),
               ("a", T0 + 25, 1.0, "ok", False), ("b", T0 + 5, 99.0, "ok", False)])
    buckets = stats.series(conn, "a", T0, T0 + 30, 3)
    assert buckets == [
        {"start": T0, "calls": 2, "errors": 1, "p50": 4.0, "p99": 8.0, "coldStarts": 1},
        {"start": T0 + 10, "calls": 0, "errors": 0, "p50": None, "p99": None,
         "coldStarts": 0},
        {"start": T0 + 20, "calls": 1, "errors": 0, "p50": 1.0, "p99": 1.0,
         "coldStarts": 0}]


def test_series_bucket_edges(conn):
    # A start on a bucket's edge belongs to the later bucket; `until` is outside; a start just
    # below `until` is in the last bucket even where float division rounds it up.
    until = T0 + 0.3
    add(conn, [("a", T0 + 0.1, 1.0, "ok", False), ("a", until, 1.0, "ok", False),
               ("a", math.nextafter(until, 0), 2.0, "ok", False), ("a", T0, 3.0, "ok", False)])
    calls = [b["calls"] for b in stats.series(conn, "a", T0, until, 3)]
    assert sum(calls) == 3 and calls[-1] == 1
    add(conn, [("e", T0 + 1, 1.0, "ok", False), ("e", T0 + 2, 1.0, "ok", False),
               ("e", T0 + 2, 1.0, "ok", False), ("e", T0 + 3, 1.0, "ok", False)])
    assert [b["calls"] for b in stats.series(conn, "e", T0, T0 + 3, 3)] == [0, 1, 2]


def test_series_of_a_function_without_records_is_all_empty(conn):
    buckets = stats.series(conn, "none", T0, T0 + 60, 60)
    assert len(buckets) == 60 and not any(b["calls"] for b in buckets)
    assert buckets[1]["start"] == T0 + 1


@pytest.mark.parametrize("since, until, buckets", [(T0, T0 + 1, 0), (T0, T0, 3),
                                                   (T0 + 1, T0, 3)])
def test_series_refuses_an_empty_range_or_no_buckets(conn, since, until, buckets):
    with pytest.raises(ValueError):
        stats.series(conn, "a", since, until, buckets)


def test_a_function_named_like_sql_is_only_a_name(conn):
    name = "x' OR '1'='1"
    add(conn, [(name, T0, 1.0, "ok", False), ("other", T0, 2.0, "ok", False)])
    assert stats.series(conn, name, T0, T0 + 1, 1)[0]["calls"] == 1
    assert set(stats.summary(conn, T0, T0 + 1)) == {name, "other"}


@pytest.mark.parametrize("query", [stats._ROWS, stats._COUNTS, stats._DURATIONS])
def test_queries_read_the_covering_index_only(sqlite_conn, query):
    plan = " ".join(row[3] for row in sqlite_conn.execute("EXPLAIN QUERY PLAN " + query,
                                                   ("a", 0, 1)))
    assert "COVERING INDEX invocations_by_function_start" in plan


def test_summary_leaves_no_transaction_open_nor_closes_the_callers(conn):
    add(conn, [("a", T0, 1.0, "ok", False)])
    stats.summary(conn, T0, T0 + 1)
    assert not conn.in_transaction
    with conn.transaction():
        assert stats.summary(conn, T0, T0 + 1)["a"]["calls"] == 1
        assert conn.in_transaction
    assert not conn.in_transaction


def test_an_older_store_gets_the_index_when_opened(tmp_path):
    old = sqlite3.connect(db.db_path(str(tmp_path)))
    old.executescript(";\n".join(schema.ddl(schema.RECORDS_TABLES, "sqlite")).replace("CREATE INDEX IF NOT EXISTS invocations_by_function_start",
                                        "CREATE INDEX IF NOT EXISTS unused_here"))
    old.execute("DROP INDEX unused_here")
    old.execute("INSERT INTO invocations (request_id, function, version, trigger, start, "
                "duration_ms, status, cold) VALUES ('r', 'a', '$LATEST', 'http', ?, 5, 'ok', 1)",
                (T0,))
    old.commit()
    old.close()
    conn = db.connect(str(tmp_path))
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "invocations_by_function_start" in names
    assert stats.summary(conn, T0, T0 + 1)["a"]["coldStarts"] == 1


# GET /api/stats through falcon.testing, with a fake control plane.

ADMIN = "admin-key-0123456789abcdef"
INVOKER = "invoke-key-0123456789abcdef"


class FakeStatusClient:
    """A broker that answers STATUS with `health` and every invocation with nothing."""

    def __init__(self, health):
        self.health = health

    async def status(self, request_id):
        if self.health is None:
            from sora.messaging.client import BrokerTimeout
            raise BrokerTimeout()
        return json.dumps(self.health).encode()

    def add_members_listener(self, listener):
        pass

    async def members_known(self, timeout=2.0):
        return True


@pytest.fixture
def api(store_backend, tmp_path):
    from sora.config import load_host_config
    from sora.gateway.app import create_app
    fns = tmp_path / "fns"
    dirs = [write_function(fns, name, {"index.js": "exports.handler = async (e) => e;"},
                           name=name) for name in ("busy", "quiet")]
    spec = {"functionPaths": [str(d) for d in dirs], "server": {"httpPort": 8080},
            "stateDir": str(tmp_path / "state"), "store": store_setting(store_backend),
            "auth": {"apiKeys": [{"name": "ops", "key": ADMIN, "scopes": ["admin"]},
                                 {"name": "app", "key": INVOKER, "scopes": ["invoke"]}]}}
    (tmp_path / "host-config.yaml").write_text(yaml.safe_dump(spec))
    health = {"status": "ok", "functions": {
        "busy": {"state": "RUNNING", "instances": 3, "busy": 2, "idle": 1, "starting": 0,
                 "queued": 4},
        "quiet": {"state": "FATAL", "reason": "no such file", "instances": 0}}}
    client = FakeStatusClient(health)
    app = create_app(load_host_config(str(tmp_path / "host-config.yaml")), client)
    return app, backend.connect(store_backend, str(tmp_path / "state"), "records"), client


def get_stats(app, query="", key=ADMIN):
    import falcon.testing
    return falcon.testing.simulate_get(app, "/api/stats", query_string=query,
                                       headers={"Authorization": f"Bearer {key}"} if key else {})


def test_api_stats_merges_the_status_and_the_window_figures(api):
    import time
    app, conn, _ = api
    now = time.time()
    add(conn, [("busy", now - 10, 5.0, "ok", True), ("busy", now - 20, 7.0, "error", False),
               ("busy", now - 7200, 9.0, "ok", False), ("gone", now - 5, 1.0, "ok", False)])
    answer = get_stats(app)
    assert answer.status_code == 200, answer.text
    body = answer.json
    assert body["window"] == 3600 and abs(body["until"] - body["since"] - 3600) < 1e-6
    assert set(body["functions"]) == {"busy", "quiet"}   # not a function the host lacks
    busy = body["functions"]["busy"]
    assert busy == {"state": "RUNNING", "instances": 3, "busy": 2, "idle": 1, "starting": 0,
                    "queued": 4, "calls": 2, "errors": 1, "p50": 5.0, "p99": 7.0,
                    "coldStarts": 1, "events": {"queued": 0, "leased": 0, "dead": 0}}
    quiet = body["functions"]["quiet"]
    assert quiet["calls"] == 0 and quiet["p50"] is None and quiet["reason"] == "no such file"
    assert get_stats(app, "window=86400").json["functions"]["busy"]["calls"] == 3


@pytest.mark.parametrize("window", ["0", "-5", "604801", "abc", "1e3"])
def test_api_stats_refuses_a_window_out_of_range(api, window):
    answer = get_stats(api[0], f"window={window}")
    assert answer.status_code == 400
    assert answer.json["errorType"] == "InvalidParameterValueException"


def test_api_stats_is_admin_only(api):
    app, _, _ = api
    assert get_stats(app, key=None).status_code == 401
    assert get_stats(app, key=INVOKER).status_code == 403


def test_functions_lists_each_name_once_in_order(conn):
    assert stats.functions(conn) == []
    add(conn, [("b", T0, 1.0, "ok", False), ("a", T0, 1.0, "ok", False),
               ("b", T0 + 1, 1.0, "ok", False), ("a-b", T0, 1.0, "ok", False)])
    assert stats.functions(conn) == ["a", "a-b", "b"]


def test_api_stats_without_the_control_plane_is_503(api):
    app, _, client = api
    client.health = None   # no answer in time
    answer = get_stats(app)
    assert answer.status_code == 503 and answer.json["errorType"] == "Sora.BrokerUnavailable"
