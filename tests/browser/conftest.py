"""Browser tests: Debian's headless Chromium (``apt-get install chromium``) driven by
Playwright for Python through ``executable_path`` (no browser download).

Without the browser or Playwright the tests are skipped, unless
``RETRO_REQUIRE_SERVICES=1`` (CI), which turns the skip into a failure, as for the
server tests (tests/conftest.py).
"""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from tests.conftest import unavailable

CHROMIUM = ("chromium", "chromium-browser")
"""Names of Debian's (and Ubuntu's) Chromium executable, looked up on ``PATH``."""


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of a headless-capable Chromium for Playwright's ``executable_path``."""
    found = next((path for name in CHROMIUM if (path := shutil.which(name))), None)
    missing = None
    if found is None:
        missing = "no chromium on PATH (apt-get install chromium)"
    elif importlib.util.find_spec("playwright") is None:
        missing = "playwright is not installed (pip install playwright)"
    if missing is not None:
        unavailable(missing, "browser")
    assert found is not None
    return found
