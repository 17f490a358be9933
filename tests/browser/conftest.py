"""Browser-test fixtures: labs on loopback ports and one headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.support import TOKEN, Lab, headless_chromium, running_lab


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The API and a local worker (`vsml-lab up`), no token."""
    with running_lab(tmp_path_factory.mktemp("lab"), "up") as running:
        yield running


@pytest.fixture(scope="session")
def token_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The API alone, guarded by the token TOKEN."""
    with running_lab(tmp_path_factory.mktemp("token-lab"), "api", TOKEN) as running:
        yield running


@pytest.fixture
def chrome(browser: Any) -> Iterator[Any]:
    """The browser for one test; it leaves its page (closing event streams)."""
    yield browser
    browser.get("about:blank")


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Chromium driven by Selenium, with a fresh profile."""
    driver = headless_chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()
