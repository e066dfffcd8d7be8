"""Issue 20: `make test` installs Debian's docker.io where dockerd is missing (docker-deps, with
the same waiting apt-get as the other system packages), and `make run` does not need it."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAKE_APT_GET = '#!/bin/sh\necho "$*" >> "$APT_LOG"\nexit 0\n'


def _make(tmp_path, target: str, with_dockerd: bool) -> list[str]:
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("grep", "sleep"):
        (tools / tool).symlink_to(shutil.which(tool))
    (tools / "apt-get").write_text(FAKE_APT_GET)
    (tools / "apt-get").chmod(0o755)
    if with_dockerd:
        (tools / "dockerd").write_text("#!/bin/sh\n")
        (tools / "dockerd").chmod(0o755)
    log = tmp_path / "apt.log"
    log.touch()
    done = subprocess.run([shutil.which("make"), "-s", "-f", str(ROOT / "Makefile"), target],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PATH": str(tools), "APT_LOG": str(log)})
    assert done.returncode == 0, done.stderr
    return log.read_text().splitlines()


def test_docker_deps_installs_docker_io_where_dockerd_is_missing(tmp_path):
    calls = _make(tmp_path, "docker-deps", with_dockerd=False)
    assert calls[0] == "update -qq"
    assert calls[-1] == "-o DPkg::Lock::Timeout=600 install -y -qq docker.io"


def test_docker_deps_installs_nothing_where_dockerd_is(tmp_path):
    assert _make(tmp_path, "docker-deps", with_dockerd=True) == []


def test_test_needs_docker_deps_and_run_does_not():
    rules = {}
    for line in (ROOT / "Makefile").read_text().splitlines():
        if ":" in line and not line.startswith(("\t", "#", " ")) and "=" not in line:
            target, _, needs = line.partition(":")
            rules[target.strip()] = needs.split()
    assert "docker-deps" in rules["test"]
    assert "docker-deps" not in rules["run"] and "docker-deps" not in rules["system-deps"]
