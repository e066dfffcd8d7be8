"""The container image (Dockerfile, .dockerignore, deploy/container/), checked without building
it: a build needs its two base images, which cannot be pulled on a machine without a
registry, and takes longer than a unit test may (docs/deploy.md says how it was built and
tried here). What is checked: the Dockerfile's bases, packages, user and entrypoint; that what
it copies exists and is not ignored; that the manifests call what it installs; and the
entrypoint's own work (the config template, the keys Secret turned into a keys folder)."""
from __future__ import annotations

import fnmatch
import os
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "container"))
import entrypoint  # noqa: E402


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines()
                                         if not line.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_bases_are_arguments_with_the_official_defaults():
    steps = instructions()
    args = dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)
    assert args["BASE"] == "python:3.11-slim-bookworm"
    assert args["NODE"].startswith("node:20-")
    froms = [rest for word, rest in steps if word == "FROM"]
    assert froms == ["${NODE} AS node", "${BASE}"]


def test_the_image_has_what_sora_runs_with():
    runs = " ".join(rest for word, rest in instructions() if word == "RUN")
    for package in ("bubblewrap", "libseccomp2", "rsync", "acl", "tini", "ca-certificates",
                    "libpq5"):
        assert re.search(rf"\b{package}\b", runs), package
    assert "/opt/sora/bin/pip install" in runs and "python3 -m venv /opt/sora" in runs
    copies = [rest for word, rest in instructions() if word == "COPY"]
    assert any("/usr/local/bin/node" in c for c in copies)


def test_it_runs_as_a_non_root_user_through_tini_and_the_entrypoint():
    steps = instructions()
    (user,) = [rest for word, rest in steps if word == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0   # numeric: runAsNonRoot can check it
    (entry,) = [rest for word, rest in steps if word == "ENTRYPOINT"]
    assert yaml.safe_load(entry) == ["/usr/bin/tini", "--", "/opt/sora/bin/python",
                                     "/opt/sora/container/entrypoint.py"]


def _ignored(path: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern + "/*") or \
                path.split("/")[0] == pattern:
            return True
    return False


def test_what_it_copies_exists_and_is_not_ignored():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for word, rest in instructions():
        if word != "COPY" or rest.startswith("--from"):
            continue
        *sources, _ = shlex.split(rest)
        for source in sources:
            if "[" in source:   # wheel[s]: optional by design
                continue
            assert (ROOT / source).exists(), source
            assert not _ignored(source, patterns), f"{source} is in .dockerignore"


def test_the_manifests_call_what_the_image_installs():
    installed = {"/opt/sora/container/entrypoint.py", "/opt/sora/container/probe.py",
                 "/opt/sora/bin/python"}
    for path in (ROOT / "deploy" / "kubernetes" / "base").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            spec = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
            for container in spec.get("containers", []):
                if container["name"] != "sora":
                    continue
                assert container["args"][0] in ("start", "join")
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    command = container[probe].get("exec", {}).get("command", [])
                    for word in command:
                        if word.startswith("/opt/"):
                            assert word in installed, f"{path}: {word}"


# --- the entrypoint ------------------------------------------------------------------------

def test_render_fills_variables_and_names_the_missing_ones():
    assert entrypoint.render("advertise: ${POD_IP}\nx: $HOME", {"POD_IP": "10.0.0.7"},
                             "t") == "advertise: 10.0.0.7\nx: $HOME"
    with pytest.raises(entrypoint.StartError, match="POD_IP, POD_NAME"):
        entrypoint.render("${POD_NAME} ${POD_IP}", {}, "t")


def _secret_volume(folder: Path, files: dict[str, bytes]) -> Path:
    """A folder laid out as the kubelet lays out a Secret volume: each key a link into
    ..data, itself a link to a timestamped folder; all readable by everyone."""
    stamped = folder / "..2026_12_07_09_00_00.123"
    stamped.mkdir(parents=True)
    for name, body in files.items():
        (stamped / name).write_bytes(body)
    os.symlink(stamped.name, folder / "..data")
    for name in files:
        os.symlink(f"..data/{name}", folder / name)
    os.chmod(folder, 0o1777)
    return folder


def test_a_keys_secret_becomes_a_keys_folder_sora_accepts(tmp_path):
    from sora.cluster.keys import init_keys, load_keys, read_public
    own, other = tmp_path / "own", tmp_path / "other"
    init_keys(str(own))
    init_keys(str(other))
    secret = _secret_volume(tmp_path / "secret", {
        "host.key": (own / "host.key").read_bytes(),
        "host.key_secret": (own / "host.key_secret").read_bytes(),
        "control.key": (other / "host.key").read_bytes()})
    target = tmp_path / "keys"
    assert entrypoint.copy_keys(str(secret), str(target)) == ["control"]
    ring = load_keys(str(target))   # 0700 folder, 0600 secret, allowed/
    assert ring.public == read_public(str(own / "host.key"))
    assert ring.allowed_keys() == {"control": read_public(str(other / "host.key")),
                                   "host": ring.public}
    # Again, as at a restart of the container: made afresh.
    entrypoint.copy_keys(str(secret), str(target))
    load_keys(str(target))


def test_a_secret_key_offered_as_another_hosts_is_refused(tmp_path):
    from sora.cluster.keys import init_keys
    own = tmp_path / "own"
    init_keys(str(own))
    secret = _secret_volume(tmp_path / "secret", {
        "host.key": (own / "host.key").read_bytes(),
        "host.key_secret": (own / "host.key_secret").read_bytes(),
        "oops.key": (own / "host.key_secret").read_bytes()})
    with pytest.raises(entrypoint.StartError, match="oops.key: expected another host's public"):
        entrypoint.copy_keys(str(secret), str(tmp_path / "keys"))
    with pytest.raises(entrypoint.StartError, match="expected host.key_secret"):
        entrypoint.copy_keys(str(_secret_volume(tmp_path / "half", {
            "host.key": (own / "host.key").read_bytes()})), str(tmp_path / "keys2"))


def test_start_renders_the_config_privately_and_execs_the_supervisor(tmp_path, monkeypatch):
    template = tmp_path / "template.yaml"
    template.write_text("cluster:\n  advertise: ${POD_IP}\n")
    monkeypatch.setattr(entrypoint, "TEMPLATE", str(template))
    monkeypatch.setattr(entrypoint, "CONFIG", str(tmp_path / "run" / "host-config.yaml"))
    monkeypatch.setattr(entrypoint, "KEYS_SOURCE", str(tmp_path / "no-secret"))
    monkeypatch.setenv("POD_IP", "10.9.8.7")
    execs = []
    monkeypatch.setattr(entrypoint.os, "execv", lambda path, argv: execs.append(argv))
    entrypoint.main(["entrypoint.py", "join"])
    config = tmp_path / "run" / "host-config.yaml"
    assert execs == [[entrypoint.SUPERVISOR, "join", "--config", str(config)]]
    assert config.read_text() == "cluster:\n  advertise: 10.9.8.7\n"
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    monkeypatch.delenv("POD_IP")
    execs.clear()
    assert entrypoint.main(["entrypoint.py", "start"]) == 2   # said why on stderr
    assert execs == []
