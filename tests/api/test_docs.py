"""/docs and /redoc work without internet access: every script, style sheet and icon they load comes
from this server."""

from __future__ import annotations

import re

import pytest

from tests.api.conftest import AppFactory


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
