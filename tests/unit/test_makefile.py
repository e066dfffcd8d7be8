"""Issue 15, point 9: `make run`, `make test` and `make system-deps` install what is missing
with apt-get, and wait for another install (unattended-upgrades, a second engineer's `make`)
instead of failing with "Could not get lock". Run against a fake apt-get on a PATH where
every tool the Makefile looks for is missing, so each of its installs happens."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# apt 2.6.1's words when another apt-get holds the lists' lock (`update` does not wait for it,
# DPkg::Lock::Timeout or not); the fake fails that way on its first `update` only.
FAKE_APT_GET = """#!/bin/sh
echo "$*" >> "$APT_LOG"
case "$* $APT_MODE" in
  *update*locked)
    [ -e "$APT_LOG.locked-once" ] && exit 0
    : > "$APT_LOG.locked-once"
    echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 42 (apt-get)" >&2
    echo "E: Unable to lock directory /var/lib/apt/lists/" >&2
    exit 100 ;;
  *update*offline)
    echo "E: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease" >&2
    exit 100 ;;
esac
exit 0
"""


def system_deps(tmp_path, mode):
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("grep", "sleep"):
        (tools / tool).symlink_to(shutil.which(tool))
    (tools / "apt-get").write_text(FAKE_APT_GET)
    (tools / "apt-get").chmod(0o755)
    log = tmp_path / "apt.log"
    done = subprocess.run([shutil.which("make"), "-s", "-f", str(ROOT / "Makefile"),
                           "system-deps"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env={"PATH": str(tools), "APT_LOG": str(log),
                                           "APT_MODE": mode, "LANG": "de_DE.UTF-8"})
    return done, log.read_text().splitlines()


def test_system_deps_waits_for_another_apt_get_instead_of_failing(tmp_path):
    done, calls = system_deps(tmp_path, "locked")
    assert done.returncode == 0, done.stderr
    assert "waiting for another apt-get to finish" in done.stdout
    assert calls[:2] == ["update -qq", "update -qq"]   # refused for the lock, then retried
    installs = [c for c in calls if "install" in c.split()]
    assert len(installs) >= 8, calls   # node, openssl, curl, bwrap, rsync, acl, go, build tools
    # dpkg's lock: apt-get itself waits for it, told how long
    assert all(c.startswith("-o DPkg::Lock::Timeout=600 install -y") for c in installs), calls


def test_system_deps_fails_at_once_when_apt_get_fails_for_another_reason(tmp_path):
    done, calls = system_deps(tmp_path, "offline")
    assert done.returncode != 0
    assert "Failed to fetch" in done.stderr and "waiting" not in done.stdout
    assert calls == ["update -qq"]
