"""/docs and /redoc work without internet access: every script, style sheet and icon they load comes
from this server."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.browser import chromium_executable
from tests.gateway.conftest import AppFactory
from tests.server import Server


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_nothing_from_other_hosts(make_client: AppFactory, page: str) -> None:
    client = make_client()
    html = client.get(page).text
    assert not re.findall(r"https?://", html), "the page names another host"
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html) + re.findall(r"""url: ['"]([^'"]+)['"]""", html)
    assert any(asset.endswith(".js") for asset in assets)
    if page == "/docs":
        assert '"validatorUrl": null' in html  # no badge fetched from swagger.io
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.content) > 1000 or asset.endswith("openapi.json"), asset


@pytest.mark.parametrize(("page", "rendered"), [("/docs", 'class="opblock-summary-path"'), ("/redoc", "POST")])
def test_a_browser_renders_the_docs_with_no_other_host_reachable(
    server: Server, tmp_path: Path, page: str, rendered: str
) -> None:
    """Headless Chromium with every host name but loopback unresolvable: the page still draws the API."""
    chromium = chromium_executable()
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path}",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--virtual-time-budget=15000",
         "--dump-dom", f"{server.url}{page}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert rendered in result.stdout
    assert "/v1/jobs" in result.stdout
