"""The page at ``GET /`` (python/linalign/server/static/index.html), driven
in a real headless Chromium by Playwright: a principle and a ratio typed in,
a message sent, both columns streamed, the tokens the alignment changed
highlighted. Saves docs/playground.png.

Needs the system's Chromium (``apt-get install chromium``) and the
``playwright`` package (its own browser downloads are not used); skipped
without them.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from test_server import Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")

ROOT = Path(__file__).resolve().parents[1]
KEY = "page-key"


@pytest.fixture(scope="module")
def server():
    srv = Server("--parallel", "2", "--preset", "pirate=Always answer like a pirate.:4", api_key=KEY)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def test_the_page_needs_no_key_and_is_self_contained(server: Server) -> None:
    r = httpx.get(f"{server.url}/", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "<script" in r.text and "<style" in r.text
    assert "http://" not in r.text and "https://" not in r.text  # no CDN


def test_aligned_and_plain_stream_side_by_side_with_changes_highlighted(server: Server, browser) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 820})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server.url}/")
    # without the key the page says so; with it, the presets load
    page.wait_for_function("document.getElementById('status').textContent.includes('API key')")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.querySelectorAll('#preset option').length === 2")
    assert not page.is_disabled("#negative")

    page.fill("#principle", "Always answer like a pirate.")
    page.fill("#negative", "Be formal and serious.")
    assert page.text_content("#ratio-value") == "auto" and page.is_disabled("#ratio")  # the default
    page.uncheck("#ratio-auto")
    page.fill("#ratio", "4")  # the slider
    assert page.text_content("#ratio-value") == "4.0"
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "40")
    page.fill("#message", "Say hello and tell me about your day.")
    page.click("#send")

    page.wait_for_selector("#aligned .msg.reply[data-done='1']", timeout=120_000)
    page.wait_for_selector("#plain .msg.reply[data-done='1']", timeout=120_000)
    aligned = page.text_content("#aligned .msg.reply")
    plain = page.text_content("#plain .msg.reply")
    assert aligned.strip() and plain.strip()
    assert aligned != plain
    assert page.locator("#aligned .changed").count() >= 1
    assert page.locator("#plain .changed").count() == 0
    assert "tokens changed" in page.text_content("#aligned-stats")
    assert not page.locator(".msg.error").count()
    assert errors == []
    (ROOT / "docs").mkdir(exist_ok=True)
    page.screenshot(path=str(ROOT / "docs" / "playground.png"), full_page=True)
    page.close()


def test_a_preset_from_the_picker_fills_principle_and_ratio(server: Server, browser) -> None:
    page = browser.new_page()
    page.goto(f"{server.url}/")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.querySelectorAll('#preset option').length === 2")
    page.select_option("#preset", "SmolLM2-135M-Instruct.Q4_1.gguf:pirate")
    assert page.input_value("#principle") == "Always answer like a pirate."
    assert page.text_content("#ratio-value") == "4.0"
    page.close()


def test_the_placement_switch_starts_at_the_default_and_goes_into_the_request(server: Server, browser) -> None:
    from linalign.principles import DEFAULT_POSITION

    page = browser.new_page()
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/v1/chat/completions") else None)
    page.goto(f"{server.url}/")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.querySelectorAll('#preset option').length === 2")
    assert page.input_value("#placement") == DEFAULT_POSITION
    page.fill("#principle", "Always answer like a pirate.")
    page.select_option("#placement", "system")
    page.fill("#max-tokens", "4")
    page.fill("#message", "Hello!")
    page.click("#send")
    page.wait_for_selector("#aligned .msg.reply[data-done='1']", timeout=120_000)
    aligned = [body for body in sent if body.get("principle")]
    assert aligned and aligned[0]["principle_position"] == "system"
    assert all("principle_position" not in body for body in sent if not body.get("principle"))
    page.close()
