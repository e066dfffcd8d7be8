"""The dashboard (/ui/) as a person uses it, in headless Chromium against a real host: log in,
see the functions, open one, watch a new invocation and its log line arrive, invoke from the
form, replay a dead letter; and what a hostile function prints stays text.

The selectors are the contract in the design (design19.md, "Selectors the browser tests use").
Every page visited is saved as a screenshot in the run's temp dir; with SORA_UPDATE_SCREENSHOT=1
the function page is also written to docs/dashboard.png (the README shows it).
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.browser.functions import ADMIN_KEY, IMG_ERROR, INVOKE_KEY, SCRIPT_LINE
from tests.support import ROOT, wait_for

pytestmark = pytest.mark.browser

DOCS_SCREENSHOT = ROOT / "docs" / "dashboard.png"


def marker() -> str:
    return uuid.uuid4().hex[:10]


def shot(page, screenshots: Path, name: str) -> Path:
    path = screenshots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def invoke_http(host, name: str, mark: str) -> str:
    """Invoke a function the way its callers do (its HTTP route); its request id."""
    r = host.invoke(name, method="POST", json={"marker": mark})
    assert r.status_code == 200, r.text
    return r.headers["X-Sora-Request-Id"]


def send_event(host, name: str, mark: str, **event) -> str:
    """An asynchronous (Event) invocation through the Invoke API; its request id."""
    r = host.session.post(f"{host.url}/2015-03-31/functions/{name}/invocations",
                          headers={"X-Amz-Invocation-Type": "Event"},
                          data=json.dumps({"marker": mark, **event}), timeout=10)
    assert r.status_code == 202, r.text
    return r.headers["x-amzn-RequestId"]


def dead_letters(host, name: str) -> list[str]:
    r = host.session.get(f"{host.url}/api/functions/{name}/dlq", timeout=10)
    assert r.status_code == 200, r.text
    return [e["requestId"] for e in r.json()["events"]]


def pwned(page) -> str:
    """typeof window.__pwned: "undefined" unless markup from a function ran in the page."""
    return page.evaluate("typeof window.__pwned")


def wait_for_text(page, selector: str, text: str, timeout: float = 15.0):
    """The first element matching `selector` whose text holds `text`, waiting for it."""
    located = page.locator(selector, has_text=text).first
    located.wait_for(state="attached", timeout=timeout * 1000)
    return located


def wait_for_row(page, selector: str, timeout: float = 15.0):
    """Wait for `selector` on a page that re-reads its table itself (static/refresh.js) or,
    where it has only the "refresh" link, by following that link."""
    deadline = time.monotonic() + timeout
    while True:
        if page.locator(selector).count():
            return page.locator(selector).first
        if time.monotonic() > deadline:
            raise AssertionError(f"no {selector} on {page.url} within {timeout}s")
        if page.locator("script[src*='refresh.js']").count() == 0 and \
                page.locator("a#refresh").count():
            page.click("a#refresh")
            page.wait_for_load_state()
        else:
            page.wait_for_timeout(200)


def follow_tail(page, host, name: str, expected, timeout: float = 20.0) -> str:
    """On a function's live log page, invoke it until one of its lines arrives in the tail
    (a line logged before the page's stream opened is not the tail's to show, so the first
    call may be missed); the page must not have reloaded. The marker that arrived."""
    page.evaluate("window.__samePage = 1")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mark = marker()
        invoke_http(host, name, mark)
        try:
            wait_for_text(page, "ol#log-tail > li.log-line", expected(mark), timeout=3)
        except PlaywrightTimeout:   # not (yet) there: invoke again
            continue
        assert page.evaluate("window.__samePage") == 1, "the log page reloaded"
        return mark
    raise AssertionError(f"no live log line of {name} within {timeout}s")


def test_login_with_the_admin_key_only_and_logout(context, host, screenshots):
    page = context.new_page()
    page.goto(host.url + "/ui/")
    assert page.url.startswith(host.url + "/ui/login"), "a visit without a session logs in"
    shot(page, screenshots, "login")
    for wrong in ("not-a-key-0123456789abcdef", INVOKE_KEY):   # unknown; no admin scope
        page.fill("form#login-form input[name=key]", wrong)
        with page.expect_navigation() as refused:
            page.click("form#login-form button[type=submit]")
        assert refused.value.status == 403, (wrong, refused.value.status)
        page.locator(".error").wait_for()
        assert page.url.startswith(host.url + "/ui/login")
        assert page.locator("table#functions").count() == 0
    shot(page, screenshots, "login-refused")

    page.fill("form#login-form input[name=key]", ADMIN_KEY)
    page.click("form#login-form button[type=submit]")
    page.wait_for_url(host.url + "/ui/")
    session = [c for c in context.cookies() if c["name"] == "sora_session"]
    assert len(session) == 1
    assert session[0]["httpOnly"] and session[0]["sameSite"] == "Strict"
    assert ADMIN_KEY not in session[0]["value"]
    assert "sora_session" not in page.evaluate("document.cookie"), "scripts can read it"
    assert ADMIN_KEY not in page.content()

    page.click("form#logout-form button[type=submit]")
    page.wait_for_url("**/ui/login*")
    page.goto(host.url + "/ui/")
    assert page.url.startswith(host.url + "/ui/login"), "logged out, the list needs a login"


def test_login_over_https_sets_a_secure_cookie(browser, host, screenshots):
    """Over HTTPS (the host's test certificate, self-signed) the session cookie is also
    `Secure`, and the logged-in list is served there."""
    ctx = browser.new_context(ignore_https_errors=True)
    try:
        page = ctx.new_page()
        page.goto(host.https_url + "/ui/")
        assert page.url.startswith(host.https_url + "/ui/login")
        page.fill("form#login-form input[name=key]", ADMIN_KEY)
        page.click("form#login-form button[type=submit]")
        page.wait_for_url(host.https_url + "/ui/")
        session = [c for c in ctx.cookies() if c["name"] == "sora_session"]
        assert len(session) == 1 and session[0]["secure"] and session[0]["httpOnly"]
        assert page.locator("table#functions tr[data-function=logger]").count() == 1
        shot(page, screenshots, "functions-https")
    finally:
        ctx.close()


def test_functions_list_shows_every_function(page, host, screenshots):
    table = page.locator("table#functions")
    for name in ("logger", "hostile", "failing"):
        row = table.locator(f"tr[data-function={name}]")
        assert row.count() == 1, name
        assert "running" in row.locator("td[data-field=state]").inner_text().lower()
        assert "node" in row.locator("td[data-field=language]").inner_text().lower()
        for field in ("instances", "calls", "errors", "p50", "p99", "queued", "dead"):
            assert row.locator(f"td[data-field={field}]").count() == 1, (name, field)
    assert page.locator('nav a[href="/ui/"]').count() >= 1
    shot(page, screenshots, "functions")
    table.locator('tr[data-function=logger] a[href="/ui/functions/logger"]').first.click()
    page.wait_for_url(host.url + "/ui/functions/logger*")


def test_function_page_draws_its_charts(page, host, screenshots):
    """`logger` has a day of seeded records (conftest) and the calls made here: every chart has
    marks, a title per bucket, and the calls chart's peak is not zero."""
    for request_id in [invoke_http(host, "logger", marker()) for _ in range(3)]:
        host.record(request_id)
    page.goto(host.url + "/ui/functions/logger")
    for metric in ("calls", "errors", "p50", "p99", "cold"):
        chart = page.locator(f"section#charts svg.chart[data-metric={metric}]")
        assert chart.count() == 1, metric
        assert chart.locator("polyline, rect").count() >= 1, metric
        assert chart.locator("title").count() >= 1, metric
        box = chart.bounding_box()
        assert box and box["width"] > 50 and box["height"] > 20, (metric, box)
    titles = page.locator("svg.chart[data-metric=calls] title").all_text_contents()
    peak = re.search(r"peak ([0-9.,]+)", " ".join(titles))
    assert peak and float(peak.group(1).replace(",", "")) >= 1, titles[:3]
    shot(page, screenshots, "charts")


def test_function_page_shows_a_new_invocation_and_its_record(page, host, screenshots):
    page.goto(host.url + "/ui/functions/logger")
    for link in ("a#logs-link", "a#dlq-link", "a#invoke-link"):
        assert page.locator(link).count() == 1, link

    mark = marker()
    request_id = invoke_http(host, "logger", mark)   # over HTTP, with the page open
    row = wait_for_row(page, f"table#invocations tr[data-request-id='{request_id}']")
    assert row.locator("td[data-field=status]").inner_text().strip().lower() == "ok"
    for field in ("duration", "cold", "trigger", "start"):
        assert row.locator(f"td[data-field={field}]").count() == 1, field
    shot(page, screenshots, "function")
    if os.environ.get("SORA_UPDATE_SCREENSHOT") == "1":   # the top of the page, as one sees it
        page.screenshot(path=str(DOCS_SCREENSHOT), full_page=False)

    row.locator(f'a[href="/ui/invocations/{request_id}"]').first.click()
    page.wait_for_url(host.url + f"/ui/invocations/{request_id}")
    record = page.locator("dl#record")
    assert record.locator("dd[data-field=status]").inner_text().strip().lower() == "ok"
    assert record.locator("dd[data-field=trigger]").inner_text().strip()
    assert page.locator("table#attempts").count() == 1
    wait_for_text(page, "ol#log-lines > li.log-line", f"browser-test line {mark}", timeout=5)
    shot(page, screenshots, "invocation")


def test_range_and_status_filter(page, host, screenshots):
    failing = send_event(host, "failing", marker())   # an error record (and a dead letter)
    wait_for(lambda: failing in dead_letters(host, "failing"), what="the failed event")
    page.goto(host.url + "/ui/functions/failing")
    page.select_option("form#status-filter select[name=status]", "error")
    if "status=error" not in page.url:
        try:   # a filter that submits itself on change has navigated by now
            page.wait_for_url("**status=error**", timeout=1000)
        except PlaywrightTimeout:   # it has a submit button instead: use the form
            with page.expect_navigation():
                page.locator("form#status-filter").evaluate("f => f.requestSubmit()")
    assert "status=error" in page.url
    row = wait_for_row(page, f"table#invocations tr[data-request-id='{failing}']")
    statuses = page.locator("table#invocations td[data-field=status]").all_inner_texts()
    assert statuses and all(s.strip().lower().startswith("error") for s in statuses), statuses
    assert row.locator("td[data-field=trigger]").inner_text().strip()

    page.click("a[data-range=day]")
    page.wait_for_url("**range=day**")
    assert "status=error" in page.url, "the range link keeps the filter"
    assert page.locator("section#charts svg.chart").count() == 5
    shot(page, screenshots, "function-errors-day")

    # The dead event's own page: its record and its failed attempt.
    page.locator(f"table#invocations tr[data-request-id='{failing}'] a").first.click()
    page.wait_for_url(host.url + f"/ui/invocations/{failing}")
    assert page.locator("dl#record dd[data-field=status]").inner_text().strip() == "error"
    assert page.locator("dl#record dd[data-field=errorType]").inner_text().strip() == \
        "RangeError"
    assert "failing on purpose" in page.locator("table#attempts").inner_text()
    shot(page, screenshots, "invocation-dead-event")


def test_log_line_arrives_live_on_the_logs_page(page, host, screenshots):
    page.goto(host.url + "/ui/functions/logger")
    page.click("a#logs-link")
    page.wait_for_url(host.url + "/ui/functions/logger/logs*")
    mark = follow_tail(page, host, "logger", lambda m: f"browser-test line {m}")
    # A second line arrives after the first, on the same page.
    second = marker()
    invoke_http(host, "logger", second)
    wait_for_text(page, "ol#log-tail > li.log-line", f"browser-test line {second}")
    lines = page.locator("ol#log-tail > li.log-line").all_inner_texts()
    first_at = next(i for i, t in enumerate(lines) if mark in t)
    second_at = next(i for i, t in enumerate(lines) if second in t)
    assert first_at < second_at, "lines are appended in order"
    shot(page, screenshots, "logs")


def test_invoke_form_shows_status_duration_result_and_logs(page, host, screenshots):
    page.goto(host.url + "/ui/functions/logger")
    page.click("a#invoke-link")
    page.wait_for_url(host.url + "/ui/functions/logger/invoke*")
    mark = marker()
    page.fill("form#invoke-form textarea[name=event]", json.dumps({"marker": mark}))
    page.click("form#invoke-form button[type=submit]")
    result = page.locator("section#invoke-result")
    result.wait_for()
    assert "ok" in result.locator("[data-field=status]").first.inner_text().lower()
    assert any(ch.isdigit() for ch in result.locator("[data-field=duration]").first.inner_text())
    output = page.locator("pre#invoke-output").inner_text()
    assert mark in output and "42" in output
    assert f"browser-test line {mark}" in page.locator("pre#invoke-logs").inner_text()
    shot(page, screenshots, "invoke")


def test_dead_letter_replay_and_discard(page, host, fail_flag, screenshots):
    fail_flag.touch()
    replayed, discarded = send_event(host, "failing", marker()), send_event(host, "failing", marker())
    wait_for(lambda: {replayed, discarded} <= set(dead_letters(host, "failing")), timeout=20,
             what="both events on the dead-letter list")
    page.goto(host.url + "/ui/")
    dead = page.locator("tr[data-function=failing] td[data-field=dead]").inner_text()
    assert int("".join(ch for ch in dead if ch.isdigit()) or 0) >= 2, dead

    page.goto(host.url + "/ui/functions/failing")
    page.click("a#dlq-link")
    page.wait_for_url(host.url + "/ui/functions/failing/dlq*")
    table = page.locator("table#dead-letters")
    for request_id in (replayed, discarded):
        assert table.locator(f"tr[data-request-id='{request_id}']").count() == 1
    assert page.locator("form#replay-all").count() == 1
    shot(page, screenshots, "dlq")

    table.locator(f"tr[data-request-id='{discarded}'] form.discard button[type=submit]").click()
    page.locator(".flash").wait_for()
    assert table.locator(f"tr[data-request-id='{discarded}']").count() == 0
    assert discarded not in dead_letters(host, "failing")

    fail_flag.unlink()   # the replayed event now succeeds, so it stays off the list
    try:
        table.locator(f"tr[data-request-id='{replayed}'] form.replay button[type=submit]").click()
        page.locator(".flash").wait_for()
        assert table.locator(f"tr[data-request-id='{replayed}']").count() == 0
        shot(page, screenshots, "dlq-replayed")
        wait_for(lambda: host.session.get(f"{host.url}/api/invocations/{replayed}", timeout=5)
                 .json().get("status") == "ok", timeout=20, what="the replayed event to succeed")
        page.reload()
        assert table.locator(f"tr[data-request-id='{replayed}']").count() == 0
    finally:
        fail_flag.touch()


class _AttackerPage(BaseHTTPRequestHandler):
    """A page on another origin that posts a discard form at the dashboard."""
    target = ""

    @staticmethod
    def form(target: str) -> str:
        return (f'<form id="attack" method="post" action="{target}">'
                f'<input name="all" value="1"><input name="requestId" value="x">'
                f'<button type="submit">win a prize</button></form>')

    def do_GET(self):
        body = self.form(self.target).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_form_on_another_origin_cannot_act_for_a_logged_in_admin(page, host, fail_flag,
                                                                   screenshots):
    fail_flag.touch()
    victim = send_event(host, "failing", marker())
    wait_for(lambda: victim in dead_letters(host, "failing"), timeout=20, what="a dead letter")
    # 127.0.0.1 on another port is the same site, so SameSite=Strict still sends the cookie:
    # what must refuse the post is the CSRF token (the attacker cannot read it) and Origin.
    handler = type("Attacker", (_AttackerPage,), {
        "target": f"{host.url}/ui/functions/failing/dlq/discard"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        with page.expect_navigation() as navigation:
            page.click("form#attack button")
        assert navigation.value.status == 403, navigation.value.status
        shot(page, screenshots, "csrf-refused")
    finally:
        server.shutdown()
        server.server_close()
    # A document with an opaque origin (as a sandboxed frame or a data: page has) posts with
    # `Origin: null`, as the dashboard's own pages do under no-referrer: refused all the same.
    page.set_content(_AttackerPage.form(f"{host.url}/ui/functions/failing/dlq/discard"))
    with page.expect_navigation() as navigation:
        page.click("form#attack button")
    assert navigation.value.status == 403, navigation.value.status
    assert victim in dead_letters(host, "failing"), "a cross-origin post discarded it"


def test_hostile_output_is_shown_as_text_and_never_runs(page, host, screenshots):
    problems = []
    page.on("console", lambda m: "Content Security Policy" in m.text and problems.append(m.text))
    page.on("pageerror", lambda e: problems.append(str(e)))

    logged = host.invoke("hostile")
    assert logged.status_code == 200, logged.text
    logged_id = logged.headers["X-Sora-Request-Id"]
    thrown = host.invoke("hostile", params={"throw": "1"})
    thrown_id = thrown.headers["X-Sora-Request-Id"]

    page.goto(host.url + "/ui/")
    assert pwned(page) == "undefined"
    page.goto(host.url + "/ui/functions/hostile")
    wait_for_row(page, f"table#invocations tr[data-request-id='{thrown_id}']")
    assert pwned(page) == "undefined"

    page.goto(host.url + f"/ui/invocations/{logged_id}")
    line = wait_for_text(page, "ol#log-lines > li.log-line", SCRIPT_LINE, timeout=5)
    assert SCRIPT_LINE in line.inner_text()
    assert page.locator("ol#log-lines script").count() == 0
    assert pwned(page) == "undefined"
    shot(page, screenshots, "invocation-hostile")

    page.goto(host.url + f"/ui/invocations/{thrown_id}")
    message = page.locator("dl#record dd[data-field=errorMessage]").inner_text()
    assert IMG_ERROR in message
    assert page.locator("dl#record img, dl#record script").count() == 0
    assert pwned(page) == "undefined"

    # An event whose attempts failed with markup: its attempts table shows the messages.
    queued = send_event(host, "hostile", "event", queryStringParameters={"throw": "1"})
    page.goto(host.url + f"/ui/invocations/{queued}")
    wait_for(lambda: page.reload() and IMG_ERROR in page.locator("table#attempts").inner_text(),
             timeout=20, interval=0.5, what="the event's failed attempt on its page")
    assert page.locator("table#attempts img, table#attempts script").count() == 0
    assert pwned(page) == "undefined"
    shot(page, screenshots, "invocation-hostile-event")

    page.goto(host.url + "/ui/functions/hostile/logs")
    follow_tail(page, host, "hostile", lambda m: f"{SCRIPT_LINE} {m}")
    assert page.locator("ol#log-tail script").count() == 0
    assert pwned(page) == "undefined"
    shot(page, screenshots, "logs-hostile")

    page.goto(host.url + "/ui/functions/hostile/invoke")
    page.fill("form#invoke-form textarea[name=event]", json.dumps({"marker": "form"}))
    page.click("form#invoke-form button[type=submit]")
    page.locator("section#invoke-result").wait_for()
    assert SCRIPT_LINE in page.locator("pre#invoke-output").inner_text()
    assert SCRIPT_LINE in page.locator("pre#invoke-logs").inner_text()
    assert page.locator("section#invoke-result script").count() == 0
    assert pwned(page) == "undefined"
    shot(page, screenshots, "invoke-hostile")
    # Markup that reached a page as markup would have been refused by the CSP (and logged):
    # escaping, not only the CSP, is what must keep it out.
    assert not problems, problems


def test_an_invoke_only_key_gets_no_dashboard(host):
    """The dashboard is the admin's: an invoke key, sent as the API takes keys, is no login."""
    r = requests.get(host.url + "/ui/", headers={"Authorization": f"Bearer {INVOKE_KEY}"},
                     allow_redirects=False, timeout=10)
    assert r.status_code in (303, 401, 403), r.status_code
