"""The playground page in a real browser: Debian's Chromium, headless, driven by playwright.

Type a prompt, watch tokens stream in shaded by probability, hover one for its
alternatives, press Stop and see the server free the row; no console errors. Skips where
/usr/bin/chromium is absent (.ci/run installs it when it runs as root).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from tests.serving_fixtures import cached_artifact
from tests.serving_live import LiveServer

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)")]


@pytest.fixture(scope="module")
def art(tiny_run, tmp_path_factory):
    return cached_artifact(tiny_run, tmp_path_factory)


@pytest.fixture(scope="module")
def live(art):
    s = LiveServer(art, max_new_tokens=20000)
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh page that fails the test on any console error or uncaught exception."""
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    yield page
    page.close()


def token_count(page) -> int:
    return page.locator("#output .tok").count()


def test_tokens_stream_in_shaded_with_alternatives_on_hover(page, live, tmp_path):
    from PIL import Image

    page.goto(live.base + "/")
    page.wait_for_function(f"document.querySelector('#model').textContent.includes({live.server.card.name!r})")
    assert page.locator("#key-box").is_hidden()                 # no key on this server
    page.fill("#prompt", "ROMEO:\nBut, soft! what light")
    page.fill("#max-tokens", "80")
    page.fill("#seed", "3")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').textContent.includes('length')", timeout=30000)
    tokens_shown = page.eval_on_selector_all("#output .tok", "els => els.reduce((n, e) => n + e.items.length, 0)")
    assert tokens_shown == 80                                   # every token, in some span
    assert token_count(page) >= 60                              # one span per token (bytes grouped)
    shades = page.eval_on_selector_all("#output .tok", "els => new Set(els.map(e => e.style.getPropertyValue('--a'))).size")
    assert shades >= 10
    text = page.inner_text("#output")
    assert text.startswith("ROMEO:\nBut, soft! what light") and len(text) > 60

    token = page.locator("#output .tok").nth(12)
    token.hover()
    tip = page.locator("#tip")
    tip.wait_for(state="visible")
    rows = tip.locator("tr")
    assert rows.count() >= 5 and "%" in rows.first.inner_text()
    assert tip.locator("tr.chosen").count() == 1               # the chosen token, among or after the top 5
    page.mouse.move(5, 5)
    tip.wait_for(state="hidden")

    shot = page.locator("#output").screenshot(path=str(tmp_path / "playground.png"))
    px = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).reshape(-1, 3).astype(int)
    blues = {tuple(p) for p in px[(px[:, 2] > 200) & (px[:, 2] - px[:, 0] > 25)]}   # token backgrounds
    assert len(blues) >= 8, f"only {len(blues)} shades of blue in the screenshot"
    assert page.errors == []


def test_a_chunk_of_several_tokens_still_gets_a_span_per_token(page, live):
    """The server merges tokens into one chunk when a client falls behind; the page must
    still split them: one span per token, the three bytes of a character in one span."""
    page.goto(live.base + "/")
    page.wait_for_function("typeof addChoice === 'function'")
    lp = lambda tokens: {"tokens": tokens, "token_logprobs": [-0.1] * len(tokens),   # noqa: E731
                         "top_logprobs": [{t: -0.1} for t in tokens]}
    chunks = [{"text": "ab\u2019c", "logprobs": lp(["a", "b", "bytes:\\xe2\\x80", "bytes:\\x99", "c"])},
              {"text": "", "logprobs": lp(["bytes:\\xc3"])},                 # an open character...
              {"text": "\u00e9d", "logprobs": lp(["bytes:\\xa9", "d"])},    # ...closed by the next chunk
              {"text": "!", "logprobs": lp(["!"]), "finish_reason": "length"}]
    spans = page.evaluate("""chunks => {
        clearOutput();
        for (const c of chunks) addChoice(c);
        return [...document.querySelectorAll('#output .tok')].map(e => [e.textContent, e.items.length]);
    }""", chunks)
    assert spans == [["a", 1], ["b", 1], ["\u2019", 2], ["c", 1], ["\u00e9", 2], ["d", 1], ["!", 1]]
    assert page.errors == []


def test_stop_cancels_the_stream_and_the_server_frees_the_row(page, live):
    page.goto(live.base + "/")
    page.fill("#prompt", "hi")
    page.fill("#max-tokens", "20000")
    page.check("#ignore-eos")
    page.click("#generate")
    page.wait_for_function("document.querySelectorAll('#output .tok').length > 20", timeout=30000)
    seen = token_count(page)
    page.wait_for_function(f"document.querySelectorAll('#output .tok').length > {seen}", timeout=10000)
    assert live.metric("shelley_requests_running") == 1          # still streaming
    assert page.locator("#generate").is_disabled()
    page.click("#stop")
    page.wait_for_function("document.querySelector('#status').textContent.includes('stopped')", timeout=10000)
    assert live.wait_for(lambda: live.metric("shelley_requests_running") == 0, 10)
    stopped = token_count(page)
    page.wait_for_timeout(300)
    assert token_count(page) == stopped < 20000 and page.locator("#generate").is_enabled()
    assert page.errors == []


def test_the_key_box_appears_when_a_key_is_required(browser, art):
    s = LiveServer(art, api_key="sk-play")
    page = browser.new_page()
    try:
        page.goto(s.base + "/")
        page.locator("#key-box").wait_for(state="visible")
        page.fill("#max-tokens", "5")
        page.click("#generate")
        page.locator("#error").wait_for(state="visible")
        assert "API key" in page.inner_text("#error")
        page.fill("#api-key", "sk-play")
        page.click("#generate")
        page.wait_for_function("document.querySelector('#status').textContent.match(/length|stop/)", timeout=30000)
        assert page.locator("#error").is_hidden() and token_count(page) >= 1
    finally:
        page.close()
        s.close()
