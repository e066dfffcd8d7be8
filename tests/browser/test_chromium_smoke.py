"""Chromium starts from /usr/bin/chromium under Playwright and loads a page from a real host:
what every other browser test stands on, checked on its own so a broken install reads as such."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.browser


def test_chromium_loads_a_page_from_a_real_host(browser, host, screenshots):
    page = browser.new_page()
    try:
        response = page.goto(host.url + "/healthz")
        assert response.status == 200
        assert json.loads(page.inner_text("body")) == {"status": "ok"}
        assert "Chrom" in browser.version or browser.version[0].isdigit()
        page.screenshot(path=str(screenshots / "healthz.png"))
        assert (screenshots / "healthz.png").stat().st_size > 0
    finally:
        page.close()
