"""Watched folders in the sandbox (issue 18, point 3): each file trigger's folder is mounted into
the function's sandbox at its own path, read-only or, with `writable: true`, writable; never
through a link the function's setup (or anyone dropping files) planted. Invoked over the real
gateway (an HTTP trigger beside the file triggers in the same sora.yaml): the mount exists
whether a firing happened or not, so the trigger service is not needed here."""
from __future__ import annotations

import os

import pytest

from sora.isolation import sandbox
from tests.support import SoraHost, processes_in, wait_for, write_function

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0 or not sandbox.available(),
                                 reason="needs root and bubblewrap")]

PROBE = """
import os
import shutil


def attempt(action):
    try:
        return action()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror}"


def write(path):
    with open(path, "w") as fh:
        fh.write("made in the sandbox")
    return "wrote"


def read(path):
    with open(path) as fh:
        return fh.read()


def handler(event, context):
    q = event.get("queryStringParameters") or {}
    op, a, b = q.get("op"), q.get("a"), q.get("b")
    if op == "read":
        return {"result": attempt(lambda: read(a))}
    if op == "write":
        return {"result": attempt(lambda: write(a))}
    if op == "move":   # shutil.move: a copy and delete across the two mounts
        return {"result": attempt(lambda: shutil.move(a, b) and "moved")}
    if op == "list":
        return {"result": attempt(lambda: sorted(os.listdir(a)))}
    return {"result": "unknown op"}
"""

NODE_WRITER = """
const fs = require('fs');
exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  try { fs.writeFileSync(q.a, 'from node'); return { result: 'wrote' }; }
  catch (e) { return { result: e.code }; }
};
"""

PY = {"language": "python", "entrypoint": "app.py"}
RUNNING = ["reader", "mover", "node-writer", "swapped"]
PLANTERS = {"planter-etc": "/etc", "planter-other": None}   # None: the mover's inbox


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("trigger-sandbox")
    fns = base / "fns"
    drop = base / "drop" / "incoming"     # an operator's folder, outside every function's
    drop.mkdir(parents=True)
    private = drop / "private.csv"          # a dropper's own file, mode 0600
    private.write_text("id,total\n1,42\n")
    os.chmod(private, 0o600)
    (drop / "shadow").symlink_to("/etc/shadow")   # planted by whoever drops files
    reader = write_function(fns, "reader", {"app.py": PROBE, "inbox/a.csv": "a,b\n1,2\n"},
                            name="reader", trigger=["http", {"file": {"path": "./inbox"}},
                                                    {"file": {"path": str(drop)}}], **PY)
    mover = write_function(fns, "mover", {"app.py": PROBE, "inbox/move-me.csv": "x\n",
                                          "done/.keep": ""},
                           name="mover", trigger=["http",
                                                  {"file": {"path": "./inbox", "writable": True}},
                                                  {"file": {"path": "./done", "writable": True}}],
                           **PY)
    # Node.js: its instances come from the runtime pool's standby, started by the supervisor
    # in the function's sandbox, watched folder and all.
    node = write_function(fns, "node-writer", {"index.js": NODE_WRITER, "inbox/.keep": ""},
                          name="node-writer",
                          trigger=["http", {"file": {"path": "./inbox", "writable": True}}])
    swapped = write_function(fns, "swapped", {"app.py": PROBE, "inbox/.keep": ""},
                             name="swapped", trigger=["http", {"file": {"path": "./inbox"}}],
                             **PY)
    planters = []
    for name, target in PLANTERS.items():
        target = target or str(mover / "inbox")
        # Its setup replaces the watched ./inbox (a real folder when the config was read)
        # with a link: to the host's /etc, or to another function's watched folder.
        planters.append(write_function(
            fns, name, {"app.py": PROBE, "inbox/.keep": ""}, name=name,
            setup=[f"rm -rf inbox && ln -s {target} inbox"],
            trigger=["http", {"file": {"path": "./inbox"}}], **PY))
    h = SoraHost(base, [reader, mover, node, swapped, *planters], https=False)
    h.drop, h.reader, h.mover, h.node, h.swapped = drop, reader, mover, node, swapped
    h.start(wait_functions=RUNNING, timeout=120)
    yield h
    assert h.stop() == 0


def probe(host, name, op, a, b=None):
    params = {"op": op, "a": str(a)}
    if b is not None:
        params["b"] = str(b)
    response = host.invoke(name, params=params)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def test_a_sandboxed_function_reads_the_file_in_its_watched_folder(host):
    assert probe(host, "reader", "read", host.reader / "inbox" / "a.csv") == "a,b\n1,2\n"
    # The operator's folder, at its own path; a dropper's 0600 file is readable (the ACL).
    assert probe(host, "reader", "read", host.drop / "private.csv") == "id,total\n1,42\n"
    # A file dropped later, group-readable, is readable too (the default ACL).
    later = host.drop / "later.csv"
    fd = os.open(later, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    os.write(fd, b"late\n")
    os.close(fd)
    assert probe(host, "reader", "read", later) == "late\n"


def test_a_file_dropped_0600_after_the_start_is_readable_once_its_trigger_fired(host):
    # Its own mode masks the folder's default ACL entry: the trigger service gives the
    # function's uid read access on the descriptor it hashes, before the event is queued.
    late = host.drop / "late-private.csv"
    fd = os.open(late, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"secret to the function only\n")
    os.close(fd)
    assert wait_for(lambda: probe(host, "reader", "read", late) ==
                    "secret to the function only\n", timeout=30,
                    what="the fired file to be readable in the sandbox")
    # Only the function's uid was added (ls shows the ACL's mask as the group bits): others
    # still cannot read it.
    assert os.stat(late).st_mode & 0o707 == 0o600


def test_without_writable_it_cannot_write(host):
    for folder in (host.reader / "inbox", host.drop):
        assert probe(host, "reader", "write", folder / "new.txt") == \
            "OSError: Read-only file system"
        assert not (folder / "new.txt").exists()


def test_with_writable_it_moves_the_file_to_a_sibling_folder(host):
    moved = probe(host, "mover", "move", host.mover / "inbox" / "move-me.csv",
                  host.mover / "done" / "move-me.csv")
    assert moved == "moved"
    assert not (host.mover / "inbox" / "move-me.csv").exists()
    assert (host.mover / "done" / "move-me.csv").read_text() == "x\n"
    # The function folder itself stays read-only.
    assert probe(host, "mover", "write", host.mover / "new.txt") == \
        "OSError: Read-only file system"


def test_a_node_instance_from_the_pool_writes_its_writable_inbox(host):
    assert probe(host, "node-writer", "write", host.node / "inbox" / "n.txt") == "wrote"
    assert (host.node / "inbox" / "n.txt").read_text() == "from node"
    assert probe(host, "node-writer", "write", host.node / "n.txt") == "EROFS"
    assert "cannot pre-start" not in host.log(whole=True)


def test_it_cannot_see_another_functions_watched_folder(host):
    assert probe(host, "reader", "list", host.mover / "inbox").startswith(
        "FileNotFoundError")
    assert probe(host, "mover", "list", host.drop).startswith("FileNotFoundError")


def test_a_link_dropped_into_the_folder_reaches_nothing_the_uid_could_not(host):
    assert probe(host, "reader", "read", host.drop / "shadow") == \
        "PermissionError: Permission denied"


@pytest.mark.parametrize("name", list(PLANTERS))
def test_a_watched_folder_replaced_by_a_link_is_not_mounted(host, name):
    # The setup's link is not followed: the function does not start with it mounted, and
    # /healthz says why.
    state = wait_for(lambda: (s := host.function_state(name))["state"] != "STARTING" and
                     "trigger[1].file.path" in (s.get("reason") or "") and s,
                     timeout=90, what=f"{name}'s refusal")
    assert state["state"] != "RUNNING"
    assert "symbolic link" in state["reason"], state
    response = host.invoke(name, params={"op": "list", "a": "/"})
    assert response.status_code >= 500
    assert "trigger[1].file.path" in host.log(whole=True)


def test_a_folder_swapped_for_a_link_while_serving_stops_the_next_instance(host):
    # After the worker's start: each instance's start opens the folder again, so the next
    # instance (this one is killed) does not start with the link mounted.
    assert probe(host, "swapped", "list", host.swapped / "inbox") == [".keep"]
    inbox = host.swapped / "inbox"
    os.rename(inbox, host.swapped / "inbox.real")
    os.symlink("/etc", inbox)
    for proc in processes_in(host.swapped):
        proc.kill()
    state = wait_for(lambda: "trigger[1].file.path" in
                     ((s := host.function_state("swapped")).get("reason") or "") and s,
                     timeout=60, what="the refusal")
    assert "symbolic link" in state["reason"], state
    response = host.invoke("swapped", params={"op": "list", "a": str(inbox)})
    assert "passwd" not in response.text
