"""The version store, aliases and qualifiers (sora.versions), without a host: a real confined
rsync copy (the test runs as root, as Sora does), no mocks. Every test of the store runs on
both backends (`store_backend`: SQLite, and PostgreSQL on a fresh database)."""
from __future__ import annotations

import collections
import os
import random
import stat
import subprocess

import pytest

from sora.config import load_function_config
from sora.versions import qualifier
from sora.versions.aliases import AliasStore, check_weights, pick
from sora.versions.store import VersionError, VersionStore
from tests.support import write_function

HANDLER = "exports.handler = async () => ({ statusCode: 200, body: 'v1' });\n"


@pytest.fixture
def fn_dir(tmp_path):
    return write_function(tmp_path, "fn", {"index.js": HANDLER}, name="fn")


@pytest.fixture
def store(tmp_path, store_backend):
    return VersionStore(str(tmp_path / "state"), store_backend)


def test_qualifier_kinds():
    assert qualifier.kind("$LATEST") == "latest"
    assert qualifier.kind("1") == "version"
    assert qualifier.kind("4294967295") == "version"
    assert qualifier.kind("live") == "alias"
    assert qualifier.kind("blue-green_2") == "alias"
    for bad in ("../x", "1/../../", "0", "01", "4294967296", "9" * 40, "", "ünï", "a b",
                "$latest", "a" * 129, "x\x00", ".", "..", "1.0"):
        with pytest.raises(qualifier.BadQualifier) as err:
            qualifier.kind(bad)
        assert "expected a qualifier" in str(err.value)
        assert str(err.value).isascii()


def test_data_keys():
    assert qualifier.data_key("fn") == "fn"
    assert qualifier.data_key("fn", "$LATEST") == "fn"
    assert qualifier.data_key("fn", "3") == "fn:3"
    assert qualifier.split_key("fn:3") == ("fn", "3")
    assert qualifier.split_key("fn") == ("fn", "$LATEST")


def test_publish_numbers_and_unchanged_returns_the_same(fn_dir, store):
    fn = load_function_config(str(fn_dir))
    first, new = store.publish(fn, "first")
    assert new and first["Version"] == "1" and first["Description"] == "first"
    again, new = store.publish(fn, "again")
    assert not new and again["Version"] == "1"
    (fn_dir / "index.js").write_text(HANDLER.replace("v1", "v2"))
    second, new = store.publish(fn)
    assert new and second["Version"] == "2" and second["CodeSha256"] != first["CodeSha256"]
    assert store.numbers("fn") == [1, 2]
    code = store.config("fn", "1").directory
    assert open(os.path.join(code, "index.js")).read() == HANDLER
    assert store.config("fn", "2").version == "2"
    assert not [e for e in os.listdir(store.function_dir("fn")) if e.startswith(".staging")]


def test_settings_change_is_a_new_version(fn_dir, store):
    import dataclasses
    fn = load_function_config(str(fn_dir))
    store.publish(fn)
    record, new = store.publish(dataclasses.replace(fn, timeout=5.0))
    assert new and record["Version"] == "2"


def test_version_config_is_read_only_and_scales_to_zero(tmp_path, store):
    fn_dir = write_function(tmp_path, "w", {"index.js": HANDLER}, name="w",
                            writableFolder=True, minInstances=2, setup=["true"])
    config = store.config("w", store.publish(load_function_config(str(fn_dir)))[0]["Version"])
    assert not config.writableFolder and config.minInstances == 0 and config.setup == []
    code = config.directory
    assert code.startswith(store.root) and code.endswith("/1/code")
    for root, dirs, files in os.walk(code):
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            assert st.st_uid == os.getuid()
            assert not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH | stat.S_ISUID | stat.S_ISGID)
    record_file = os.path.join(store.function_dir("w"), "1", "version.json")
    assert stat.S_IMODE(os.stat(record_file).st_mode) == 0o600


def test_links_to_host_secrets_are_not_copied(tmp_path, store):
    secret = tmp_path / "host-secret"
    secret.write_text("TOP-SECRET")
    fn_dir = write_function(tmp_path, "evil", {"index.js": HANDLER}, name="evil")
    fn = load_function_config(str(fn_dir))
    (fn_dir / "data.txt").symlink_to(secret)
    os.mkdir(fn_dir / "sub")
    (fn_dir / "sub" / "key").symlink_to("/etc/shadow")
    (fn_dir / "dirlink").symlink_to(tmp_path)
    record, _ = store.publish(fn)
    code = store.config("evil", record["Version"]).directory
    assert os.path.islink(os.path.join(code, "data.txt"))
    assert os.path.islink(os.path.join(code, "sub", "key"))
    assert os.path.islink(os.path.join(code, "dirlink"))
    for root, _dirs, files in os.walk(code):   # no regular file holds a host secret
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                content = open(path, "rb").read()
                assert b"TOP-SECRET" not in content and b"root:" not in content


def test_pruning_keeps_newest_and_aliased(fn_dir, store):
    fn = load_function_config(str(fn_dir))
    for n in range(1, 6):
        (fn_dir / "index.js").write_text(HANDLER.replace("v1", f"v{n}"))
        store.publish(fn)
    aliases = AliasStore(store.state_dir, "fn", store)
    aliases.create("old", "1")
    aliases.create("canary", "4", weights={"2": 0.5})
    removed = store.prune("fn", 2, aliases.protected())
    assert removed == [3]
    assert store.numbers("fn") == [1, 2, 4, 5]
    (fn_dir / "index.js").write_text(HANDLER.replace("v1", "v6"))
    assert store.publish(fn)[0]["Version"] == "6"   # numbers are not reused


def test_aliases_lifecycle(fn_dir, store):
    fn = load_function_config(str(fn_dir))
    store.publish(fn)
    (fn_dir / "index.js").write_text(HANDLER.replace("v1", "v2"))
    store.publish(fn)
    aliases = AliasStore(store.state_dir, "fn", store)
    live = aliases.create("live", "1", "prod")
    assert live["Name"] == "live" and live["FunctionVersion"] == "1" and live["RevisionId"]
    with pytest.raises(VersionError) as err:
        aliases.create("live", "1")
    assert err.value.error_type == "ResourceConflictException"
    with pytest.raises(VersionError) as err:
        aliases.create("bad", "7")
    assert err.value.status == 404
    with pytest.raises(VersionError) as err:
        aliases.create("123", "1")
    assert err.value.error_type == "InvalidParameterValueException"
    moved = aliases.update("live", "2", weights={"1": 0.25})
    assert moved["FunctionVersion"] == "2" and moved["PreviousVersion"] == "1"
    assert moved["RoutingConfig"] == {"AdditionalVersionWeights": {"1": 0.25}}
    assert moved["Description"] == "prod"
    with pytest.raises(VersionError) as err:
        aliases.update("live", revision_id=live["RevisionId"])
    assert err.value.status == 412
    # Another reader (a gateway process) sees the move at its next call.
    reader = AliasStore(store.state_dir, "fn", VersionStore(store.state_dir, store.store))
    assert reader.get("live")["FunctionVersion"] == "2"
    aliases.update("live", "1", weights={})
    assert reader.get("live")["FunctionVersion"] == "1"
    assert "RoutingConfig" not in reader.get("live")
    assert [a["Name"] for a in aliases.list()] == ["live"]
    aliases.delete("live")
    assert reader.get("live") is None
    with pytest.raises(VersionError):
        aliases.delete("live")
    assert store.conn.execute("SELECT COUNT(*) FROM function_aliases").fetchone()[0] == 0


def test_weights_checked():
    assert check_weights({"2": 0.5}, "1") == {"2": 0.5}
    assert check_weights(None, "1") == {}
    for bad in ({"2": 1.5}, {"2": -0.1}, {"1": 0.5}, {"2": 0.1, "3": 0.1}, {"$LATEST": 0.1},
                {"2": True}, {"../2": 0.1}, ["2"]):
        with pytest.raises(VersionError) as err:
            check_weights(bad, "1")
        assert err.value.error_type == "InvalidParameterValueException"


def test_weighted_pick_within_five_percent():
    alias = {"FunctionVersion": "1", "RoutingConfig": {"AdditionalVersionWeights": {"2": 0.3}}}
    draw = random.Random(17).random
    counts = collections.Counter(pick(alias, draw) for _ in range(1000))
    assert abs(counts["2"] / 1000 - 0.3) <= 0.05
    assert pick({"FunctionVersion": "3"}) == "3"


def test_resolver_versions_aliases_and_refusals(fn_dir, store):
    from sora.versions.routing import Resolver, split_name
    fn = load_function_config(str(fn_dir))
    store.publish(fn)
    AliasStore(store.state_dir, "fn", store).create("live", "1")
    resolver = Resolver(store.state_dir, store=store.store)
    assert resolver.resolve("fn", None) == ("fn", "$LATEST")
    assert resolver.resolve("fn", "$LATEST") == ("fn", "$LATEST")
    assert resolver.resolve("fn", "1") == ("fn:1", "1")
    assert resolver.resolve("fn", "live") == ("fn:1", "1")
    for given, status in (("2", 404), ("nope", 404), ("../x", 400), ("1/../..", 400),
                              ("", 400), ("ü", 400), ("9" * 30, 400)):
        with pytest.raises(VersionError) as err:
            resolver.resolve("fn", given)
        assert err.value.status == status, given
    assert split_name("fn:live") == ("fn", "live") and split_name("fn") == ("fn", None)
    AliasStore(store.state_dir, "fn", store).update("live", "$LATEST")
    assert resolver.resolve("fn", "live") == ("fn", "$LATEST")   # moved: the next call


def test_api_answers_in_lambdas_shape(fn_dir, store):
    from sora.versions.api import VersionsApi
    fn = load_function_config(str(fn_dir))
    store.publish(fn, "one")
    api = VersionsApi(store.state_dir, store=store.store)
    versions = api.list_versions(fn)
    assert [v["Version"] for v in versions] == ["$LATEST", "1"]
    one = versions[1]
    assert one["FunctionArn"] == "arn:aws:lambda:us-east-1:000000000000:function:fn:1"
    assert one["Description"] == "one" and one["CodeSha256"] and one["Runtime"] == "nodejs20.x"
    assert one["Handler"] == "index.handler" and one["RevisionId"]
    assert api.get_version("fn", "1")["CodeSha256"] == one["CodeSha256"]
    with pytest.raises(VersionError):
        api.get_version("fn", "2")
    alias = api.create_alias("fn", "live", "1", "prod",
                             {"AdditionalVersionWeights": {}})
    assert set(alias) == {"AliasArn", "Name", "FunctionVersion", "Description", "RevisionId"}
    assert alias["AliasArn"].endswith(":function:fn:live")
    assert api.list_aliases("fn", "1") == [alias] and api.list_aliases("fn", "2") == []
    moved = api.update_alias("fn", "live", "$LATEST", revision_id=alias["RevisionId"])
    assert moved["FunctionVersion"] == "$LATEST" and api.previous_version("fn", "live") == "1"
    with pytest.raises(VersionError) as err:
        api.get_alias("fn", "../live")
    assert err.value.status == 400
    api.delete_alias("fn", "live")
    with pytest.raises(VersionError) as err:
        api.get_alias("fn", "live")
    assert err.value.error_type == "ResourceNotFoundException"
    api.delete_function("fn")
    assert store.numbers("fn") == []


def test_code_sha256_precondition(fn_dir, store):
    fn = load_function_config(str(fn_dir))
    record, _ = store.publish(fn)
    staging = store.begin(fn, expect_code="not-the-hash")
    subprocess.run(staging.argv, check=True, capture_output=True)
    with pytest.raises(VersionError) as err:
        store.finish(staging)
    assert err.value.status == 412 and not os.path.exists(staging.folder)
    staging = store.begin(fn, expect_code=record["CodeSha256"])
    subprocess.run(staging.argv, check=True, capture_output=True)
    again, new = store.finish(staging)
    assert not new and again["Version"] == record["Version"]


def test_names_that_are_not_function_names_name_no_path(store):
    for bad in ("..", "../etc", "a/b", "", "A", "x" * 64, "fn:1"):
        with pytest.raises(VersionError) as err:
            store.function_dir(bad)
        assert err.value.status == 404
        with pytest.raises(VersionError):
            AliasStore(store.state_dir, bad, store)
    assert not os.path.exists(store.root)


def test_dashboard_reads_versions_and_aliases_from_the_store(fn_dir, store):
    from types import SimpleNamespace
    from sora.gateway.dashboard.pages import versions_of
    store.publish(load_function_config(str(fn_dir)))
    AliasStore(store.state_dir, "fn", store).create("live", "1")
    config = SimpleNamespace(stateDir=store.state_dir, store=store.store)
    assert versions_of(config, "fn") == {
        "versions": [1], "aliases": [{"name": "live", "version": "1", "weights": {}}]}
    assert versions_of(config, "other") == {"versions": [], "aliases": []}
