"""When the several-hosts harness (tests/netns.py) skips: only where the kernel or our
privileges refuse `ip netns add`; any other failure of it is a failure."""
from __future__ import annotations

import subprocess

import pytest

from tests import netns


def refusing(stderr: str):
    def fake_ip(*args, netns=None, check=True):
        return subprocess.CompletedProcess(["ip", *args], 1, "", stderr)
    return fake_ip


@pytest.mark.parametrize("stderr", [
    "mount --make-shared /run/netns failed: Operation not permitted",
    "Cannot create namespace file \"/run/netns/x\": Permission denied",
    "Failed to create a new network namespace \"x\": Invalid argument",   # no CONFIG_NET_NS
])
def test_a_kernel_or_privilege_refusal_is_skippable(monkeypatch, stderr):
    monkeypatch.setattr(netns, "ip", refusing(stderr))
    with pytest.raises(netns.NetnsUnavailable) as caught:
        netns.check_available()
    assert netns.skippable(caught.value) and stderr in str(caught.value)


def test_another_failure_is_not_skippable(monkeypatch):
    monkeypatch.setattr(netns, "ip", refusing("Cannot allocate memory"))
    with pytest.raises(netns.NetnsUnavailable) as caught:
        netns.check_available()
    assert not netns.skippable(caught.value)
