"""Gradio's progress trackers ask for animation frames when nothing shows them; sam/app/progress_timer.py
stops that.

The middleware on a stub app (what it changes and what it leaves alone), the pinned Gradio's own tracker
script, and the app's page in headless Chromium: no animation frames asked for while it sits idle, and
Gradio's progress timer still counting on the status line while a model loads."""

import asyncio
import logging
from pathlib import Path

import gradio
import pytest

from sam.app.progress_timer import FIXED, LOOP, ProgressTimerFix, fixed
from tests.helpers.browser import (
    REPO,
    app_fixture,
    browser_fixture,  # noqa: F401  (a fixture)
    choose_model,
    open_app,
    upload,
)

TRACKER = (b"y=j(o,`show_progress`,3,`full`);"
           b"function ze(){me(()=>{F(Pe,(performance.now()-w(de))/1e3),W&&ze()})}function Ve(){W||(W=!0,ze())}")
FRAMES = """window.__frames = 0;
const ask = window.requestAnimationFrame.bind(window);
window.requestAnimationFrame = (f) => { window.__frames++; return ask(f); };"""


def serve(path: str, body: bytes, status: int = 200, headers=(), method: str = "GET") -> tuple[dict, bytes]:
    """The middleware around an app that answers `body` in two chunks -> (start message, body sent)."""

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(body)).encode()), *headers]})
        await send({"type": "http.response.body", "body": body[:10], "more_body": True})
        await send({"type": "http.response.body", "body": body[10:]})

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path}
    asyncio.run(ProgressTimerFix(app)(scope, None, send))
    return sent[0], b"".join(m.get("body", b"") for m in sent[1:])


def test_the_tracker_script_is_served_with_its_loop_stopping():
    start, body = serve("/assets/statustracker-DQF-KcRT.js", TRACKER)
    assert body == TRACKER.replace(LOOP, FIXED) and body != TRACKER
    assert dict(start["headers"])[b"content-length"] == str(len(body)).encode()
    assert start["status"] == 200


@pytest.mark.parametrize(("path", "status", "headers", "method"), [
    ("/assets/index-DphvyggB.js", 200, (), "GET"),  # another script
    ("/assets/statustracker-DQF-KcRT.js", 304, (), "GET"),  # not modified: no body
    ("/assets/statustracker-DQF-KcRT.js", 200, ((b"content-encoding", b"gzip"),), "GET"),
    ("/assets/statustracker-DQF-KcRT.js", 200, (), "HEAD"),
])
def test_other_answers_pass_unchanged(path, status, headers, method):
    start, body = serve(path, TRACKER, status, headers, method)
    assert body == TRACKER and start["status"] == status


def test_another_gradios_script_is_served_unchanged_with_a_warning(caplog):
    other = b"function ze(){requestAnimationFrame(()=>{t=performance.now(),running&&ze()})}"
    with caplog.at_level(logging.WARNING, logger="sam.app.progress_timer"):
        _, body = serve("/assets/statustracker-0000.js", other)
    assert body == other and "served unchanged" in caplog.text


def test_the_pinned_gradios_tracker_script_holds_the_loop_once():
    scripts = list((Path(gradio.__file__).parent / "templates" / "frontend" / "assets").glob("statustracker-*.js"))
    assert len(scripts) == 1
    text = scripts[0].read_bytes()
    assert text.count(LOOP) == 1 and b"function ze(){me(()=>{F(Pe," in text  # the loop, as described
    assert b"y()===`hidden`" in text  # y is the show_progress prop (the tracker hides itself with it)
    assert fixed(text).count(FIXED) == 1


app_url = app_fixture()


@pytest.mark.browser
def test_the_idle_page_asks_for_no_frames_and_progress_still_counts(browser, app_url):
    page = open_app(browser, app_url, viewport=(1200, 900))
    page.context.add_init_script(FRAMES)
    page.reload()
    page.wait_for_selector(".sam-file", state="attached")
    upload(page, REPO / "examples" / "coffee.jpg")
    counts = []  # frames asked for per second; Gradio's own transitions run for a few seconds after an upload
    for _ in range(12):
        before = page.evaluate("window.__frames")
        page.wait_for_timeout(1000)
        counts.append(page.evaluate("window.__frames") - before)
        if counts[-2:] == [0, 0]:
            break
    assert counts[-2:] == [0, 0], counts  # without the fix: ~60 a second, for as long as the page is open
    # A model switch shows Gradio's progress on the status line: its timer runs while the model loads.
    page.evaluate("window.__frames = 0")
    choose_model(page, "mobile-sam")
    page.wait_for_function("document.querySelector('#sam-status').textContent.includes('mobile-sam')")
    assert page.evaluate("window.__frames") > 0
    assert page.errors == []
    page.context.close()
