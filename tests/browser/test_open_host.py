"""A host without API keys, in Chromium: Chromium starts from /usr/bin/chromium under Playwright
and loads a page from a real host (what every other browser test stands on, checked on its own
so that a broken install reads as such), and the dashboard is open there, with its forms still
CSRF-protected by an anonymous session."""
from __future__ import annotations

import json

import pytest

from tests.browser.functions import LOGGER
from tests.support import served, write_function

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def open_host(tmp_path_factory):
    base = tmp_path_factory.mktemp("browser-open-host")
    dirs = [write_function(base / "fns", "logger", {"index.js": LOGGER}, name="logger")]
    yield from served(base, dirs, https=False)


def test_chromium_loads_a_page_from_a_real_host(browser, open_host, screenshots):
    page = browser.new_page()
    try:
        response = page.goto(open_host.url + "/healthz")
        assert response.status == 200
        assert json.loads(page.inner_text("body"))["functions"]["logger"]["state"] == "RUNNING"
        page.screenshot(path=str(screenshots / "healthz.png"))
        assert (screenshots / "healthz.png").stat().st_size > 0
    finally:
        page.close()


def test_the_dashboard_of_a_host_without_keys_is_open_and_its_forms_work(context, open_host,
                                                                          screenshots):
    page = context.new_page()
    page.goto(open_host.url + "/ui/")
    assert page.url == open_host.url + "/ui/", "no login on a host without keys"
    assert page.locator("table#functions tr[data-function=logger]").count() == 1
    assert page.locator("form#logout-form").count() == 0
    page.goto(open_host.url + "/ui/login")
    assert page.url == open_host.url + "/ui/"

    page.goto(open_host.url + "/ui/functions/logger/invoke")
    page.fill("form#invoke-form textarea[name=event]", json.dumps({"marker": "open-host"}))
    page.click("form#invoke-form button[type=submit]")
    page.locator("section#invoke-result").wait_for()
    assert "ok" in page.locator("section#invoke-result [data-field=status]").inner_text()
    assert "browser-test line open-host" in page.locator("pre#invoke-logs").inner_text()
    page.screenshot(path=str(screenshots / "invoke-open-host.png"), full_page=True)
