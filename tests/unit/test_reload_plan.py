"""What a reload decides (issue 17 point 1), without processes: sora.supervisor.reload_plan
(add / remove / switch / keep / fail per function, host settings live or `needsRestart`), the
function table taking this host's functions from MEMBERS, the control plane listing removed
functions while their workers drain, and the admin channel's messages."""
from __future__ import annotations

import dataclasses
import json
import os
import time

import pytest
import yaml

from sora import protocol as p
from sora.config import BrokenFunction, load_host_config
from sora.control import admin
from sora.control.plane import ControlPlane
from sora.function_table import FunctionTable
from sora.supervisor import reload_plan as plan
from tests.support import write_function

CODE = {"index.js": "exports.handler = async () => 1;\n"}


def host_config(tmp_path, names, server=None, extra=None):
    dirs = [write_function(tmp_path / "fns", n, CODE, name=n) for n in names]
    path = tmp_path / "host-config.yaml"
    path.write_text(yaml.safe_dump({
        "functionPaths": [str(d) for d in dirs],
        "server": {"httpPort": 8080, "gatewayWorkers": 1, **(server or {})},
        "stateDir": str(tmp_path / "state"), **(extra or {})}))
    return load_host_config(str(path))


def serving(config):
    fns = {fn.name: fn for fn in config.functions}
    return fns, {name: plan.fingerprint(fn.directory) for name, fn in fns.items()}


def test_unchanged_functions_are_kept(tmp_path):
    old = host_config(tmp_path, ["a", "b"])
    fns, prints = serving(old)
    plans = plan.plan_functions(fns, prints, {}, load_host_config(old.path))
    assert {n: x.action for n, x in plans.items()} == {"a": plan.KEEP, "b": plan.KEEP}


def test_added_removed_and_changed_functions(tmp_path):
    old = host_config(tmp_path, ["a", "b", "c"])
    fns, prints = serving(old)
    new = host_config(tmp_path, ["a", "b", "d"])      # c removed, d added
    (tmp_path / "fns" / "a" / "index.js").write_text("exports.handler = async () => 2;\n")
    spec = yaml.safe_load((tmp_path / "fns" / "b" / "sora.yaml").read_text())
    (tmp_path / "fns" / "b" / "sora.yaml").write_text(yaml.safe_dump({**spec, "timeout": 7}))
    new = load_host_config(new.path)
    plans = plan.plan_functions(fns, prints, {}, new)
    assert plans["a"].action == plan.SWITCH and plans["a"].reason == "its folder changed"
    assert plans["b"].action == plan.SWITCH and "timeout" in plans["b"].reason
    assert plans["b"].config.timeout == 7
    assert plans["c"].action == plan.REMOVE
    assert plans["d"].action == plan.ADD and plans["d"].config.name == "d"


def test_an_invalid_sora_yaml_fails_and_the_previous_config_serves(tmp_path):
    old = host_config(tmp_path, ["a"])
    fns, prints = serving(old)
    spec = (tmp_path / "fns" / "a" / "sora.yaml").read_text()
    (tmp_path / "fns" / "a" / "sora.yaml").write_text(spec + "timeout: soon\n")
    plans = plan.plan_functions(fns, prints, {}, load_host_config(old.path))
    assert plans["a"].action == plan.FAIL and "timeout" in plans["a"].reason
    assert plans["a"].config is None


def test_a_broken_function_stays_as_it_was_unless_its_reason_changed(tmp_path):
    new = host_config(tmp_path, ["a"])
    broken = BrokenFunction("x", "/nowhere", "sora.yaml: name: required")
    new = dataclasses.replace(new, broken=[broken])
    assert plan.plan_functions({}, {}, {"x": broken.reason}, new)["x"].action == plan.KEEP
    assert plan.plan_functions({}, {}, {"x": "other"}, new)["x"].action == plan.FAIL


def test_only_the_named_functions_are_looked_at(tmp_path):
    old = host_config(tmp_path, ["a", "b"])
    fns, prints = serving(old)
    for name in ("a", "b"):
        (tmp_path / "fns" / name / "index.js").write_text("exports.handler = async () => 3;\n")
    plans = plan.plan_functions(fns, prints, {}, load_host_config(old.path), only={"b"})
    assert list(plans) == ["b"] and plans["b"].action == plan.SWITCH


def test_the_fingerprint_sees_edits_and_ignores_bytecode_caches(tmp_path):
    folder = write_function(tmp_path, "f", CODE, name="f")
    first = plan.fingerprint(str(folder))
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert plan.fingerprint(str(folder)) == first
    (folder / "index.js.new").write_text("exports.handler = async () => 1;\n")
    os.replace(folder / "index.js.new", folder / "index.js")   # same bytes, a new file
    assert plan.fingerprint(str(folder)) != first
    assert plan.fingerprint(str(tmp_path / "missing")) == ""


def test_host_settings_are_live_or_need_a_restart(tmp_path):
    old = host_config(tmp_path, ["a"])
    new = host_config(tmp_path, ["a"], server={"httpPort": 8081, "maxBodyBytes": 1000,
                                               "gatewayWorkers": 3},
                      extra={"stateDir": str(tmp_path / "elsewhere"),
                             "limits": {"maxInstances": 3},
                             "auth": {"apiKeys": [{"name": "k", "scopes": ["admin"],
                                                   "key": "k" * 20}]}})
    live, restart = plan.host_changes(old, new)
    assert live == ["auth.apiKeys", "server.maxBodyBytes"]
    assert restart == ["limits.maxInstances", "server.gatewayWorkers", "server.httpPort",
                       "stateDir"]
    assert plan.host_changes(new, load_host_config(new.path)) == ([], [])


def test_a_renewed_file_changes_the_certificate_digest(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("one")
    first = plan.files_digest([str(cert), None])
    assert plan.files_digest([str(cert)]) == first
    cert.write_text("two")
    assert plan.files_digest([str(cert)]) != first


# --- the clients' side: the function table and MEMBERS ---------------------------------------
def members(**functions):
    return {"version": 1, "functions": functions}


def local(config=None, **extra):
    entry = {"available": True, "reason": "", "maxQueued": 10, "maxWait": 3.0, "local": True,
             "workers": [], **extra}
    if config is not None:
        entry["config"] = dataclasses.asdict(config)
    return entry


def test_the_function_table_takes_added_changed_and_removed_local_functions(tmp_path):
    config = host_config(tmp_path, ["a", "b"])
    table = FunctionTable(config)
    a, b = config.functions
    changed = dataclasses.replace(a, timeout=9.0, auth="none")
    added = dataclasses.replace(b, name="c")
    table.update(members(a=local(changed), b=local(b), c=local(added)))
    assert table.get("a").timeout == 9.0 and table.is_public("a")
    assert table.wait("a") > 18   # timeout x 2 + slack
    assert table.knows("c") and table.get("c").name == "c"
    version = table.version
    table.update(members(a=local(changed), b=local(b, removed=True), c=local(added)))
    assert not table.knows("b") and table.get("b") is None
    assert table.version > version
    table.update(members(a=local(changed), c=local(added)))
    assert table.names() == ["a", "c"]
    # A local entry without a config is a broken function: known, not callable.
    table.update(members(a=local(changed), c=local(added),
                         x=local(None, available=False, reason="bad sora.yaml")))
    assert table.knows("x") and table.get("x") is None
    assert table.broken["x"].reason == "bad sora.yaml"


def test_members_without_local_entries_do_not_empty_the_table(tmp_path):
    config = host_config(tmp_path, ["a"])
    table = FunctionTable(config)
    table.update(members())   # a plane of an older shape, or none listed yet
    assert table.knows("a")


# --- the control plane: removed functions and the admin socket --------------------------------
def test_a_removed_function_is_listed_as_removed_then_forgotten(tmp_path):
    plane = ControlPlane(f"ipc://{tmp_path}/c.sock")
    try:
        spec = {"maxQueued": 1, "maxWait": 1.0, "available": True, "config": {"name": "f"}}
        plane.set_functions({"f": spec})
        plane.register(b"f/1", "f", "ipc://x", 1, time.monotonic())
        plane.set_functions({"f": {**spec, "removed": True}})
        listed = plane.members()["functions"]["f"]
        assert listed["removed"] is True and listed["workers"][0]["id"] == "f/1"
        plane.set_functions({})
        assert "f" not in plane.members()["functions"] and b"f/1" not in plane.workers
    finally:
        plane.close()


def test_admin_requests_are_decoded_or_ignored():
    frames = [b"peer", p.ADMIN, b"id1", b"reload", b'{"functions": null}']
    request = admin.AdminRequest.decode(frames)
    assert (request.op, request.args, request.request_id) == ("reload", {"functions": None},
                                                             b"id1")
    answer = request.answer_frames({"ok": 1})
    assert answer[:3] == [b"peer", p.ADMIN, b"id1"] and json.loads(answer[3]) == {"ok": 1}
    for bad in ([b"peer", p.ADMIN, b"id"], [b"peer", p.ADMIN, b"id", b"op", b"[1]"],
                [b"peer", p.ADMIN, b"id", b"\xff", b"{}"], [b"peer", b"x", b"i", b"o", b"{}"],
                [b"peer", p.ADMIN, b"id", b"op", b"{"]):
        assert admin.AdminRequest.decode(bad) is None
    assert admin.error("T", "m") == {"error": {"type": "T", "message": "m"}}


def test_a_request_to_no_supervisor_says_so(tmp_path):
    with pytest.raises(admin.AdminUnavailable):
        admin.request(str(tmp_path), "reload", {}, timeout=0.2)


def test_files_dropped_into_a_watched_folder_inside_the_function_change_nothing(tmp_path):
    """A file trigger's folder inside the function's is data: a reload does not replace the
    function for what was dropped there, nor does setup's cache count it as changed code."""
    from sora.config import load_function_config
    from sora.setup.run import content_hash
    folder = write_function(tmp_path, "f", {**CODE, "data/inbox/.keep": ""}, name="f",
                            trigger=["http", {"file": {"path": "./data/inbox"}}])
    fn = load_function_config(str(folder))
    assert fn.data_dirs == ("data/inbox",)
    before = plan.fingerprint(str(folder), fn.data_dirs)
    hashed = content_hash(str(folder), set(fn.data_dirs))
    plain, plain_hash = plan.fingerprint(str(folder)), content_hash(str(folder), set())
    (folder / "data" / "inbox" / "report.csv").write_text("a,b\n")
    assert plan.fingerprint(str(folder), fn.data_dirs) == before
    assert content_hash(str(folder), set(fn.data_dirs)) == hashed
    # Without the exclusion both see it (so the tests above can fail), and code still counts.
    assert plan.fingerprint(str(folder)) != plain
    assert content_hash(str(folder), set()) != plain_hash
    (folder / "data" / "helper.js").write_text("module.exports = 1;\n")
    assert plan.fingerprint(str(folder), fn.data_dirs) != before
    assert content_hash(str(folder), set(fn.data_dirs)) != hashed
