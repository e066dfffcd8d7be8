"""An attacker's pass over issue 17 on live hosts: callers with the wrong key on every new route,
hostile uploads and path-like names, a version's view of secrets, and a function that plants
what it can in its folder while watch mode reads it."""
from __future__ import annotations

import base64
import json
import os
import time
import urllib.parse

import psutil
import pytest

from sora.control import admin
from tests.hostile_zips import SYMLINK, lying_count_zip, lying_size_bomb, make_zip, unix_entry
from tests.support import SoraHost, json_of, wait_for, write_function

pytestmark = pytest.mark.integration

ADMIN = "admin-key-attack17-0123456789"
CALLER = "caller-key-attack17-0123456789"   # invoke:a only
ROLE = "arn:aws:iam::000000000000:role/sora"
MGMT = "/2015-03-31/functions"

# Answers with its version, and what it can see of other functions' secrets (the path is
# given by the test: the fixed folder another function's instances read).
PEEK = r"""
const fs = require('fs');
exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  const out = { version: process.env.AWS_LAMBDA_FUNCTION_VERSION, tag: 'TAG' };
  const dir = process.env.SORA_SECRETS_DIR;
  if (dir) { try { out.mine = fs.readFileSync(dir + '/TOKEN', 'utf8'); } catch (e) { out.mine = e.code; } }
  if (q.peek) {
    try { out.peek = fs.readdirSync(q.peek); } catch (e) { out.peek = e.code; }
    try { out.shm = fs.readdirSync('/dev/shm'); } catch (e) { out.shm = e.code; }
  }
  return { statusCode: 200, body: JSON.stringify(out) };
};
"""


def peek_code(tag: str) -> str:
    return PEEK.replace("TAG", tag)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("attack17")
    fns = base / "fns"
    a = write_function(fns, "a", {"index.js": peek_code("a1"), "token.txt": "a-token-one"},
                       name="a", secrets={"TOKEN": {"file": "token.txt"}})
    b = write_function(fns, "b", {"index.js": peek_code("b1"),
                                  "token.txt": "b-token-SECRET"},
                       name="b", secrets={"TOKEN": {"file": "token.txt"}})
    h = SoraHost(base, [a, b], https=False, api_key=ADMIN, extra={
        "auth": {"apiKeys": [{"name": "ops", "key": ADMIN, "scopes": ["admin"]},
                             {"name": "caller", "key": CALLER, "scopes": ["invoke:a"]}]},
        "managedFunctions": {"maxZipMB": 12, "maxUnzippedMB": 4, "maxFiles": 100}})
    h.start(wait_functions=["a", "b"])
    h.fns = fns
    yield h
    assert h.stop() == 0


def call(host, method: str, path: str, key: str = ADMIN, body=None):
    return host.session.request(method, host.url + path, timeout=60, json=body,
                                headers={"Authorization": f"Bearer {key}"})


def publish(host, name: str) -> str:
    r = call(host, "POST", f"{MGMT}/{name}/versions", body={})
    assert r.status_code == 201, r.text
    return json_of(r)["Version"]


def store_entries(host) -> list[str]:
    try:
        return sorted(os.listdir(host.base / "state" / "functions"))
    except FileNotFoundError:
        return []


def test_an_invoke_key_reaches_no_management_route_and_no_reload(host):
    """`invoke:a` is a caller of `a`, not its owner: it can neither change, publish, alias or
    delete `a` (nor `b`), nor reload anything, nor call `b` by any of its names."""
    version = publish(host, "b")
    assert call(host, "POST", f"{MGMT}/b/aliases",
                body={"Name": "live", "FunctionVersion": version}).status_code == 201
    zipped = base64.b64encode(make_zip([("index.js", "exports.handler=async()=>1")])).decode()
    routes = [("GET", MGMT, None),
              ("POST", MGMT, {"FunctionName": "mine", "Runtime": "nodejs20.x", "Role": ROLE,
                              "Handler": "index.handler", "Code": {"ZipFile": zipped}}),
              ("POST", "/api/reload", {"functions": None, "setup": "force"})]
    for name in ("a", "b"):
        routes += [("GET", f"{MGMT}/{name}", None), ("DELETE", f"{MGMT}/{name}", None),
                   ("PUT", f"{MGMT}/{name}/code", {"ZipFile": zipped}),
                   ("GET", f"{MGMT}/{name}/configuration", None),
                   ("PUT", f"{MGMT}/{name}/configuration", {"Timeout": 9}),
                   ("POST", f"{MGMT}/{name}/versions", {}),
                   ("GET", f"{MGMT}/{name}/versions", None),
                   ("POST", f"{MGMT}/{name}/aliases",
                    {"Name": "mine", "FunctionVersion": version}),
                   ("GET", f"{MGMT}/{name}/aliases", None),
                   ("GET", f"{MGMT}/{name}/aliases/live", None),
                   ("PUT", f"{MGMT}/{name}/aliases/live", {"FunctionVersion": "$LATEST"}),
                   ("DELETE", f"{MGMT}/{name}/aliases/live", None)]
    for method, path, body in routes:
        r = call(host, method, path, CALLER, body)
        assert r.status_code == 403, (method, path, r.status_code, r.text)
        r = call(host, method, path, "not-a-key-0123456789", body)
        assert r.status_code == 401, (method, path, r.status_code, r.text)
    # Nothing changed: b's alias and version are as they were, `mine` was not created.
    alias = json_of(call(host, "GET", f"{MGMT}/b/aliases/live"))
    assert alias["FunctionVersion"] == version and "mine" not in store_entries(host)
    # b by every name the data path takes: refused before anything runs.
    for path in ("/functions/b", f"/functions/b:{version}", "/functions/b:live",
                 "/functions/b%3Alive"):
        assert call(host, "GET", path, CALLER).status_code == 403, path
    for name in ("b", f"b:{version}", "b:live",
                 f"arn:aws:lambda:us-east-1:000000000000:function:b:{version}"):
        r = call(host, "POST", f"/2015-03-31/functions/{urllib.parse.quote(name, safe='')}"
                 "/invocations", CALLER, {})
        assert r.status_code == 403, (name, r.text)
    # Its own function, by a version: allowed (a's auth covers a's versions).
    mine = publish(host, "a")
    r = call(host, "GET", f"/functions/a:{mine}", CALLER)
    assert r.status_code == 200 and json_of(r)["version"] == mine, r.text


HOSTILE = {
    # The end record says 1 entry; its central directory holds 230,000 (11 MB).
    "lying-entry-count": (lambda: lying_count_zip(230_000), "more than 100 entries"),
    # Headers say 10 bytes; it holds 6 MB (maxUnzippedMB is 4).
    "lying-sizes": (lambda: lying_size_bomb(6 << 20), "unzipped"),
    # One path twice once normalised: `lib/./u.js`, `lib//u.js`, `lib\u.js` are `lib/u.js`.
    "dot-segment-twin": (lambda: make_zip([("index.js", "1"), ("lib/u.js", "1"),
                                           ("lib/./u.js", "2")]), "appears twice"),
    "double-slash-twin": (lambda: make_zip([("index.js", "1"), ("lib/u.js", "1"),
                                            ("lib//u.js", "2")]), "appears twice"),
    "backslash-twin": (lambda: make_zip([("index.js", "1"), ("lib/u.js", "1"),
                                         ("lib\\u.js", "2")]), "appears twice"),
    "file-then-folder": (lambda: make_zip([("index.js", "1"), ("lib", "x"),
                                           ("lib/u.js", "2")]), "file and a folder"),
    "backslash-dotdot": (lambda: make_zip([("index.js", "1"), ("lib\\..\\..\\x.js", "2")]),
                         "escapes"),
    "drive": (lambda: make_zip([("index.js", "1"), ("C:\\x.js", "2")]), "absolute"),
    "link-then-through-it": (lambda: make_zip([
        ("index.js", "1"), (unix_entry("lib", SYMLINK), "/etc"), ("lib/passwd", "x")]),
        "symbolic link"),
}


def gateway_workers(host) -> list[psutil.Process]:
    found = []
    for proc in host.descendants():
        try:
            if "gunicorn" in " ".join(proc.cmdline()) and not proc.children():
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize("attack", sorted(HOSTILE))
def test_hostile_uploads_are_refused_fast_with_nothing_written(host, attack):
    make, words = HOSTILE[attack]
    blob = make()
    gateway = gateway_workers(host)
    began = time.monotonic()
    r = call(host, "POST", MGMT, body={
        "FunctionName": "hostile", "Runtime": "nodejs20.x", "Role": ROLE,
        "Handler": "index.handler", "Code": {"ZipFile": base64.b64encode(blob).decode()}})
    took = time.monotonic() - began
    assert r.status_code == 400 and "InvalidParameterValueException" in r.text, r.text
    assert words in r.text, r.text
    assert took < 10, took   # (the lying count took 9 s of the gateway's CPU per request)
    assert "hostile" not in store_entries(host)
    assert [e for e in store_entries(host) if e.startswith((".create-", ".update-"))] == []
    for proc in gateway:   # the gateway did not grow by the central directory's size
        try:
            assert proc.memory_info().rss < 400 << 20, proc.memory_info()
        except psutil.Error:
            continue
    assert not os.path.exists("/etc/passwd.sora-test") and \
        not (host.base / "x.js").exists() and not os.path.exists("C:\\x.js")


@pytest.mark.parametrize("path,body", [
    (MGMT, {"FunctionName": "../escape"}),
    (MGMT, {"FunctionName": "a/../../escape"}),
    (MGMT, {"FunctionName": "arn:aws:lambda:us-east-1:000000000000:function:../x"}),
    (MGMT, {"FunctionName": "a:1"}),   # a name with a qualifier is not a new function
    (f"{MGMT}/..%2F..%2Fescape/versions", {}),
    (f"{MGMT}/a/aliases", {"Name": "../../escape", "FunctionVersion": "1"}),
    (f"{MGMT}/a/aliases", {"Name": "x/y", "FunctionVersion": "1"}),
    (f"{MGMT}/a/aliases", {"Name": "ok", "FunctionVersion": "../../1"}),
    (f"{MGMT}/a/aliases", {"Name": "ok", "FunctionVersion": "1",
                           "RoutingConfig": {"AdditionalVersionWeights": {"../2": 0.5}}}),
    (f"{MGMT}/a/aliases", {"Name": "ok", "FunctionVersion": "1",
                           "RoutingConfig": {"AdditionalVersionWeights": {"1": "NaN"}}}),
])
def test_names_that_are_paths_name_nothing(host, path, body):
    """A function name, qualifier, alias or version that is a path is refused (4xx) before it
    names a folder: nothing appears in the state dir."""
    before = sorted(p for p in (host.base / "state").rglob("*") if "logs" not in p.parts)
    zipped = base64.b64encode(make_zip([("index.js", "exports.handler=async()=>1")])).decode()
    if path == MGMT:
        body = {"Runtime": "nodejs20.x", "Role": ROLE, "Handler": "index.handler",
                "Code": {"ZipFile": zipped}, **body}
    r = call(host, "POST", path, body=body)
    assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text)
    after = sorted(p for p in (host.base / "state").rglob("*") if "logs" not in p.parts)
    assert [p for p in after if p not in before] == []
    assert not (host.base / "escape").exists() and not (host.base / "state/escape").exists()


@pytest.mark.parametrize("path", [
    "/functions/a:..%2F..%2Fx", "/functions/a:1%2F..%2F..%2Fx", "/functions/a:$LATEST%2F..",
    "/functions/..%2Fa", "/functions/a:" + "9" * 40,
])
def test_qualifiers_that_are_paths_are_refused_on_function_urls(host, path):
    r = call(host, "GET", path)
    assert r.status_code in (400, 404), (path, r.status_code, r.text)


def test_a_version_sees_neither_another_functions_secrets_nor_latests(host):
    """A version is a function's: it reads its own secrets, never `b`'s (another sandbox
    uid, a folder it cannot see), and never one that $LATEST's worker rewrote."""
    v = publish(host, "a")
    b_secrets = f"/dev/shm/{next(n for n in os.listdir('/dev/shm') if n.endswith('-b'))}"
    r = call(host, "GET", f"/functions/a:{v}?peek={urllib.parse.quote(b_secrets)}")
    seen = json_of(r)
    assert r.status_code == 200 and seen["version"] == v, r.text
    assert seen["peek"] in ("ENOENT", "EACCES") and "b-token-SECRET" not in r.text, seen
    assert all(not name.endswith("-b") for name in seen["shm"]) if isinstance(
        seen["shm"], list) else True
    assert seen["mine"] == "a-token-one"
    # The operator rotates a's token; $LATEST takes it, the published version keeps its own
    # copy of the folder (token.txt included): the two must not overwrite each other's.
    (host.fns / "a" / "token.txt").write_text("a-token-two")
    report = admin.request(str(host.base / "state"), "reload",
                           {"functions": ["a"], "setup": "auto"}, 60)
    assert report["functions"]["a"]["action"] == "replaced", report
    assert json_of(call(host, "GET", "/functions/a"))["mine"] == "a-token-two"
    v2 = publish(host, "a")
    # Versions' workers start on demand; each start rewrites its secrets where it keeps them.
    assert json_of(call(host, "GET", f"/functions/a:{v}"))["mine"] == "a-token-one"
    assert json_of(call(host, "GET", "/functions/a"))["mine"] == "a-token-two"
    assert json_of(call(host, "GET", f"/functions/a:{v2}"))["mine"] == "a-token-two"
    assert json_of(call(host, "GET", f"/functions/a:{v}"))["mine"] == "a-token-one"
    # Nothing of a secret value went into the version's record.
    for record in (host.base / "state" / "versions" / "a").rglob("version.json"):
        assert "a-token" not in record.read_text()


# A writableFolder function that plants, on each call, what a watcher reading as root must
# not follow or block on: a fifo, links to /dev/zero and to a root-only file, a file flipped
# between a regular file and a link, and a write of the operator's own data file.
PLANTER = r"""
const fs = require('fs');
exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  if (q.plant) {
    const { execFileSync } = require('child_process');
    try { execFileSync('mkfifo', ['pipe']); } catch (e) {}
    try { fs.symlinkSync('/dev/zero', 'zero.js'); } catch (e) {}
    try { fs.symlinkSync('/etc/shadow', 'shadow.js'); } catch (e) {}
    fs.writeFileSync('flip.tmp', 'x');
    for (let i = 0; i < 2000; i++) {
      try { fs.renameSync('flip.tmp', 'flip.js'); } catch (e) {}
      try { fs.symlinkSync('/dev/zero', 'flip.tmp'); } catch (e) {}
      try { fs.renameSync('flip.tmp', 'flip.js'); } catch (e) {}
      fs.writeFileSync('flip.tmp', 'x' + i);
    }
    fs.appendFileSync('data.txt', 'more\n');
  }
  return { statusCode: 200, body: 'TAG' };
};
"""


def test_a_function_planting_links_and_fifos_does_not_stall_or_bloat_watch_mode(tmp_path):
    folder = write_function(tmp_path / "fns", "planter",
                            {"index.js": PLANTER.replace("TAG", "one"), "data.txt": "d\n"},
                            name="planter", writableFolder=True)
    host = SoraHost(tmp_path, [folder], https=False, options=["--watch"])
    host.start(wait_functions=["planter"])
    try:
        assert host.invoke("planter").text == "one"
        r = host.invoke("planter", params={"plant": "1"})
        assert r.status_code == 200, r.text
        assert os.path.islink(folder / "zero.js") and (folder / "pipe").exists()
        # The developer's edit is still seen and live: the watch neither hung on the fifo
        # nor read /dev/zero (the supervisor would have grown until it ran out of memory).
        (folder / "index.js").write_text(PLANTER.replace("TAG", "two"))
        wait_for(lambda: host.invoke("planter").text == "two", timeout=20,
                 what="the edit to be live")
        supervisor = psutil.Process(host.proc.pid)
        assert supervisor.memory_info().rss < 300 << 20, supervisor.memory_info()
        assert host.invoke("planter", params={"plant": "1"}).status_code == 200
        (folder / "index.js").write_text(PLANTER.replace("TAG", "three"))
        wait_for(lambda: host.invoke("planter").text == "three", timeout=20,
                 what="the second edit to be live")
        assert "Traceback" not in host.log(whole=True)
    finally:
        assert host.stop() == 0


def test_the_admin_socket_refuses_what_is_not_an_op(host):
    """The admin channel is Sora's own (0700 run folder); still, what reaches it malformed
    is an error answer, not the supervisor's end."""
    state = str(host.base / "state")
    assert oct(os.stat(os.path.join(state, "run")).st_mode & 0o777) == "0o700"
    for op, args in (("../reload", {}), ("reload", {"functions": "a"}),
                     ("reload", {"functions": [["a"]]}), ("reload", {"setup": "rm -rf"}),
                     ("publish", {"function": "../b"}), ("publish", {"function": None}),
                     ("publish", {"function": "a", "description": 7})):
        answer = admin.request(state, op, args, 30)
        assert "error" in answer, (op, args, answer)
    assert host.health()["functions"]["a"]["state"] == "RUNNING"
    assert json.dumps(host.health()).count("RUNNING") >= 2


PRELOADED = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((constructor)) static void ran(void) {
    const char *out = getenv("PRELOAD_OUT");
    if (!out) return;
    char path[600];
    snprintf(path, sizeof path, "%s/ran-as-%d-%d", out, (int)geteuid(), (int)getpid());
    FILE *f = fopen(path, "w");
    if (f) { fputs("ran\n", f); fclose(f); }
}
"""

LISTS_TMP = r"""
exports.handler = async () => ({
  preload: process.env.LD_PRELOAD, uid: process.getuid(),
  tmp: require('fs').readdirSync('/tmp').filter((n) => n.startsWith('ran-as-')),
});
"""


def test_loader_variables_in_a_functions_env_run_nothing_outside_its_sandbox(host, tmp_path):
    """Environment.LD_PRELOAD naming a library in the function's own zip: before the fix
    the environment was bubblewrap's own, and the library ran as root on the host (its file
    appeared in the host's folder, uid 0) before any namespace existed. Now only the
    function's command gets it, as the function's uid, inside the sandbox."""
    import shutil
    import subprocess
    if shutil.which("gcc") is None:
        pytest.skip("no C compiler to build the library")
    (tmp_path / "lib.c").write_text(PRELOADED)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "evil.so"),
                    str(tmp_path / "lib.c")], check=True, capture_output=True)
    witness = tmp_path / "witness"
    witness.mkdir()
    witness.chmod(0o777)
    code = host.base / "state" / "functions" / "preload" / "code"
    zipped = make_zip([("index.js", LISTS_TMP), ("evil.so", (tmp_path / "evil.so").read_bytes())])
    env = {"LD_PRELOAD": str(code / "evil.so"), "LD_LIBRARY_PATH": str(code),
           "GCONV_PATH": str(code), "PRELOAD_OUT": str(witness)}
    r = call(host, "POST", MGMT, body={
        "FunctionName": "preload", "Runtime": "nodejs20.x", "Role": ROLE,
        "Handler": "index.handler", "Environment": {"Variables": env},
        "Code": {"ZipFile": base64.b64encode(zipped).decode()}})
    assert r.status_code == 201 and json_of(r)["State"] == "Active", r.text
    try:
        r = call(host, "POST", f"{MGMT}/preload/invocations", body={})
        seen = json_of(r)
        assert r.status_code == 200, r.text
        assert os.listdir(witness) == []   # nothing ran on the host's side of the sandbox
        assert seen["preload"] == env["LD_PRELOAD"] and seen["uid"] != 0, seen
        # (The function's own command still has it: PRELOAD_OUT is not mounted in its sandbox,
        # so the library, run as its uid, could write nowhere there.)
    finally:
        call(host, "DELETE", f"{MGMT}/preload")


def test_a_functions_path_does_not_choose_the_programs_run_as_root(host, tmp_path):
    """Environment.PATH naming the function's own code folder, whose zip holds executable
    `bwrap` and `setpriv` scripts: before the fix root ran that `bwrap` on the host (Python
    looks a program up on the PATH of the environment it is given), and bubblewrap would
    have run that `setpriv` as root in the sandbox."""
    witness = tmp_path / "witness"
    witness.mkdir()
    witness.chmod(0o777)
    code = host.base / "state" / "functions" / "pathy" / "code"
    fake = "#!/bin/sh\nid > %s/%s-ran 2>/dev/null; id > /tmp/%s-ran\nexec /usr/bin/%s \"$@\"\n"
    zipped = make_zip([
        ("index.js", "exports.handler = async () => ({ path: process.env.PATH, uid: "
                     "process.getuid(), tmp: require('fs').readdirSync('/tmp') });"),
        (unix_entry("bwrap", 0o100755), fake % (witness, "bwrap", "bwrap", "bwrap")),
        (unix_entry("setpriv", 0o100755), fake % (witness, "setpriv", "setpriv", "setpriv"))])
    r = call(host, "POST", MGMT, body={
        "FunctionName": "pathy", "Runtime": "nodejs20.x", "Role": ROLE,
        "Handler": "index.handler",
        "Environment": {"Variables": {"PATH": f"{code}:/usr/local/bin:/usr/bin:/bin"}},
        "Code": {"ZipFile": base64.b64encode(zipped).decode()}})
    assert r.status_code == 201 and json_of(r)["State"] == "Active", r.text
    try:
        r = call(host, "POST", f"{MGMT}/pathy/invocations", body={})
        seen = json_of(r)
        assert r.status_code == 200, r.text
        assert os.listdir(witness) == [], os.listdir(witness)
        assert not any(name.endswith("-ran") for name in seen["tmp"]), seen
        assert seen["path"].startswith(str(code)) and seen["uid"] != 0, seen
    finally:
        call(host, "DELETE", f"{MGMT}/pathy")
