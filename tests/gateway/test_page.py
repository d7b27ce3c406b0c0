"""The try-it page at `/`: served with everything it loads, and driven in a real browser (Debian's Chromium
through Playwright) against a real `blipq serve`.

`BLIPQ_PAGE_SCREENSHOT=docs/page.png` makes the browser test save the page after its captions came back
(README shows that file)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, expect, sync_playwright

from blipq.contract.options import CaptionOptions
from blipq.inference.decode import decode_image
from blipq.inference.engine import CaptionEngine
from tests.browser import chromium_executable
from tests.gateway.conftest import AppFactory
from tests.helpers import drawing, encode, noise
from tests.server import Server

PHOTO = encode(noise(320, 240, seed=5), "JPEG")
SKETCH = encode(drawing(200, 160, "white", "red"), "PNG")
NOT_AN_IMAGE = b"these are notes, not a picture\n"
KEY = "page-test-key"


def test_the_page_and_everything_it_loads_come_from_this_server(make_client: AppFactory) -> None:
    client = make_client()
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    defaults = re.search(r'<script type="application/json" id="defaults">(.*?)</script>', page.text, re.S)
    assert defaults is not None
    assert json.loads(defaults.group(1)) == CaptionOptions().model_dump(mode="json")
    assets = re.findall(r"""(?:src|href)=["'](/page/[^"']+)["']""", page.text)
    assert sorted(assets) == ["/page/page.css", "/page/page.js"]
    for text in [page.text, *(client.get(asset).text for asset in assets)]:
        assert not re.findall(r"https?://", text), "the page names another host"
    assert client.get("/page/page.js").headers["content-type"].startswith("text/javascript")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_executable()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        yield launched
        launched.close()


def open_page(browser: Browser, server: Server, **context_args: Any) -> tuple[Page, list[str]]:
    """The page, with every URL it requests recorded."""
    context = browser.new_context(**context_args)
    page = context.new_page()
    requested: list[str] = []

    def record(request: Request) -> None:
        requested.append(request.url)

    page.on("request", record)
    page.goto(f"{server.url}/")
    return page, requested


def pick(page: Page, *files: tuple[str, str, bytes]) -> None:
    page.set_input_files("#files", [{"name": name, "mimeType": mime, "buffer": data} for name, mime, data in files])


def captions(page: Page, count: int) -> list[tuple[str, str]]:
    """(file name, caption text) of the first `count` results once none is pending, oldest first."""
    # Locators, not page-side predicates: the page's Content-Security-Policy forbids evaluating strings.
    expect(page.locator(".result")).to_have_count(count)
    expect(page.locator(".result.pending")).to_have_count(0)
    names = page.locator(".result .name").all_inner_texts()
    texts = page.locator(".result .caption").all_inner_texts()
    return list(reversed(list(zip(names, texts, strict=True))))


@pytest.mark.both_modes
def test_picked_files_get_the_engines_captions_and_a_bad_file_its_error(
    browser: Browser, server: Server, engine: CaptionEngine
) -> None:
    page, requested = open_page(browser, server)
    expect(page.locator("#service")).to_contain_text(f"Ready: {server.mode} mode")
    expect(page.locator("#service")).to_contain_text("on cpu" if server.mode == "embedded" else "1 worker,")
    assert page.input_value("#num_beams") == "3"  # the defaults are shown
    assert page.input_value("#prompt") == CaptionOptions().prompt

    pick(page, ("photo.jpg", "image/jpeg", PHOTO), ("notes.jpg", "image/jpeg", NOT_AN_IMAGE))
    (photo_name, photo_caption), (notes_name, notes_text) = captions(page, 2)
    assert (photo_name, notes_name) == ("photo.jpg", "notes.jpg")
    assert [photo_caption] == engine.caption([decode_image(PHOTO)], CaptionOptions())
    refused = httpx.post(f"{server.url}/v1/captions", files={"images": ("notes.jpg", NOT_AN_IMAGE)}, timeout=30)
    assert notes_text == f"Error: {refused.json()['error']['message']}"
    assert page.locator(".result.failed").count() == 1

    # Options travel with the next files: greedy search, no prompt.
    page.click("#options-section summary")
    page.fill("#num_beams", "1")
    page.fill("#prompt", "")
    pick(page, ("sketch.png", "image/png", SKETCH))
    greedy_no_prompt = CaptionOptions(num_beams=1, prompt="")
    assert captions(page, 3)[-1] == ("sketch.png", *engine.caption([decode_image(SKETCH)], greedy_no_prompt))

    if (target := os.environ.get("BLIPQ_PAGE_SCREENSHOT")) and server.mode == "embedded":
        page.set_viewport_size({"width": 1000, "height": 900})
        page.screenshot(path=Path(target), full_page=True)
    outside = [url for url in requested if not url.startswith((server.url, "blob:", "data:"))]
    assert not outside, f"the page requested other hosts: {outside}"
    assert any(url == f"{server.url}/v1/captions" for url in requested)


@pytest.fixture(scope="module")
def keyed_server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tiny_checkpoint, tmp_path_factory.mktemp("keyed"), env={"BLIPQ_API_KEYS": KEY}).start()
    yield running
    running.stop()


def test_with_keys_configured_the_page_asks_for_one_on_a_phone_sized_window(
    browser: Browser, keyed_server: Server, engine: CaptionEngine
) -> None:
    page, _ = open_page(browser, keyed_server, viewport={"width": 390, "height": 844}, is_mobile=True)
    expect(page.locator("#key-section")).to_be_visible()
    expect(page.locator("#key-why")).to_contain_text("needs an API key")
    pick(page, ("photo.jpg", "image/jpeg", PHOTO))
    assert "an API key is needed" in captions(page, 1)[0][1]

    page.fill("#api-key", KEY)
    page.press("#api-key", "Enter")
    expect(page.locator("#key-why")).to_have_text("Key accepted.")
    pick(page, ("photo.jpg", "image/jpeg", PHOTO))
    assert captions(page, 2)[-1][1] == engine.caption([decode_image(PHOTO)], CaptionOptions())[0]

    # Usable at that width, and every field is labelled for screen readers.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    unlabelled = page.evaluate(
        "[...document.querySelectorAll('input, textarea')].filter(e => !e.labels.length).map(e => e.id)"
    )
    assert unlabelled == []


def test_the_file_picker_is_reached_from_the_keyboard_and_shows_focus(browser: Browser, server: Server) -> None:
    page, _ = open_page(browser, server)
    focused: list[str] = []
    while "files" not in focused:
        assert len(focused) < 10, f"the file picker is not in the tab order: {focused}"
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id"))
    assert page.evaluate("getComputedStyle(document.getElementById('drop')).outlineStyle") == "solid"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "urls"
