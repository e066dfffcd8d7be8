"""Secrets (sora.yaml `secrets`): offered to their function only, as files and where asked as
environment variables, masked in its logs, never shown by the APIs."""
from __future__ import annotations

import os
import stat

import pytest

from tests.support import SoraHost, json_of, wait_for, write_function

pytestmark = pytest.mark.integration

TOKEN = "tok-5ecret-value-0042"
PASSWORD = "pa55word-from-a-file"

HOLDER = """
const fs = require('fs');
const path = require('path');
exports.handler = async () => {
  const dir = process.env.SORA_SECRETS_DIR;
  console.log('token is ' + process.env.API_TOKEN + ' and password ' +
              fs.readFileSync(path.join(dir, 'DB_PASSWORD'), 'utf8'));
  const files = {};
  for (const name of fs.readdirSync(dir)) files[name] = fs.readFileSync(path.join(dir, name), 'utf8');
  return { dir, files, envToken: process.env.API_TOKEN || null,
           envPassword: process.env.DB_PASSWORD || null };
};
"""
OTHER = """
exports.handler = async () => ({ env: Object.keys(process.env) });
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("secrets")
    fns = base / "fns"
    holder = write_function(fns, "holder", {"index.js": HOLDER, "db-password.txt": PASSWORD + "\n"},
                            name="holder", secrets={
                                "DB_PASSWORD": {"file": "db-password.txt"},
                                "API_TOKEN": {"env": "SORA_TEST_TOKEN", "asEnv": True}})
    # The same outside any sandbox: its secrets folder is one of its worker's own.
    unboxed = write_function(fns, "unboxed", {"index.js": HOLDER, "db-password.txt": PASSWORD},
                             name="unboxed", isolation="none",
                             secrets={"DB_PASSWORD": {"file": "db-password.txt"}})
    other = write_function(fns, "other", {"index.js": OTHER}, name="other")
    broken = write_function(fns, "missing", {"index.js": OTHER}, name="missing",
                            secrets={"X": {"env": "SORA_TEST_NOT_SET"}})
    h = SoraHost(base, [holder, unboxed, other, broken], https=False,
                 env={"SORA_TEST_TOKEN": TOKEN})
    h.start(wait_functions=["holder", "unboxed", "other"])
    sandboxed_dir = json_of(h.invoke("holder"))["dir"]
    yield h
    assert h.stop() == 0
    # A sandboxed function's folder outlives its workers (its pre-started sandbox binds it),
    # not the host.
    assert not os.path.exists(sandboxed_dir)


def test_the_function_gets_its_secrets_as_files_and_asked_for_env(host):
    body = json_of(host.invoke("holder"))
    assert body["files"] == {"DB_PASSWORD": PASSWORD, "API_TOKEN": TOKEN}
    assert body["envToken"] == TOKEN and body["envPassword"] is None
    mode = os.stat(body["dir"]).st_mode
    assert stat.S_IMODE(mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(body["dir"], "API_TOKEN")).st_mode) == 0o400


def test_other_functions_do_not_get_them(host):
    env = json_of(host.invoke("other"))["env"]
    assert "API_TOKEN" not in env and "SORA_SECRETS_DIR" not in env
    assert "SORA_TEST_TOKEN" not in env   # nor the host variable it came from


def test_values_are_masked_in_logs_and_absent_from_apis(host):
    rid = host.invoke("holder").headers["X-Sora-Request-Id"]
    record = host.record(rid)
    lines = wait_for(lambda: (r := host.session.get(
        f"{host.url}/api/functions/holder/logs", params={"requestId": rid})).ok and
        "token is" in r.text and r.text, what="the holder's log line")
    assert "token is **** and password ****" in lines
    seen = [lines, str(record), host.session.get(f"{host.url}/api/functions").text,
            host.session.get(f"{host.url}/healthz").text, host.log(whole=True),
            (host.base / "state" / "logs" / "holder.log").read_text()]
    for text in seen:
        assert TOKEN not in text and PASSWORD not in text


def test_a_missing_secret_is_a_clear_error_and_the_others_serve(host):
    state = wait_for(lambda: (s := host.function_state("missing"))["state"] == "FATAL" and s,
                     timeout=60, what="the function with a missing secret to be FATAL")
    assert "secrets.X.env: expected a variable set in the host's environment" in state["reason"]
    assert host.invoke("other").status_code == 200


def test_the_files_go_when_the_worker_does(host):
    directory = json_of(host.invoke("unboxed"))["dir"]
    assert os.path.isdir(directory)
    os.kill(host.function_state("unboxed")["pid"], 9)
    wait_for(lambda: not os.path.exists(directory), what="the killed worker's secrets removed")
    wait_for(lambda: host.invoke("unboxed").status_code == 200, timeout=30,
             what="the worker restarted with its secrets")
