"""Debian's Chromium for the browser tests: its path, or a skip (a fail where CI is set) that says how to get it.

Playwright drives the installed browser through `executable_path`; it never downloads one."""

from __future__ import annotations

import os
import shutil

import pytest

INSTALL_HINT = "install Debian's chromium package (sudo apt-get install chromium; bash .ci/run does)"


def chromium_executable() -> str:
    """The Chromium to drive. Without one the test is skipped locally, and fails where CI is set."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = f"no Chromium found for the browser tests: {INSTALL_HINT}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
