"""Versions and aliases in a store several hosts share (sora.versions on PostgreSQL), and the
attacker's side of carrying code through it: a tar in the store is hostile until checked.
Hosts are VersionStores with their own state dirs on one database; no mocks."""
from __future__ import annotations

import io
import json
import os
import tarfile
import threading
import time

import pytest

from sora.config import StoreConfig, load_function_config
from sora.versions import code_tar
from sora.versions.aliases import AliasStore
from sora.versions.imports import import_files
from sora.versions.routing import Resolver
from sora.versions.store import VersionError, VersionStore
from tests.support import write_function

HANDLER = "exports.handler = async () => ({ statusCode: 200, body: 'v1' });\n"


@pytest.fixture
def pg(postgres_url):
    return StoreConfig(kind="postgresql", url=postgres_url, poolSize=4)


@pytest.fixture
def fn(tmp_path):
    return load_function_config(str(write_function(tmp_path, "fn", {"index.js": HANDLER},
                                                   name="fn")))


def _tar(*members) -> bytes:
    """A tar of (TarInfo, bytes or None) members, as an attacker with the table would write."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return out.getvalue()


def _member(name, kind=tarfile.REGTYPE, linkname="", mode=0o644):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    return info


def _everything_under(folder) -> set[str]:
    found = set()
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(root, name), folder))
    return found


EVIL = {
    "dot-dot": [(_member("../escaped.txt"), b"x")],
    "dot-dot-deep": [(_member("a/../../escaped.txt"), b"x")],
    "absolute": [(_member("/tmp/escaped-by-tar.txt"), b"x")],
    "through-a-link": [(_member("out", tarfile.SYMTYPE, "/tmp"), None),
                       (_member("out/escaped-by-tar.txt"), b"x")],
    "through-a-relative-link": [(_member("up", tarfile.SYMTYPE, ".."), None),
                                (_member("up/escaped.txt"), b"x")],
    "link-then-link-below": [(_member("out", tarfile.SYMTYPE, "/tmp"), None),
                             (_member("out/x", tarfile.SYMTYPE, "/etc/shadow"), None)],
    "hard-link": [(_member("shadow", tarfile.LNKTYPE, "/etc/shadow"), None)],
    "device": [(_member("null", tarfile.CHRTYPE), None)],
    "fifo": [(_member("pipe", tarfile.FIFOTYPE), None)],
    "link-named-outside": [(_member("../evil-link", tarfile.SYMTYPE, "/etc"), None)],
    "same-name-twice": [(_member("a", tarfile.SYMTYPE, "/etc"), None),
                        (_member("a", tarfile.DIRTYPE, mode=0o755), None)],
}


@pytest.mark.parametrize("case", sorted(EVIL))
def test_a_hostile_tar_is_refused_and_writes_nothing_outside(tmp_path, case):
    base = tmp_path / "base"
    dest = base / "staging" / "code"
    dest.mkdir(parents=True)
    before = set(os.listdir("/tmp")), _everything_under(tmp_path)
    with pytest.raises(code_tar.UnsafeTar):
        code_tar.unpack(_tar(*EVIL[case]), str(dest))
    assert set(os.listdir("/tmp")) == before[0]
    outside = _everything_under(tmp_path) - before[1]
    assert all(p.startswith(os.path.join("base", "staging", "code")) for p in outside), outside
    assert not os.path.exists("/tmp/escaped-by-tar.txt")


def test_set_id_bits_and_others_write_are_cleared(tmp_path):
    dest = tmp_path / "code"
    dest.mkdir()
    code_tar.unpack(_tar((_member("tool", mode=0o6777), b"#!/bin/sh\n"),
                         (_member("dir", tarfile.DIRTYPE, mode=0o1777), None)), str(dest))
    assert os.stat(dest / "tool").st_mode & 0o7777 == 0o755
    assert os.stat(dest / "dir").st_mode & 0o7022 == 0
    assert os.stat(dest / "tool").st_uid == os.getuid()


def test_a_tampered_row_is_refused_on_the_host_that_copies_it(tmp_path, pg, fn):
    host_a = VersionStore(str(tmp_path / "a"), pg)
    host_a.publish(fn)
    host_b = VersionStore(str(tmp_path / "b"), pg)
    evil = _tar((_member("out", tarfile.SYMTYPE, str(tmp_path)), None),
                (_member("out/planted.txt"), b"x"))
    host_a.conn.execute("UPDATE function_versions SET code = ? WHERE function = 'fn'", (evil,))
    with pytest.raises(VersionError) as err:
        host_b.ensure_local("fn", "1")
    assert err.value.status == 500 and "refused" in str(err.value)
    assert not (tmp_path / "planted.txt").exists()
    # Other code than the row's hash (a valid tar, swapped): refused by the hash check.
    other = _tar((_member("index.js"), b"exports.handler = async () => 'evil';\n"))
    host_a.conn.execute("UPDATE function_versions SET code = ? WHERE function = 'fn'", (other,))
    with pytest.raises(VersionError) as err:
        host_b.ensure_local("fn", "1")
    assert "hashes to" in str(err.value)
    folder = os.path.join(host_b.root, "fn")
    assert sorted(e for e in os.listdir(folder) if not e.startswith(".")) == []   # no copy
    assert str(pg.url) not in str(err.value)


def test_two_hosts_publishing_at_once_get_different_numbers(tmp_path, pg):
    hosts = []
    for n in range(4):
        fn_dir = write_function(tmp_path / f"h{n}", "fn",
                                {"index.js": HANDLER.replace("v1", f"host{n}")}, name="fn")
        hosts.append((VersionStore(str(tmp_path / f"s{n}"), pg),
                      load_function_config(str(fn_dir))))
    results, errors = [], []

    def publish(store, fn):
        try:
            results.append(store.publish(fn)[0]["Version"])
        except Exception as exc:   # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=publish, args=h) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and sorted(results, key=int) == ["1", "2", "3", "4"]
    assert hosts[0][0].numbers("fn") == [1, 2, 3, 4]


def test_an_alias_moved_on_another_host_takes_effect_within_a_second(tmp_path, pg, fn):
    host_a = VersionStore(str(tmp_path / "a"), pg)
    host_a.publish(fn)
    host_a.publish(__import__("dataclasses").replace(fn, timeout=7.0))
    AliasStore(host_a.state_dir, "fn", host_a).create("live", "1")
    resolver_b = Resolver(str(tmp_path / "b"), store=pg)
    assert resolver_b.resolve("fn", "live") == ("fn:1", "1")
    assert resolver_b.resolve("fn", "2") == ("fn:2", "2")   # published elsewhere: found
    moved_at = time.monotonic()
    AliasStore(host_a.state_dir, "fn", host_a).update("live", "2")
    while resolver_b.resolve("fn", "live") != ("fn:2", "2"):
        assert time.monotonic() - moved_at < 1.5, "host B still calls the old version"
        time.sleep(0.02)
    # On the host that moved it: the next call (the marker file), in another reader too.
    resolver_a = Resolver(host_a.state_dir, store=pg)
    assert resolver_a.resolve("fn", "live") == ("fn:2", "2")
    AliasStore(host_a.state_dir, "fn", host_a).update("live", "1")
    assert resolver_a.resolve("fn", "live") == ("fn:1", "1")


def test_files_of_an_older_sora_are_imported_once(tmp_path, store_backend, fn):
    state = tmp_path / "state"
    old = VersionStore(str(state), store_backend)
    record, _ = old.publish(fn)   # a version folder as an older Sora left it...
    old.conn.execute("DELETE FROM function_versions")   # ...without its row
    folder = state / "versions" / "fn"
    (folder / "aliases.json").write_text(json.dumps({"aliases": {"live": {
        "Name": "live", "FunctionVersion": "1", "Description": "", "RevisionId": "r"}}}))
    store = VersionStore(str(state), store_backend)
    assert import_files(store) == 2
    assert store.get("fn", "1")["CodeSha256"] == record["CodeSha256"]
    assert store.get("fn", "1")["LastModified"] == record["LastModified"]
    assert AliasStore(str(state), "fn", store).get("live")["FunctionVersion"] == "1"
    store.prune("fn", 1)
    store.conn.execute("DELETE FROM function_aliases")
    assert import_files(store) == 0   # once: a later removal is not undone
    assert store.get("fn", "1") is not None
    assert (folder / "aliases.json").exists() and (folder / "1" / "version.json").exists()
    if store_backend.kind == "postgresql":   # the row carries the code: another host runs it
        other = VersionStore(str(tmp_path / "other"), store_backend)
        assert other.ensure_local("fn", "1").directory.startswith(other.root)


def test_a_host_switched_to_postgresql_brings_its_versions(tmp_path, pg, fn):
    state = str(tmp_path / "state")
    on_sqlite = VersionStore(state)
    record, _ = on_sqlite.publish(fn)
    AliasStore(state, "fn", on_sqlite).create("live", "1")
    assert import_files(on_sqlite) == 0   # (its first start: nothing of an older Sora)
    on_pg = VersionStore(state, pg)
    assert import_files(on_pg) == 1   # the copy; aliases.json never existed
    assert on_pg.drop_orphans() == []
    assert on_pg.get("fn", "1")["CodeSha256"] == record["CodeSha256"]
    assert VersionStore(str(tmp_path / "b"), pg).ensure_local("fn", "1").version == "1"


def test_store_errors_are_503_without_the_password(tmp_path):
    url = "postgresql://sora:s3cret-pw@127.0.0.1:1/none"
    resolver = Resolver(str(tmp_path / "state"), store=StoreConfig(
        kind="postgresql", url=url, poolSize=1))
    with pytest.raises(VersionError) as err:
        resolver.resolve("fn", "1")
    assert err.value.status == 503 and "s3cret-pw" not in str(err.value)


def test_cached_aliases_keep_serving_while_the_store_is_down(tmp_path, fn,
                                                             postgres_server_factory):
    from sora.versions import changes
    server = postgres_server_factory()
    pg = StoreConfig(kind="postgresql", url=server.url(server.create_database()), poolSize=2)
    host_a = VersionStore(str(tmp_path / "a"), pg)
    host_a.publish(fn)
    AliasStore(host_a.state_dir, "fn", host_a).create("live", "1")
    resolver = Resolver(str(tmp_path / "b"), store=pg)
    assert resolver.resolve("fn", "live") == ("fn:1", "1")
    assert resolver.resolve("fn", "1") == ("fn:1", "1")
    server.stop()
    began = time.monotonic()
    while time.monotonic() - began < changes.RECHECK_S * 2:   # past a recheck: still served
        assert resolver.resolve("fn", "live") == ("fn:1", "1")
        assert resolver.resolve("fn", "1") == ("fn:1", "1")
    assert time.monotonic() - began < changes.RECHECK_S * 2 + 2.5   # waited once per cache
    with pytest.raises(VersionError) as err:   # never read: answered 503 at once
        resolver.resolve("other", "live")
    assert err.value.status == 503 and server.password not in str(err.value)
    server.start()
    moved = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not moved:   # the pool reconnects by itself
        try:
            AliasStore(host_a.state_dir, "fn", host_a).update("live", "$LATEST")
            moved = True
        except Exception:   # noqa: BLE001 - the store still coming back
            time.sleep(0.2)
    assert moved
    deadline = time.monotonic() + changes.OUTAGE_RECHECK_S + 5
    while resolver.resolve("fn", "live") != ("fn", "$LATEST"):
        assert time.monotonic() < deadline, "the resolver did not come back to the store"
        time.sleep(0.05)


def test_a_copy_keeps_what_the_code_hash_counts(tmp_path, pg, monkeypatch):
    """Large files count by size and mtime in CodeSha256: the tar keeps mtimes to the ns, so
    another host's copy hashes the same; links and empty folders come through as they were."""
    from sora.setup import run
    monkeypatch.setattr(run, "HASHED_CONTENT_MAX", 16)
    fn_dir = write_function(tmp_path, "big", {"index.js": HANDLER, "data/blob.bin": "x" * 100},
                            name="big")
    os.utime(fn_dir / "data" / "blob.bin", ns=(1_700_000_000_123_456_789,) * 2)
    os.mkdir(fn_dir / "empty")
    os.symlink("data/blob.bin", fn_dir / "inside-link")
    host_a = VersionStore(str(tmp_path / "a"), pg)
    record, _ = host_a.publish(load_function_config(str(fn_dir)))
    copy = VersionStore(str(tmp_path / "b"), pg).ensure_local("big", "1").directory
    assert os.stat(os.path.join(copy, "data", "blob.bin")).st_mtime_ns == \
        1_700_000_000_123_456_789
    assert os.path.isdir(os.path.join(copy, "empty"))
    assert os.readlink(os.path.join(copy, "inside-link")) == "data/blob.bin"
    assert record["CodeSha256"] == VersionStore(str(tmp_path / "b"), pg).get(
        "big", "1")["CodeSha256"]
