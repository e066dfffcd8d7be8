"""An attacker's pass over the store's secret (issue 21): a function on a host whose store is
PostgreSQL must never see the database URL or its password — not in its environment, not in
other processes' command lines or environments it can read, not in the host config, not in its
logs or records — and a store that fails answers without it."""
from __future__ import annotations

import json
import urllib.parse

import pytest

from tests.support import SoraHost, json_of, wait_for, write_function

pytestmark = pytest.mark.integration

# Everything a sandboxed function can gather: its environment, every /proc/<pid>/cmdline and
# environ it may read, and the files the test names (the host config, the state dir's).
SNOOP = r"""
const fs = require('fs');
exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  const out = { env: process.env, proc: {}, files: {} };
  console.log('env ' + JSON.stringify(process.env));
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    for (const what of ['cmdline', 'environ']) {
      try { out.proc[pid + '/' + what] = fs.readFileSync('/proc/' + pid + '/' + what, 'latin1'); }
      catch (e) { }
    }
  }
  for (const path of (q.read || '').split(',').filter(Boolean)) {
    try { out.files[path] = fs.readFileSync(path, 'latin1'); } catch (e) { out.files[path] = e.code; }
  }
  return { statusCode: 200, body: JSON.stringify(out) };
};
"""

# isolation: none (no sandbox: it sees every process): its environment, and every command
# line on the machine (no Sora process is given the URL on its command line).
PLAIN_ENV = r"""
const fs = require('fs');
exports.handler = async () => {
  console.log('env ' + JSON.stringify(process.env));
  const cmdlines = {};
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try { cmdlines[pid] = fs.readFileSync('/proc/' + pid + '/cmdline', 'latin1'); } catch (e) { }
  }
  return { statusCode: 200, body: JSON.stringify({ env: process.env, cmdlines }) };
};
"""


@pytest.mark.parametrize("how", ["url", "urlEnv"])
def test_a_function_never_sees_the_store_url_nor_its_password(postgres_server_factory,
                                                              tmp_path, how):
    server = postgres_server_factory()
    url = server.url(server.create_database())
    secret = server.password
    fns = tmp_path / "fns"
    dirs = [write_function(fns, "snoop", {"index.js": SNOOP}, name="snoop"),
            write_function(fns, "plain", {"index.js": PLAIN_ENV}, name="plain",
                           isolation="none")]
    store = {"url": url} if how == "url" else {"urlEnv": "SORA_TEST_STORE_URL"}
    env = {"SORA_TEST_STORE_URL": url} if how == "urlEnv" else {}
    host = SoraHost(tmp_path, dirs, https=False, store=store, env=env)
    host.start()
    try:
        state = tmp_path / "state"
        targets = [str(host.config_path), str(state / "run" / "functions.json"),
                   str(state / "sora.db"), str(state / "queue.db")]
        answer = host.session.get(f"{host.url}/functions/snoop",
                                  params={"read": ",".join(targets)}, timeout=30)
        assert answer.status_code == 200, answer.text
        seen = answer.text
        assert json.loads(seen)["proc"], "the function could read no /proc entry at all"
        assert secret not in seen and urllib.parse.quote(secret) not in seen
        assert "SORA_TEST_STORE_URL" not in json.loads(seen)["env"]
        plain = host.session.get(f"{host.url}/functions/plain", timeout=30)
        assert plain.status_code == 200 and secret not in plain.text
        assert "SORA_TEST_STORE_URL" not in json_of(plain)["env"]
        assert any("sora.store.recorder" in c for c in json_of(plain)["cmdlines"].values())
        # Its log lines, as the records API and the log file keep them.
        rid = answer.headers["X-Sora-Request-Id"]
        record = host.record(rid)
        assert any(line["line"].startswith("env ") for line in record["logs"])
        assert secret not in json.dumps(record)
        logs = host.session.get(f"{host.url}/api/functions/snoop/logs", timeout=10).text
        assert secret not in logs
        # The store goes away: the answers and the host's log say so without the password.
        server.stop()
        down = host.session.get(f"{host.url}/api/functions/snoop/invocations", timeout=30)
        assert down.status_code == 503, down.text
        assert json_of(down)["errorType"] == "Sora.StoreUnavailable"
        assert secret not in down.text
        # A call still runs (its record waits with its worker), and shows nothing either.
        again = host.session.get(f"{host.url}/functions/plain", timeout=30)
        assert again.status_code == 200 and secret not in again.text
        wait_for(lambda: "Sora.StoreUnavailable" in host.log(whole=True) or
                 "cannot open the records store" in host.log(whole=True) or
                 "could not store" in host.log(whole=True), timeout=15,
                 what="the store's failure in the host's log")
        server.start()
        wait_for(lambda: host.session.get(f"{host.url}/api/functions/snoop/invocations",
                                          timeout=10).status_code == 200, timeout=30,
                 what="the records API serving again by itself")
        # The call made while the database was down is recorded once it is back (its batch
        # waited with its worker).
        assert host.record(again.headers["X-Sora-Request-Id"], timeout=30)["status"] == "ok"
    finally:
        assert host.stop() == 0
    whole_log = host.log(whole=True)
    assert secret not in whole_log and "***" in whole_log
    for path in (state / "logs").glob("*"):
        assert secret not in path.read_text(errors="replace"), path
