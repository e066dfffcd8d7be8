"""The store interface (sora.store.backend) on both backends, and host-config.yaml `store:`."""
import logging
import threading

import pytest
import yaml

from sora.config import ConfigError, StoreConfig, display_url, load_host_config
from sora.store import backend


def connect(store, tmp_path, part="queue", **options):
    return backend.connect(store, str(tmp_path), part, **options)


def add_event(conn, request_id, function="fn", payload=b"{}"):
    conn.execute("INSERT INTO events (request_id, function, trigger, payload, accepted, state, "
                 "due) VALUES (?, ?, 'invoke', ?, 1.0, 'queued', 1.0)",
                 (request_id, function, payload))


# --- the SQL both dialects take ---------------------------------------------------------------

def test_placeholders_become_psycopgs_once_and_literals_keep_theirs():
    assert backend.pg_sql("SELECT ? WHERE a LIKE 'x%' AND b = ?") == \
        "SELECT %s WHERE a LIKE 'x%%' AND b = %s"
    assert backend.pg_sql("SELECT '?' || ?") == "SELECT '?' || %s"
    assert backend.pg_sql("SELECT 'it''s ?', ?") == "SELECT 'it''s ?', %s"
    sql = "SELECT ? + ?"
    assert backend.pg_sql(sql) is backend.pg_sql(sql)      # cached per distinct string


def test_rows_by_position_and_by_name_and_the_same_calls(store_backend, tmp_path):
    conn = connect(store_backend, tmp_path)
    assert conn.dialect == store_backend.kind
    add_event(conn, "r1", payload=b"abc")
    conn.executemany("INSERT INTO events (request_id, function, trigger, payload, accepted, "
                     "state, due) VALUES (?, 'fn', 'invoke', ?, 2.0, 'queued', 2.0)",
                     [("r2", b"de"), ("r3", b"f")])
    row = conn.execute("SELECT request_id, payload FROM events WHERE request_id = ?",
                       ("r1",)).fetchone()
    assert row[0] == row["request_id"] == "r1" and bytes(row["payload"]) == b"abc"
    assert dict(zip(row.keys(), row)) == {"request_id": "r1", "payload": b"abc"}
    assert [r[0] for r in conn.execute("SELECT request_id FROM events ORDER BY id")] == \
        ["r1", "r2", "r3"]
    assert conn.execute("UPDATE events SET due = 5 WHERE due < ?", (3,)).rowcount == 3
    # event_totals follow inserts and deletes by trigger on both (PL/pgSQL on PostgreSQL)
    assert tuple(conn.execute("SELECT events, bytes FROM event_totals").fetchone()) == (3, 6)
    assert conn.execute("SELECT COUNT(*) FROM events WHERE request_id = ?",
                        ("none",)).fetchone()[0] == 0
    conn.close()


def test_a_transaction_commits_at_its_end_and_rolls_back_on_an_error(store_backend, tmp_path):
    conn = connect(store_backend, tmp_path)
    with conn.transaction():
        add_event(conn, "kept")
        with conn.transaction():           # nested: part of the outer one
            add_event(conn, "kept-too")
    with pytest.raises(RuntimeError):
        with conn.transaction():
            add_event(conn, "undone")
            raise RuntimeError("the caller's own error passes through")
    names = {r[0] for r in conn.execute("SELECT request_id FROM events")}
    assert names == {"kept", "kept-too"}
    assert not conn.in_transaction


def test_integrity_and_other_errors_are_caught_as_the_interfaces(store_backend, tmp_path):
    conn = connect(store_backend, tmp_path)
    add_event(conn, "r1")
    with pytest.raises(backend.INTEGRITY_ERRORS):
        add_event(conn, "r1")
    with pytest.raises(backend.ERRORS):
        conn.execute("SELECT no_such_column FROM events")
    with pytest.raises(backend.INTEGRITY_ERRORS):
        with conn.transaction():
            add_event(conn, "r2")
            add_event(conn, "r1")
    assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1


def test_transactions_of_two_threads_use_connections_of_their_own(postgres_url, tmp_path):
    store = StoreConfig(kind="postgresql", url=postgres_url, poolSize=2)
    conn = connect(store, tmp_path)
    inside, release = threading.Event(), threading.Event()

    def writer():
        with conn.transaction():
            add_event(conn, "from-thread")
            inside.set()
            release.wait(10)
    thread = threading.Thread(target=writer)
    thread.start()
    assert inside.wait(10)
    # the other thread's transaction is not committed yet: this thread does not see its row
    assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
    release.set()
    thread.join(10)
    assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1


# --- a database that goes away -----------------------------------------------------------------

def test_a_stopped_database_is_unavailable_then_serves_again_by_itself(postgres_server_factory,
                                                                       tmp_path, caplog):
    server = postgres_server_factory()
    store = StoreConfig(kind="postgresql", url=server.url(server.create_database()))
    conn = connect(store, tmp_path, busy_ms=1500)
    add_event(conn, "before")
    caplog.set_level(logging.DEBUG)
    server.stop()
    with pytest.raises(backend.StoreUnavailable) as exc:
        add_event(conn, "while-down")
    message = str(exc.value)
    assert store.display_url in message and server.password not in message
    server.start()
    deadline_ok = False
    for _ in range(100):                   # the pool reconnects by itself
        try:
            add_event(conn, "after")
            deadline_ok = True
            break
        except backend.StoreUnavailable:
            threading.Event().wait(0.1)
    assert deadline_ok
    assert {r[0] for r in conn.execute("SELECT request_id FROM events")} == {"before", "after"}
    assert server.password not in caplog.text


def test_a_wrong_password_never_shows_the_password(postgres_server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ngPassw0rd-xyz"
    url = postgres_server.url().replace(postgres_server.password, wrong)
    store = StoreConfig(kind="postgresql", url=url)
    with pytest.raises(backend.StoreError) as exc:
        connect(store, tmp_path, busy_ms=1500)
    assert wrong not in str(exc.value) and "***" in str(exc.value)
    assert wrong not in caplog.text
    backend.close_pools(lambda u: u == url)


# --- which host writes ---------------------------------------------------------------------------

def test_host_id_is_the_cluster_name_or_the_machine_and_state_dir(tmp_path):
    (tmp_path / "fn").mkdir()
    path = tmp_path / "host-config.yaml"
    path.write_text(yaml.safe_dump({"functionPaths": ["fn"], "server": {"httpPort": 8080}}))
    config = load_host_config(str(path), read_functions=False)
    assert backend.host_id(config).endswith(":" + config.stateDir)
    path.write_text(yaml.safe_dump({"functionPaths": ["fn"], "server": {"httpPort": 8080},
                                    "cluster": {"name": "edge-1"}}))
    assert backend.host_id(load_host_config(str(path), read_functions=False)) == "edge-1"


# --- host-config.yaml `store:` --------------------------------------------------------------------

def host_config(tmp_path, store, env=None):
    path = tmp_path / "host-config.yaml"
    path.write_text(yaml.safe_dump({"functionPaths": ["fn"], "server": {"httpPort": 8080},
                                    **({"store": store} if store is not None else {})}))
    return load_host_config(str(path), read_functions=False)


def test_the_default_store_is_sqlite(tmp_path):
    assert host_config(tmp_path, None).store == StoreConfig()
    assert host_config(tmp_path, "sqlite").store.kind == "sqlite"


def test_a_postgresql_url_with_its_pool_size(tmp_path):
    store = host_config(tmp_path, {"url": "postgresql://sora:s3cret@db:5432/sora",
                                   "poolSize": 8}).store
    assert (store.kind, store.url, store.poolSize) == \
        ("postgresql", "postgresql://sora:s3cret@db:5432/sora", 8)
    assert store.display_url == "postgresql://sora:***@db:5432/sora"
    assert "s3cret" not in repr(store) and "s3cret" not in repr(host_config(
        tmp_path, {"url": "postgresql://sora:s3cret@db/sora"}))


def test_the_url_from_an_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("SORA_TEST_STORE_URL", "postgres://u:pw@db/x?sslmode=require")
    store = host_config(tmp_path, {"urlEnv": "SORA_TEST_STORE_URL"}).store
    assert store.url == "postgres://u:pw@db/x?sslmode=require" and store.poolSize == 4
    assert store.urlEnv == "SORA_TEST_STORE_URL"
    monkeypatch.delenv("SORA_TEST_STORE_URL")
    with pytest.raises(ConfigError) as exc:
        host_config(tmp_path, {"urlEnv": "SORA_TEST_STORE_URL"})
    assert "host-config.yaml: store.urlEnv (SORA_TEST_STORE_URL): expected the environment " \
        "variable to hold a postgresql:// URL, got it unset or empty" in str(exc.value)


@pytest.mark.parametrize("store, expected", [
    ({"url": "mysql://u:topsecret@db/x"},
     "host-config.yaml: store.url: expected a postgresql:// URL "
     "(postgresql://USER:PASSWORD@HOST:PORT/DBNAME), got 'mysql://u:***@db/x'"),
    ("postgresql://u:topsecret@db/x",
     "host-config.yaml: store: expected `sqlite` or a mapping {url: postgresql://...}, got a "
     "URL string 'postgresql://u:***@db/x' (put it under `url:`)"),
    ("postgres", "host-config.yaml: store: expected `sqlite` or a mapping"),
    ({"url": "postgresql://u:topsecret@db/x", "poolSize": 0},
     "host-config.yaml: store.poolSize: expected an integer from 1 to 100, got 0"),
    ({"url": "postgresql://u:topsecret@db/x", "urlEnv": "X"},
     "host-config.yaml: store: expected either url or urlEnv, got both"),
    ({"poolSize": 2}, "host-config.yaml: store: expected url (postgresql://"),
    ({"uri": "postgresql://u:topsecret@db/x"},
     "host-config.yaml: store.uri: unknown field; did you mean 'url'?"),
])
def test_a_bad_store_names_file_field_and_expectation_never_the_password(tmp_path, store,
                                                                          expected):
    with pytest.raises(ConfigError) as exc:
        host_config(tmp_path, store)
    assert expected in str(exc.value)
    assert "topsecret" not in str(exc.value)


def test_display_url_hides_every_password():
    assert display_url("postgresql://u:p%40ss@h:1/d") == "postgresql://u:***@h:1/d"
    assert display_url("postgresql://u@h/d") == "postgresql://u@h/d"
    assert display_url("postgresql://u:p@ss@h/d") == "postgresql://u:***@h/d"
    assert display_url("postgresql://:pw@h/d") == "postgresql://:***@h/d"
    assert display_url("postgresql://h/d?user=u&password=pw&sslmode=require") == \
        "postgresql://h/d?user=u&password=***&sslmode=require"


def test_a_function_asking_for_the_stores_variable_as_a_secret_is_broken(tmp_path,
                                                                       monkeypatch):
    from tests.support import write_function
    monkeypatch.setenv("SORA_TEST_STORE_URL", "postgresql://u:topsecret@db/x")
    greedy = write_function(tmp_path / "fns", "greedy", {"index.js": "exports.handler = 1;"},
                            name="greedy", secrets={"DB": {"env": "SORA_TEST_STORE_URL",
                                                           "asEnv": True}})
    fine = write_function(tmp_path / "fns", "fine", {"index.js": "exports.handler = 1;"},
                          name="fine", secrets={"OTHER": {"env": "HOME"}})
    path = tmp_path / "host-config.yaml"
    path.write_text(yaml.safe_dump({"functionPaths": [str(greedy), str(fine)],
                                    "server": {"httpPort": 8080},
                                    "store": {"urlEnv": "SORA_TEST_STORE_URL"}}))
    config = load_host_config(str(path))
    assert [fn.name for fn in config.functions] == ["fine"]
    (broken,) = config.broken
    assert broken.name == "greedy" and "secrets.DB.env: expected a variable other than " \
        "SORA_TEST_STORE_URL, the store's URL" in broken.reason
    assert "topsecret" not in broken.reason
