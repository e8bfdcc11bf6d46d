"""The playground page at ``/`` in a real headless browser: Debian's ``chromium``, driven by playwright's API.

Nothing downloads a browser build: playwright is pointed at the system binary (``.ci/run`` installs it with apt).
"""

from __future__ import annotations

import os
import shutil

import httpx2
import pytest
from _serve_common import MODEL_ID, build, make_adapter, running


def _chromium() -> str:
    path = os.environ.get("REFT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "Debian's chromium is not installed: apt-get install -y chromium (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def page_and_server(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("adapters")
    app, _, _ = build({"a": make_adapter(root / "a", 1), "b": make_adapter(root / "b", 2)})
    with running(app) as srv, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            yield page, srv
        finally:
            browser.close()


def _chat(srv, model: str, text: str, max_tokens: int) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
            "temperature": 0}
    return httpx2.post(srv.url + "/v1/chat/completions", json=body, timeout=30).json()["choices"][0]["message"][
        "content"]


def test_pick_an_adapter_type_and_watch_the_stream_next_to_the_base_model(page_and_server, tmp_path):
    page, srv = page_and_server
    page.goto(srv.url + "/")
    page.wait_for_selector("body[data-ready='1']")
    options = page.eval_on_selector_all("#model option", "els => els.map(e => e.value)")
    assert options == [MODEL_ID, "a", "b"]
    page.select_option("#model", "b")
    page.fill("#prompt", "the quick brown fox")
    page.fill("#max-tokens", "24")
    page.fill("#temperature", "0")
    page.check("#compare")
    page.click("#send")
    page.wait_for_selector("#out-adapter[data-done='1']", state="attached")
    page.wait_for_selector("#out-base[data-done='1']", state="attached")
    adapter_text, base_text = page.inner_text("#out-adapter"), page.inner_text("#out-base")
    assert adapter_text == _chat(srv, "b", "the quick brown fox", 24)
    assert base_text == _chat(srv, MODEL_ID, "the quick brown fox", 24)
    assert adapter_text != base_text
    assert int(page.get_attribute("#out-adapter", "data-chunks")) > 1  # it arrived as a stream, piece by piece
    assert "tokens" in page.inner_text("#meta-adapter") and "finish" in page.inner_text("#meta-adapter")
    page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)


def test_a_composition_or_unknown_adapter_shows_the_servers_message(page_and_server):
    page, srv = page_and_server
    page.goto(srv.url + "/")
    page.wait_for_selector("body[data-ready='1']")
    page.fill("#compose", "nosuch")
    page.uncheck("#compare")
    page.click("#send")
    page.wait_for_selector("#out-adapter[data-done='error']", state="attached")
    message = page.inner_text("#meta-adapter")
    assert "404" in message and "'nosuch' does not exist" in message
    assert page.is_hidden("#pane-base")


def test_completion_mode(page_and_server):
    page, srv = page_and_server
    page.goto(srv.url + "/")
    page.wait_for_selector("body[data-ready='1']")
    page.select_option("#model", "a")
    page.select_option("#mode", "completion")
    page.uncheck("#compare")
    page.fill("#prompt", "hello")
    page.fill("#max-tokens", "8")
    page.click("#send")
    page.wait_for_selector("#out-adapter[data-done='1']", state="attached")
    body = {"model": "a", "prompt": "hello", "max_tokens": 8, "temperature": 0}
    want = httpx2.post(srv.url + "/v1/completions", json=body, timeout=30).json()["choices"][0]["text"]
    assert page.inner_text("#out-adapter") == want
