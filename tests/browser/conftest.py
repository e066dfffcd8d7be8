"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against a real host.

One host and one browser for the whole module (starting either costs seconds); each test gets a
fresh page in a logged-in browser context. Chromium is /usr/bin/chromium (the Makefile's
browser-deps installs it); Playwright's own browser download is never used.
"""
from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path

import pytest

from tests.browser.functions import ADMIN_KEY, FAILING, HOSTILE, INVOKE_KEY, LOGGER
from tests.support import served, write_function

CHROMIUM = "/usr/bin/chromium"
@pytest.fixture(scope="module")
def fail_flag(tmp_path_factory) -> Path:
    flag = tmp_path_factory.mktemp("flags") / "fail"
    flag.touch()
    return flag


def seed_history(state_dir: Path, name: str, now: float, count: int = 1500) -> None:
    """A day of `name`'s records in the store before the host starts (through the recorder's
    own write), busier in the last hours, with a few errors and cold starts: the charts and the
    docs screenshot then have a shape to show. Their request ids start with `seeded-`."""
    from sora.store import db, records
    rng = random.Random(19)
    rows = []
    # Oldest first, as the recorder would have stored them (lists are in store order).
    for i, ago in enumerate(sorted((86400 * (1 - math.sqrt(rng.random())) for _ in range(count)),
                                   reverse=True)):   # denser towards now
        cold = rng.random() < 0.02
        status = rng.choices(("ok", "error", "timeout"), (95, 4, 1))[0]
        duration = rng.lognormvariate(2.0, 0.6) + (120 if cold else 0)
        rows.append((f"seeded-{i:05d}", name, "$LATEST", "http", now - 60 - ago, duration,
                     status, None if status == "ok" else "Error", int(cold),
                     None if status == "ok" else "seeded failure", 64,
                     110.0 if cold else None))
    conn = db.connect(str(state_dir))
    try:
        records.commit(conn, rows, [])
    finally:
        conn.close()


@pytest.fixture(scope="module")
def host(tmp_path_factory, fail_flag):
    base = tmp_path_factory.mktemp("browser-host")
    seed_history(base / "state", "logger", time.time())
    fns = base / "fns"
    dirs = [
        write_function(fns, "logger", {"index.js": LOGGER}, name="logger"),
        write_function(fns, "hostile", {"index.js": HOSTILE}, name="hostile"),
        # `isolation: none`: it reads a flag file of the test's, which a sandbox would hide.
        write_function(fns, "failing", {"index.js": FAILING}, name="failing",
                       isolation="none", env={"FAIL_FLAG": str(fail_flag)},
                       eventInvoke={"maximumRetryAttempts": 0}),
    ]
    yield from served(base, dirs, https=True, api_key=ADMIN_KEY, extra={
        "auth": {"apiKeys": [
            {"name": "ops", "key": ADMIN_KEY, "scopes": ["admin"]},
            {"name": "caller", "key": INVOKE_KEY, "scopes": ["invoke"]},
        ]}})


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `make browser-deps` installs Debian's chromium")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-background-networking"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    """Where each page's screenshot goes (the test run's temp dir)."""
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def context(browser):
    """A fresh browser context (no cookies): a new visitor."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(10_000)
    yield ctx
    ctx.close()


def log_in(page, host) -> None:
    page.goto(host.url + "/ui/login")
    page.fill("form#login-form input[name=key]", ADMIN_KEY)
    page.click("form#login-form button[type=submit]")
    page.wait_for_url(host.url + "/ui/")


@pytest.fixture
def page(context, host):
    """A page of a logged-in admin."""
    page = context.new_page()
    log_in(page, host)
    return page
