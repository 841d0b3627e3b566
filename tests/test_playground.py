"""The playground page in a real browser: Debian's Chromium, headless, driven by playwright.

Type a prompt, watch tokens stream in shaded by probability, hover one for its
alternatives, press Stop and see the server free the row; chat with a character and see
exactly what the template renders; the token view; n choices and logit bias; no console
errors. Skips where
/usr/bin/chromium is absent (.ci/run installs it when it runs as root).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from tests.serving_fixtures import play_artifact
from tests.serving_live import LiveServer

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)")]


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


@pytest.fixture(scope="module")
def play(tiny_run, tmp_path_factory):
    """A server whose chat template writes a play (speaker lines `Romeo.`)."""
    s = LiveServer(play_artifact(tiny_run, tmp_path_factory), max_new_tokens=400, max_batch=8)
    yield s
    s.close()


def test_chat_mode_shows_what_the_model_reads_and_the_character_answers(page, play):
    import httpx

    page.goto(play.base + "/")
    page.check("#mode-chat")
    page.locator("#chat-box").wait_for(state="visible")
    page.fill("#user-name", "Romeo")
    page.fill("#assistant-name", "Juliet")
    page.locator("#messages .content").first.fill("Good morrow.")
    want = "Romeo.\nGood morrow.\n\nJuliet.\n"
    page.wait_for_function(f"document.querySelector('#rendered').textContent === {want!r}")
    view = httpx.post(f"{play.base}/tokenize", json={"messages": [{"role": "user", "content": "Good morrow."}],
                                                      "chat_template_kwargs": {"user_name": "Romeo",
                                                                               "assistant_name": "Juliet"}}).json()
    assert view["prompt"] == want
    page.wait_for_function(f"document.querySelectorAll('#tokens .t').length === {view['count']}")
    assert page.locator("#tokens .t sub").nth(3).inner_text() == str(view["tokens"][3])   # each token with its id
    assert page.inner_text("#token-count").startswith(f"{view['count']} of 32")
    page.fill("#max-tokens", "6")
    page.fill("#seed", "4")
    page.check("#ignore-eos")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').textContent.match(/length|stop/)", timeout=30000)
    assert page.inner_text("#output").startswith(want)
    reply = httpx.post(f"{play.base}/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Good morrow."}], "max_tokens": 6, "seed": 4, "ignore_eos": True,
        "temperature": 0.8, "top_p": 1, "top_k": 0, "chat_template_kwargs": {"user_name": "Romeo",
                                                                              "assistant_name": "Juliet"}}).json()
    content = reply["choices"][0]["message"]["content"]
    roles = page.eval_on_selector_all("#messages li", "els => els.map(e => [e.querySelector('.role').value, "
                                                      "e.querySelector('.content').value])")
    assert roles == [["user", "Good morrow."], ["assistant", content.strip()], ["user", ""]]   # the reply joined
    page.wait_for_function("document.querySelector('#rendered').textContent.endsWith('Juliet.\\n')")
    page.locator("#messages .content").last.fill("What news?")       # now longer than the context (32)
    page.wait_for_function("document.querySelector('#token-count').classList.contains('over')")
    page.click("#generate")                                           # the model reads the end that fits
    page.wait_for_function("document.querySelectorAll('#messages li').length === 5", timeout=30000)
    assert page.locator("#error").is_hidden() and page.errors == []


def test_n_choices_and_logit_bias_from_the_page(page, live):
    page.goto(live.base + "/")
    page.fill("#prompt", "Shall I")
    page.wait_for_function("document.querySelectorAll('#tokens .t').length === 7")
    e = live.server.artifact.tokenizer.token_to_id("e")
    page.fill("#n", "2")
    page.fill("#max-tokens", "40")
    page.fill("#seed", "1")
    page.fill("#logit-bias", f"{e}:-100")
    page.fill("#presence-penalty", "0.5")
    page.check("#ignore-eos")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').textContent.includes('length')", timeout=30000)
    panes = page.locator("#output .pane")
    assert panes.count() == 2
    texts = [panes.nth(i).inner_text().removeprefix("Shall I") for i in range(2)]
    assert all(len(t) >= 30 and "e" not in t for t in texts) and texts[0] != texts[1]
    page.fill("#logit-bias", "e:-100")
    page.click("#generate")
    page.locator("#error").wait_for(state="visible")
    assert "token id:bias" in page.inner_text("#error")


def test_structured_mode_shows_what_the_model_wanted_and_what_the_grammar_allowed(page, live):
    import json

    page.goto(live.base + "/")
    page.check("#mode-structured")
    page.locator("#structured-box").wait_for(state="visible")
    assert page.locator("#complete-box").is_visible() and page.locator("#chat-box").is_hidden()
    fmt = json.loads(page.input_value("#response-format"))                     # the default example
    schema = fmt["json_schema"]["schema"]
    page.fill("#prompt", "ROMEO:")
    page.fill("#seed", "2")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').textContent.includes('stop')", timeout=30000)
    reply = json.loads(page.inner_text("#output").removeprefix("ROMEO:"))       # parses: the grammar's work
    assert set(reply) == set(schema["required"]) and reply["mood"] in schema["properties"]["mood"]["enum"]
    tokens = page.eval_on_selector_all("#output .tok", "els => els.reduce((n, e) => n + e.items.length, 0)")
    rows = page.locator("#trace-rows tr")
    assert rows.count() == tokens >= 20                                         # one row per token
    overruled = page.locator("#trace-rows tr.overruled")
    assert 0 < overruled.count() < tokens and "masked" in overruled.first.inner_text()
    allowed = page.eval_on_selector_all("#trace-rows tr", "trs => trs.map(t => Number(t.cells[3].textContent))")
    assert allowed[0] == 1 and all(a >= 1 for a in allowed)                     # '{' is the only start
    best = page.eval_on_selector_all("#trace-rows tr", "trs => trs.map(t => t.cells[5].textContent)")
    assert best[0].startswith('"{" ')                                          # the one allowed start
    assert all(b.count("%") == min(5, a) for a, b in zip(allowed, best))
    assert "overruled the model at" in page.inner_text("#trace-summary")
    page.locator("#output .tok.overruled").first.hover()                        # the token says what it was
    tip = page.locator("#tip")
    tip.wait_for(state="visible")
    assert "the model wanted" in tip.inner_text() and "the grammar masked" in tip.inner_text()
    page.mouse.move(5, 5)

    page.select_option("#format-example", "choice")                             # another format, from the list
    choices = json.loads(page.input_value("#response-format"))["choice"]
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').textContent.includes('stop')", timeout=30000)
    assert page.inner_text("#output").removeprefix("ROMEO:") in choices

    page.fill("#response-format", "{not json")
    page.click("#generate")
    page.locator("#error").wait_for(state="visible")
    assert "response_format is not JSON" in page.inner_text("#error")
    page.fill("#response-format", '{"type": "xml"}')                           # the server's 400, shown
    page.click("#generate")
    page.wait_for_function("document.querySelector('#error').textContent.includes('response_format')")
    page.check("#mode-complete")
    assert page.locator("#structured-box").is_hidden()
    assert [e for e in page.errors if "status of 400" not in e] == []          # only the 400 asked for
