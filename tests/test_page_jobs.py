"""The page while something long runs: an image loading, segment everything (progress, Cancel, its mode).

Headless Chromium on `python app.py` with tiny random weights from a loopback Hub. Requests are held with
Playwright's routing to keep a load running while the test acts.
"""

import json

import pytest

from tests.helpers.browser import (
    CANVAS,
    DEBUG,
    REPO,
    Held,
    act,
    app_fixture,
    browser_fixture,  # noqa: F401  (a fixture)
    click,
    image_to_page,
    page_fixture,  # noqa: F401  (a fixture)
    state,
    upload,
)

pytestmark = pytest.mark.browser
COFFEE = str(REPO / "examples" / "coffee.jpg")
# 64 points in 32 batches: a run of seconds, with progress between batches.
EVERYTHING = {"points_per_side": 8, "points_per_batch": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


app_url = app_fixture(SAM_EVERYTHING=json.dumps(EVERYTHING))


def watch(page) -> None:
    """Keep the canvas's requests, as sent, in page.sent."""
    page.sent = []
    page.on("request", lambda r: page.sent.append(r.post_data) if "component_server" in r.url else None)


def sent(page, kind: str) -> int:
    return sum(1 for body in page.sent if body and f'"type":"{kind}"' in body.replace(" ", ""))


def message(page) -> str:
    return page.inner_text(".sam-message")


def test_an_example_loading_shows_a_busy_canvas_and_refuses_clicks(page):
    watch(page)
    upload(page, COFFEE)
    click(page, 300, 200)
    points = sent(page, "point")
    held = Held(page, "**/gradio_api/queue/join*")
    page.locator("#sam-examples button.thumbnail-item").nth(1).click()  # chelsea.jpg
    held.wait()
    busy = page.locator(".sam-busy")
    assert busy.is_visible() and "Opening the example" in busy.inner_text()
    x, y = image_to_page(page, 300, 200)
    page.mouse.click(x, y)  # on the old image, at the old image's coordinates
    assert "still loading" in message(page) and state(page)["error"]
    page.wait_for_timeout(1200)
    assert "1 s" in busy.inner_text() or "2 s" in busy.inner_text()  # the time it has taken so far
    held.release()
    page.wait_for_function(f"{DEBUG}.state().width === 451", timeout=60_000)
    page.wait_for_selector(".sam-busy", state="hidden")
    assert sent(page, "point") == points  # the click was never sent
    s = state(page)
    assert s["prompts"] == [] and s["scores"] == [] and s["job"] is None
    click(page, 200, 150)  # the new image takes clicks
    assert len(state(page)["prompts"]) == 1


def test_an_upload_loading_refuses_clicks(page):
    watch(page)
    upload(page, COFFEE)
    held = Held(page, "**/gradio_api/upload*")
    page.set_input_files(".sam-file", str(REPO / "examples" / "chelsea.jpg"))
    held.wait()
    assert "Uploading" in page.inner_text(".sam-busy")
    page.mouse.click(*image_to_page(page, 100, 100))
    assert "still loading" in message(page)
    held.release()
    page.wait_for_selector(f"{CANVAS}[data-ready='1'][data-job='']", timeout=60_000)
    assert sent(page, "point") == 0 and state(page)["width"] == 451


def test_a_request_for_the_previous_image_is_dropped(page):
    """A click already on its way when another image opens is answered as stale and never drawn."""
    upload(page, COFFEE)
    held = Held(page, "**/gradio_api/component_server**")
    page.mouse.click(*image_to_page(page, 300, 200))  # sent, but held on its way
    held.wait()
    page.locator("#sam-examples button.thumbnail-item").nth(1).click()
    page.wait_for_function(f"{DEBUG}.state().width === 451 && {DEBUG}.state().job === null", timeout=60_000)
    held.release()  # now the server gets a click meant for coffee.jpg
    page.wait_for_function(f"!{DEBUG}.state().busy", timeout=30_000)
    assert state(page)["prompts"] == [] and state(page)["scores"] == []


def test_everything_shows_progress_refuses_clicks_and_cancels(page):
    watch(page)
    upload(page, COFFEE)
    click(page, 300, 200)
    page.click(".sam-everything")
    busy = page.locator(".sam-busy")
    assert busy.is_visible() and "Segmenting everything" in busy.inner_text()
    page.mouse.click(*image_to_page(page, 100, 100))
    assert "segment everything is running" in message(page)
    page.click(".sam-cancel")
    page.wait_for_selector(".sam-busy", state="hidden", timeout=60_000)
    assert "cancelled" in message(page)
    s = state(page)
    assert s["everything"] is None and len(s["prompts"]) == 1  # nothing changed
    assert sent(page, "point") == 1
    click(page, 100, 100)  # clicks work again
    assert len(state(page)["prompts"]) == 2

    page.evaluate("""() => {  // what the canvas says of a run, each time it changes
        window.said = [];
        const time = document.querySelector('.sam-busy-time');
        new MutationObserver(() => window.said.push(time.textContent)).observe(time, { childList: true });
    }""")
    page.click(".sam-everything")  # a new run (the cancelled one is over) finishes
    page.wait_for_function(f"{DEBUG}.state().everything !== null", timeout=120_000)
    assert state(page)["job"] is None and busy.is_hidden()
    said = page.evaluate("window.said")
    assert any(" of 64 points · " in text for text in said), said


def test_everything_mode_highlights_the_mask_under_the_cursor_and_says_what_a_click_did(page):
    upload(page, COFFEE)
    page.click(".sam-everything")
    page.wait_for_function(f"{DEBUG}.state().everything !== null", timeout=120_000)
    count = state(page)["everything"]["count"]
    assert message(page).startswith(f"{count} mask{'s' if count != 1 else ''} from sam-vit-base: click one")
    # A pixel on a mask and one on none (random weights cover part of the image).
    on, off = page.evaluate(f"""(() => {{
        const d = {DEBUG}; let on = null, off = null;
        for (let y = 5; y < 400; y += 10) for (let x = 5; x < 600; x += 10) {{
            if (d.labelAt(x, y) >= 0) on = on || [x, y]; else off = off || [x, y];
        }}
        return [on, off];
    }})()""")
    assert on and off
    before = page.evaluate(f"{DEBUG}.pixelAt({on[0]}, {on[1]})")
    page.mouse.move(*image_to_page(page, *on), steps=2)
    index = page.evaluate(f"{DEBUG}.labelAt({on[0]}, {on[1]})")
    page.wait_for_function(f"{DEBUG}.state().everything.under === {index}")
    assert page.evaluate(f"{DEBUG}.pixelAt({on[0]}, {on[1]})") != before  # highlighted
    page.mouse.click(*image_to_page(page, *off))
    assert "No mask there" in message(page)
    act(page, "pick", lambda: page.mouse.click(*image_to_page(page, *on)))
    assert message(page) == "Added object 1."
    page.mouse.move(*image_to_page(page, *off), steps=2)  # no highlight: the object as it is drawn
    page.wait_for_function(f"{DEBUG}.state().everything.under === -1")
    picked = page.evaluate(f"{DEBUG}.pixelAt({on[0]}, {on[1]})")
    assert picked != before  # the picked mask is drawn as an object now, not as an everything mask
    page.mouse.click(*image_to_page(page, *on))
    assert message(page) == "That mask is already object 1."
    assert len(state(page)["objects"]) == 1
