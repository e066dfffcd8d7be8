"""Attack (issue 16): the README keeps a host's CURVE keys in /etc/sora/keys, and every sandbox
binds /etc read-only. Sora run unprivileged gives a function (and its setup, which has network)
Sora's own uid, so it could read host.key_secret and join the cluster as this host. The
supervisor names the operator's secrets (`sandbox.hide`) and every sandbox covers them. Run for
real as `nobody` in a user namespace, as test_sandbox_unprivileged does."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from sora.config import load_function_config
from sora.isolation import sandbox
from tests.unit import test_sandbox_unprivileged
from tests.unit.test_sandbox_unprivileged import NOBODY, as_nobody, unprivileged

function_dir = test_sandbox_unprivileged.function_dir   # the fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not sandbox.available(),
                                reason="needs root (to become nobody) and bubblewrap")


@pytest.fixture
def keys_in_etc(monkeypatch):
    """A keys folder under /etc owned by the user Sora runs as (nobody here), and a host
    config file beside it."""
    base = tempfile.mkdtemp(prefix="sora-attack-", dir="/etc")
    keys = os.path.join(base, "keys")
    os.mkdir(keys, 0o700)
    secret = os.path.join(keys, "host.key_secret")
    with open(secret, "w") as fh:
        fh.write("the host's secret key")
    config = os.path.join(base, "host-config.yaml")
    with open(config, "w") as fh:
        fh.write("apiKeys: the operator's\n")
    for path in (base, keys, secret, config):
        os.chown(path, NOBODY, NOBODY)
    monkeypatch.delenv(sandbox.HIDDEN_ENV, raising=False)
    yield keys, secret, config
    shutil.rmtree(base)


def read_in_sandbox(fn_dir, paths, monkeypatch, setup=False):
    fn = load_function_config(fn_dir)
    unprivileged(monkeypatch)
    script = "; ".join(f"cat {p} 2>&1" for p in paths) + "; true"
    if setup:
        home = tempfile.mkdtemp(prefix="sora-attack-home-", dir="/tmp")
        os.chown(home, NOBODY, NOBODY)
        argv = sandbox.wrap_setup(script, fn, fn_dir, home)
    else:
        argv = sandbox.wrap(["/bin/sh", "-c", script], fn)
    hidden = os.environ.get(sandbox.HIDDEN_ENV)
    monkeypatch.undo()
    if hidden is not None:
        os.environ[sandbox.HIDDEN_ENV] = hidden
    done = as_nobody(argv, fn_dir)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("setup", [False, True])
def test_the_operators_secrets_under_etc_are_hidden_from_every_sandbox(
        function_dir, keys_in_etc, monkeypatch, setup):
    folder, _ = function_dir
    keys, secret, config = keys_in_etc
    # Without hiding them, the function reads them: the hole.
    assert "the host's secret key" in read_in_sandbox(folder, [secret], monkeypatch, setup)
    sandbox.hide([keys, config, None])
    try:
        out = read_in_sandbox(folder, [keys + "/host.key_secret", config], monkeypatch, setup)
        assert "secret key" not in out and "operator's" not in out, out
    finally:
        os.environ.pop(sandbox.HIDDEN_ENV, None)
