"""A function's page cannot read or drive the dashboard, in headless Chromium.

Function URLs (/functions/NAME) and the dashboard (/ui/) share one origin, and a function is
untrusted code: the HTML its URL answers runs its script on the dashboard's origin, and when an
admin logged in to the dashboard opens it in the same browser, the script's requests to /ui/
carry the session cookie. The dashboard refuses every script's request (Sec-Fetch-Mode other
than navigate, which no page can set) that lacks the session's token (session.script_guard).
Here the attacker's page tries to read the functions list, another function's log page and its
live tail (EventSource), and scrapes a dead-letter page for a CSRF token to discard a dead
letter with; it writes all it got into its own page, and the test checks none of the
dashboard's content is there and the dead letter is still on the list.
"""
from __future__ import annotations

import json
import uuid

import pytest
import requests

from tests.browser.functions import ADMIN_KEY, LOGGER
from tests.support import served, wait_for, write_function

pytestmark = pytest.mark.browser

# Always fails: its events go to the dead-letter list (maximumRetryAttempts: 0) and stay there.
FAILING = """
exports.handler = async (event) => { throw new Error('victim failure ' + event.marker); };
"""

# The attacker's page: tries everything a same-origin script can, and writes what it got (each
# answer's status and whole body, each live-tail event) into pre#loot, then sets
# body[data-done]. Inline script: function answers carry no CSP of the dashboard's.
ATTACK_SCRIPT = r"""
(async function () {
  var loot = { answers: {}, events: [], streamErrors: 0 };
  async function grab(name, url, options) {
    try {
      var r = await fetch(url, Object.assign({ credentials: 'same-origin' }, options || {}));
      var text = await r.text();
      loot.answers[name] = { status: r.status, body: text };
      return text;
    } catch (e) {
      loot.answers[name] = { status: 0, body: String(e) };
      return '';
    }
  }
  var stream = new EventSource('/ui/functions/logger/logs/stream?after=0');
  stream.onmessage = function (e) { loot.events.push(e.data); };
  stream.onerror = function () { loot.streamErrors += 1; };
  await grab('list', '/ui/');
  await grab('logs', '/ui/functions/logger/logs');
  var dlq = await grab('dlq', '/ui/functions/failing/dlq');
  var token = (dlq.match(/name="csrf" value="([^"]+)"/) ||
               dlq.match(/name="sora-csrf" content="([^"]+)"/) || [null, 'none'])[1];
  var id = (dlq.match(/data-request-id="([^"]+)"/) || [null, 'none'])[1];
  loot.scraped = { token: token, requestId: id };
  var form = new URLSearchParams({ csrf: token, requestId: id });
  await grab('discard', '/ui/functions/failing/dlq/discard',
             { method: 'POST', body: form, headers: { 'X-Sora-CSRF': token } });
  await new Promise(function (done) { setTimeout(done, 3000); });   // let the tail speak
  stream.close();
  document.getElementById('loot').textContent = JSON.stringify(loot);
  document.body.setAttribute('data-done', '1');
})();
"""
ATTACKER = """
exports.handler = async () => ({
  statusCode: 200,
  headers: { 'content-type': 'text/html; charset=utf-8' },
  body: '<!doctype html><html><body><h1>Nice function</h1><pre id="loot"></pre>' +
        '<script>' + %s + '</script></body></html>',
});
""" % json.dumps(ATTACK_SCRIPT)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """One host with an admin key: a victim that logs, one that dead-letters, the attacker
    (its URL open to anyone, `auth: none`, as a public function's would be)."""
    base = tmp_path_factory.mktemp("isolation-host")
    fns = base / "fns"
    dirs = [
        write_function(fns, "logger", {"index.js": LOGGER}, name="logger"),
        write_function(fns, "failing", {"index.js": FAILING}, name="failing",
                       eventInvoke={"maximumRetryAttempts": 0}),
        write_function(fns, "attacker", {"index.js": ATTACKER}, name="attacker", auth="none"),
    ]
    yield from served(base, dirs, https=True, api_key=ADMIN_KEY, extra={
        "auth": {"apiKeys": [{"name": "ops", "key": ADMIN_KEY, "scopes": ["admin"]}]}})


def dead_letters(host, name: str) -> list[str]:
    r = host.session.get(f"{host.url}/api/functions/{name}/dlq", timeout=10)
    assert r.status_code == 200, r.text
    return [e["requestId"] for e in r.json()["events"]]


def test_a_functions_page_reads_nothing_of_the_dashboard(page, host):
    secret_line = "secret-" + uuid.uuid4().hex[:12]
    r = host.invoke("logger", method="POST", json={"marker": secret_line})
    assert r.status_code == 200, r.text
    r = host.session.post(f"{host.url}/2015-03-31/functions/failing/invocations",
                          headers={"X-Amz-Invocation-Type": "Event"},
                          data=json.dumps({"marker": "dead-" + secret_line}), timeout=10)
    assert r.status_code == 202, r.text
    dead = r.headers["x-amzn-RequestId"]
    wait_for(lambda: dead in dead_letters(host, "failing"), what="the dead letter")
    # The admin (logged in: `page`) sees both on the dashboard.
    page.goto(f"{host.url}/ui/functions/logger/logs")
    page.locator("#log-tail .log-line", has_text=secret_line).first.wait_for(state="attached")
    page.goto(f"{host.url}/ui/functions/failing/dlq")
    page.locator(f'#dead-letters tr[data-request-id="{dead}"]').wait_for(state="attached")

    # The function's page is public: anyone, the admin too, may open it.
    assert requests.get(f"{host.url}/functions/attacker", timeout=10).status_code == 200
    page.goto(f"{host.url}/functions/attacker")
    page.locator("body[data-done]").wait_for(state="attached", timeout=20_000)
    loot_text = page.locator("#loot").text_content()
    loot = json.loads(loot_text)
    whole = page.content()

    for name in ("list", "logs", "dlq", "discard"):
        assert loot["answers"][name]["status"] == 403, (name, loot["answers"][name])
    assert loot["events"] == [], "the live tail streamed to the function's page"
    assert loot["scraped"] == {"token": "none", "requestId": "none"}
    for leaked in (secret_line, dead):
        assert leaked not in loot_text and leaked not in whole, leaked
    # (The page's own script holds these strings: only what it got is checked for them.)
    for leaked in ("sora-csrf", 'name="csrf"', 'data-function="logger"', "Dead letters of"):
        assert leaked not in loot_text, leaked
    # The discard was refused: the dead letter is still there.
    assert dead in dead_letters(host, "failing")
    # And the admin's own pages still work in the same browser (the attack changed nothing).
    page.goto(f"{host.url}/ui/functions/failing/dlq")
    page.locator(f'#dead-letters tr[data-request-id="{dead}"]').wait_for(state="attached")
