"""The dashboard in a real headless Chromium (Debian's package) driven by Playwright, against ``gauss-serve``.

These tests run only with ``GAUSS_BROWSER_TESTS=1`` (one tox env sets it, so
CI runs them once, not once per kernel build); with it set, a missing
Chromium or Playwright is a failure, not a skip. No browser is downloaded:
Playwright drives ``/usr/bin/chromium`` (or ``GAUSS_CHROMIUM``).

Screenshots of every state go to ``tests/browser/artifacts/`` (git-ignored),
or to ``GAUSS_BROWSER_ARTIFACTS``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from support.browser import Dashboard, Page

HERE = Path(__file__).resolve().parent

ENABLED = os.environ.get("GAUSS_BROWSER_TESTS") == "1"
CHROMIUM = os.environ.get("GAUSS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ENABLED:
        return
    skip = pytest.mark.skip(reason="browser tests run with GAUSS_BROWSER_TESTS=1 (tox env cython)")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"GAUSS_BROWSER_TESTS=1 but there is no Chromium at {CHROMIUM} (.ci/setup installs Debian's chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.fail(f"GAUSS_BROWSER_TESTS=1 but Playwright is missing ({exc}): pip install -e '.[browser]'")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def make_dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Dashboard]]:
    started: list[Dashboard] = []

    def make(token: str | None = None, **options: Any) -> Dashboard:
        dashboard = Dashboard(tmp_path_factory.mktemp("dashboard"), token=token, **options)
        dashboard.start()
        started.append(dashboard)
        return dashboard

    yield make
    for dashboard in started:
        dashboard.stop()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[[str], Page]]:
    contexts: list[Any] = []

    def open_(url: str) -> Page:
        context = browser.new_context(viewport={"width": 1400, "height": 800})
        contexts.append(context)
        page = Page(context.new_page())
        page.page.goto(url)
        return page

    yield open_
    for context in contexts:
        context.close()


