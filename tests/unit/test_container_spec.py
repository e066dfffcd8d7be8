"""The container create options of a function (sora.containers.spec) and its channel folder
(sora.containers.channel): what the engine is asked for, read without an engine."""
from __future__ import annotations

import os
import stat
import types

import pytest

from sora.containers import spec
from sora.containers.channel import NAMES, WRAPPER, Channel


def function(**over):
    values = dict(name="hello", image="sora-test/node20:1", directory="/srv/functions/hello",
                  memory=256, tmpSize=64, network=False, sandboxUid=41234,
                  isolation="container", taskRoot="/var/task", coldStart="never")
    values.update(over)
    return types.SimpleNamespace(**values)


def options(fn, secrets="/dev/shm/sora-secrets-hello-1-x"):
    return spec.create_options(fn, ["node", "/opt/sora/runtimes/nodejs/bootstrap.cjs"],
                               {"SORA_STANDBY": "1"}, "/state/run/containers/7-1", secrets,
                               "abc123", 7, "sora-abc123-hello-7-1")


def test_security_options():
    host = options(function())["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert "CapAdd" not in host and host["Privileged"] is False
    assert host["SecurityOpt"] == ["no-new-privileges"]   # and Docker's default seccomp
    assert host["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=64m,mode=1777"}
    assert host["Memory"] == host["MemorySwap"] == 256 << 20   # swap off
    assert host["PidsLimit"] == 512
    assert host["NetworkMode"] == "none"
    assert host["Init"] is False and host["AutoRemove"] is False


def test_user_is_the_functions_own_uid_never_root():
    assert options(function())["User"] == "41234:41234"
    assert options(function(sandboxUid=0))["User"] != "0:0" or os.geteuid() != 0


def test_network_true_is_the_hosts_network():
    opts = options(function(network=True))
    assert opts["HostConfig"]["NetworkMode"] == "host"
    assert opts["NetworkDisabled"] is False


def test_cpu_share_follows_memory():
    assert spec.cpu_shares(1769) == 1024
    assert spec.cpu_shares(128) == 1024   # never less than its sandboxed twin
    assert spec.cpu_shares(3538) == 2048
    assert spec.cpu_shares(10240) > spec.cpu_shares(1769)
    assert options(function(memory=1769))["HostConfig"]["CpuShares"] == 1024


def test_mounts_are_read_only_binds_and_never_the_engine_socket():
    mounts = options(function())["HostConfig"]["Mounts"]
    by_target = {m["Target"]: m for m in mounts}
    assert set(by_target) == {"/var/task", "/opt/sora/runtimes", "/run/sora",
                              "/run/sora-secrets"}
    assert all(m["ReadOnly"] and m["Type"] == "bind" for m in mounts)
    assert by_target["/var/task"]["Source"] == "/srv/functions/hello"
    assert by_target["/run/sora"]["Source"] == "/state/run/containers/7-1"
    assert os.path.isfile(os.path.join(by_target["/opt/sora/runtimes"]["Source"],
                                       "nodejs", "bootstrap.cjs"))
    assert not any("docker.sock" in m["Source"] for m in mounts)
    # "Mounts", not "Binds": a missing source is an error, not a folder dockerd makes.
    assert "Binds" not in options(function())["HostConfig"]


def test_no_secrets_no_secrets_mount_and_task_root_setting():
    mounts = options(function(taskRoot="/app"), secrets=None)["HostConfig"]["Mounts"]
    assert {m["Target"] for m in mounts} == {"/app", "/opt/sora/runtimes", "/run/sora"}


def test_command_is_the_wrapper_then_the_runtime_and_labels_name_the_host():
    opts = options(function())
    assert opts["Cmd"][:4] == ["/bin/sh", "-c", WRAPPER, "sh"]
    assert opts["Cmd"][4:] == ["node", "/opt/sora/runtimes/nodejs/bootstrap.cjs"]
    assert opts["Entrypoint"] == []   # not the image's
    assert opts["Image"] == "sora-test/node20:1"
    assert opts["Env"] == ["SORA_STANDBY=1"]
    assert opts["Labels"]["sora.host"] == "abc123"
    assert opts["Labels"]["sora.function"] == "hello"
    assert opts["Labels"]["sora.worker"] == "7"
    assert opts["Labels"]["sora.role"] == "instance"


@pytest.mark.skipif(os.geteuid() != 0, reason="the FIFOs are chowned to another uid")
def test_channel_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    channel = Channel(str(run), "7-1", 41234)
    try:
        folder = os.stat(channel.path)
        assert stat.S_IMODE(folder.st_mode) == 0o711 and folder.st_uid == 0
        for name in NAMES:
            st = os.lstat(os.path.join(channel.path, name))
            assert stat.S_ISFIFO(st.st_mode) and st.st_uid == 41234
            assert stat.S_IMODE(st.st_mode) == 0o600
        # The worker's ends are open and none blocked: a write is buffered for the runtime,
        # a read with no writer yet is empty.
        os.write(channel.fds["requests"], b"line\n")
        assert os.read(channel.fds["control"], 10) == b""
    finally:
        for fd in channel.fds.values():
            os.close(fd)
        channel.remove()
    assert not os.path.exists(channel.path)


@pytest.mark.skipif(os.geteuid() != 0, reason="the FIFOs are chowned to another uid")
def test_channel_follows_no_link(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, run / "containers")
    with pytest.raises(OSError):
        Channel(str(run), "7-1", 41234)
    assert os.listdir(elsewhere) == []


def test_each_image_volume_is_a_capped_tmpfs_not_an_anonymous_volume():
    """A VOLUME in the image would give every container a writable anonymous volume on the
    host's disk, past the read-only root and with no size limit."""
    opts = spec.create_options(function(), ["node"], {}, "/state/run/containers/7-1", None,
                               "abc123", 7, "sora-abc123-hello-7-1", {"/data": {}, "/var/x": {}})
    tmpfs = opts["HostConfig"]["Tmpfs"]
    assert set(tmpfs) == {"/tmp", "/data", "/var/x"}
    assert all("size=64m" in value for value in tmpfs.values())
