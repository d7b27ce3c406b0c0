"""The try-it page at `/`: pick, drop or paste images and see their captions, through the public /v1 API.

The page is plain HTML, CSS and JavaScript from `gateway/page/` (no build step); the caption defaults are
filled in from `CaptionOptions`, so the page never disagrees with the API about them."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from blipq.contract.options import CaptionOptions

PAGE_DIR = Path(__file__).resolve().parent.parent / "page"

#: The page and everything it loads come from this server; thumbnails are blob: URLs of the picked files.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


def _render() -> str:
    # "<" escaped, so no option value can end the JSON data block early.
    defaults = json.dumps(CaptionOptions().model_dump(mode="json")).replace("<", "\\u003c")
    return (PAGE_DIR / "index.html").read_text(encoding="utf-8").replace("__DEFAULT_OPTIONS__", defaults)


_PAGE = _render()


@router.get("/", response_class=HTMLResponse)
def page() -> HTMLResponse:
    return HTMLResponse(_PAGE, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})


#: Mounted at /page by the app: page.js and page.css.
assets = StaticFiles(directory=PAGE_DIR / "assets")
