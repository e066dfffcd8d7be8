"""Issue 14 point 2, attacked as a function's author would: what a setup command (or a
`writableFolder` function) leaves in the paths Sora then opens, copies, chowns or binds as
root — a secret swapped for a link to a root-only file, links planted in the setup home, an
interpreter linked to another function's folder — must never be followed.

A host of its own: the attacks need setups, a home of Sora's with package settings to copy,
and `coldStart: always-setup` to run setup again while the host runs."""
from __future__ import annotations

import os
import shutil
import stat

import pytest

from sora.isolation import sandbox
from tests.support import SoraHost, json_of, wait_for, write_function

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0 or not sandbox.available(),
                                 reason="the attacks are on what Sora does as root, sandboxed")]

MARKER = "root-only-marker-1f9c2e"
NODE = shutil.which("node") or "/usr/bin/node"

SECRET_READER = r"""
const fs = require('fs');
const path = require('path');
exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  if (q.swap) {   // writableFolder: swap its own secret file for a link, as root reads it
    fs.rmSync('key.txt', { force: true });
    fs.symlinkSync(q.swap, 'key.txt');
    return { swapped: true };
  }
  const dir = process.env.SORA_SECRETS_DIR;
  const files = {};
  for (const name of fs.readdirSync(dir)) files[name] = fs.readFileSync(path.join(dir, name), 'utf8');
  return { files };
};
"""
READER = r"""
const fs = require('fs');
exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  try { return { read: fs.readFileSync(q.path, 'utf8') }; } catch (e) { return { error: e.code }; }
};
"""
COUNTER = "exports.handler = async () => ({ ok: true });\n"
LENDER_CODE = f"// {MARKER}: the lender's own code\nexports.handler = async () => ({{ ok: true }});\n"


@pytest.fixture(scope="module")
def attack(tmp_path_factory):
    base = tmp_path_factory.mktemp("paths-as-root")
    fns, host_files = base / "fns", base / "host"
    host_files.mkdir()
    # Root-only files of the host's (as the admin key would be).
    marker = host_files / "admin-key"
    marker.write_text(MARKER)
    os.chmod(marker, 0o600)
    (host_files / "keys").mkdir(mode=0o700)
    (host_files / "keys" / "b.txt").write_text(MARKER)
    os.chmod(host_files / "keys" / "b.txt", 0o600)
    # What a planted ~/.npmrc, ~/.config/pip/pip.conf and ~/.pip point to: a root-owned
    # file and folder.
    target_file, target_dir = host_files / "target-file", host_files / "target-dir"
    target_file.write_text(MARKER)
    os.chmod(target_file, 0o644)
    target_dir.mkdir(mode=0o755)
    # Sora's own home, with the package managers' settings that setup gets a copy of.
    sora_home = base / "sora-home"
    for folder in (".config/pip", ".pip"):
        (sora_home / folder).mkdir(parents=True)
        (sora_home / folder / "pip.conf").write_text("[global]\ntimeout = 60\n")
    (sora_home / ".npmrc").write_text("registry=https://registry.npmjs.org/\n")

    lender = write_function(fns, "lender", {"index.js": LENDER_CODE,
                                            "bin/node": f'#!/bin/sh\nexec {NODE} "$@"\n'},
                            name="lender", runtime="./bin/node")
    os.chmod(lender / "bin" / "node", 0o755)
    dirs = [
        # (a) setup swaps the declared secret file for a link to a root-only file...
        write_function(fns, "swap-file", {"index.js": SECRET_READER, "key.txt": "harmless"},
                       name="swap-file", secrets={"KEY": {"file": "key.txt"}},
                       setup=[f"ln -sfn {marker} key.txt"]),
        # ...or a folder on the secret's way for a link to a root-only folder.
        write_function(fns, "swap-dir", {"index.js": SECRET_READER, "deep/b.txt": "harmless"},
                       name="swap-dir", secrets={"KEY": {"file": "deep/b.txt"}},
                       setup=[f"rm -rf deep && ln -sfn {host_files / 'keys'} deep"]),
        # ...or, with a writable folder, the function itself does, then its worker restarts.
        write_function(fns, "swap-live", {"index.js": SECRET_READER, "key.txt": "harmless"},
                       name="swap-live", writableFolder=True,
                       secrets={"KEY": {"file": "key.txt"}}),
        # (b) setup plants links in its home; every invocation runs setup again.
        write_function(fns, "planter", {"index.js": COUNTER}, name="planter",
                       coldStart="always-setup",
                       setup=["echo run >> setup-runs.txt",
                              f"ln -sfn {target_file} $HOME/.npmrc",
                              f"ln -sfn {target_file} $HOME/.config/pip/pip.conf",
                              f"rm -rf $HOME/.pip && ln -sfn {target_dir} $HOME/.pip"]),
        # (c) setup links the function's interpreter to one in another function's folder.
        lender,
        write_function(fns, "borrower", {"index.js": READER}, name="borrower",
                       runtime="./bin/node",
                       setup=[f"mkdir -p bin && ln -sfn {lender / 'bin' / 'node'} bin/node"]),
    ]
    # The interpreter must exist when the config is loaded (before setup replaces it).
    (dirs[-1] / "bin").mkdir()
    os.symlink(NODE, dirs[-1] / "bin" / "node")
    h = SoraHost(base, dirs, https=False,
                 env={"HOME": str(sora_home),
                      "PYENV_ROOT": os.environ.get("PYENV_ROOT",
                                                   os.path.expanduser("~/.pyenv"))})
    h.start(wait_functions=["swap-live", "planter", "lender"])
    h.marker, h.target_file, h.target_dir = marker, target_file, target_dir
    yield h
    assert h.stop() == 0


def _never_gets_the_marker(host, name, original):
    """The function is FATAL with a reason naming the refused secret, or (had the secret been
    kept from setup by other means) serves the original value: never the marker."""
    def settled():
        state = host.function_state(name)
        if state["state"] == "FATAL":
            return state
        response = host.invoke(name)
        if MARKER in response.text:
            return {"leaked": response.text}
        return response.status_code == 200 and json_of(response)
    outcome = wait_for(settled, timeout=60, what=f"{name} FATAL or serving")
    assert "leaked" not in outcome, outcome
    if "files" in outcome:
        assert outcome["files"] == {"KEY": original}
    else:   # refused when read (or, were the attack stopped earlier, when setup made it)
        reason = outcome["reason"]
        assert MARKER not in reason
        assert ("secrets.KEY.file" in reason and "symbolic link" in reason) or \
            "setup" in reason, outcome
    assert MARKER not in host.invoke(name).text
    assert MARKER not in host.log(whole=True)


def test_a_secret_file_swapped_for_a_link_by_setup_is_never_read(attack):
    _never_gets_the_marker(attack, "swap-file", "harmless")


def test_a_secret_folder_swapped_for_a_link_by_setup_is_never_read(attack):
    _never_gets_the_marker(attack, "swap-dir", "harmless")


def test_a_secret_swapped_by_a_writable_folder_function_is_never_read(attack):
    assert json_of(attack.invoke("swap-live"))["files"] == {"KEY": "harmless"}
    attack.invoke("swap-live", params={"swap": str(attack.marker)})
    os.kill(attack.function_state("swap-live")["pid"], 9)   # its next worker reads it again
    _never_gets_the_marker(attack, "swap-live", "harmless")


def test_links_planted_in_the_setup_home_are_not_written_through(attack):
    runs = attack.base / "fns" / "planter" / "setup-runs.txt"
    assert attack.invoke("planter").status_code == 200
    # The answer starts a second setup, in a home where the first left its links.
    wait_for(lambda: runs.read_text().count("run") >= 2, timeout=60,
             what="the second setup to have run")
    wait_for(lambda: attack.invoke("planter").status_code == 200, timeout=30,
             what="the planter serving again")
    st = os.stat(attack.target_file)
    assert attack.target_file.read_text() == MARKER
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o644)
    st = os.stat(attack.target_dir)
    assert (st.st_uid, st.st_gid) == (0, 0) and os.listdir(attack.target_dir) == []
    # And each run's home went with it.
    setup_dir = attack.base / "state" / "setup"
    wait_for(lambda: not [n for n in os.listdir(setup_dir) if n.startswith("planter.home")],
             what="the setup homes removed")


def test_an_interpreter_linked_into_another_folder_does_not_bind_it(attack):
    lender_code = attack.base / "fns" / "lender" / "index.js"

    def settled():
        if attack.function_state("borrower")["state"] == "FATAL":
            return "FATAL"
        response = attack.invoke("borrower", params={"path": str(lender_code)})
        if MARKER in response.text:
            return {"leaked": response.text}
        return response.status_code == 200 and json_of(response)
    outcome = wait_for(settled, timeout=60, what="the borrower FATAL or serving")
    assert "leaked" not in outcome, outcome
    assert outcome == "FATAL" or outcome.get("error") == "ENOENT", outcome
    if outcome == "FATAL":
        assert "runtime:" in attack.function_state("borrower")["reason"]
    assert attack.invoke("lender").status_code == 200
