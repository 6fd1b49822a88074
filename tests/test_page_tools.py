"""The page's tools as a visitor meets them: keys, the keyboard's cursor, candidate masks after refining,
objects (show, hide, opacity, rename, clear all), the hover checkbox and where messages appear.

Headless Chromium on `python app.py` with tiny random weights from a loopback Hub; drawn masks are compared
with Meta's predictor API on the same checkpoint.
"""

import io

import numpy as np
import pytest
from PIL import Image

from tests.helpers.browser import (
    DEBUG,
    REPO,
    Expected,
    act,
    app_fixture,
    assert_drawn,
    browser_fixture,  # noqa: F401  (a fixture)
    click,
    image_to_page,
    page_fixture,  # noqa: F401  (a fixture)
    served_default,
    state,
    upload,
)

pytestmark = pytest.mark.browser
COFFEE = str(REPO / "examples" / "coffee.jpg")
QUALITY = ("very good", "good", "fair", "poor")


app_url = app_fixture()


@pytest.fixture(scope="module")
def coffee(checkpoints):
    return Expected(served_default(checkpoints), COFFEE)


def press(page, kind: str, key: str) -> None:
    act(page, kind, lambda: page.keyboard.press(key))


def test_shortcuts_work_after_a_click_on_the_image(page):
    upload(page, COFFEE)
    click(page, 300, 200)
    click(page, 450, 100)
    press(page, "undo", "Control+z")
    assert len(state(page)["prompts"]) == 1
    selected = state(page)["selected"]
    other = (selected + 1) % 3
    page.keyboard.press(str(other + 1))
    page.wait_for_function(f"{DEBUG}.state().selected === {other}")
    page.keyboard.press("n")
    assert state(page)["mode"] == "negative"
    assert page.get_attribute(".sam-mode[data-mode=negative]", "aria-pressed") == "true"
    press(page, "clear", "Escape")
    assert state(page)["prompts"] == []
    click(page, 100, 300)
    assert state(page)["prompts"][0]["label"] == 0  # negative mode
    press(page, "add", "Enter")
    assert [o["name"] for o in state(page)["objects"]] == ["object 1"]
    page.evaluate("document.activeElement.blur()")  # focus elsewhere, the pointer over the tool: still on
    page.mouse.move(*image_to_page(page, 50, 50))
    page.keyboard.press("n")
    assert state(page)["mode"] == "positive"
    keys = page.inner_text(".sam-keys")
    for key in ("Ctrl+Z", "Esc", "Enter", "1", "2", "3", "n", "Space"):
        assert key in keys


def test_a_point_can_be_placed_with_the_keyboard_alone(page):
    upload(page, COFFEE)
    stage = page.locator(".sam-stage")
    assert stage.get_attribute("role") == "application" and stage.get_attribute("aria-label")
    page.locator(".sam-everything").focus()
    page.keyboard.press("Tab")  # the image is next in the tab order after the toolbar
    assert page.evaluate("document.activeElement.classList.contains('sam-stage')")
    for key in ("ArrowRight",) * 3 + ("ArrowDown",) * 2:
        page.keyboard.press(key)
    assert state(page)["cursor"] == {"x": 318, "y": 212}  # from the centre, in steps of 1% of the long side
    press(page, "point", "Space")
    assert state(page)["prompts"] == [{"kind": "point", "coords": [318, 212], "label": 1}]
    assert page.inner_text(".sam-message") == "Added a positive point at 318, 212."
    page.keyboard.press("Shift+ArrowLeft")
    assert state(page)["cursor"] == {"x": 258, "y": 212}


def test_candidates_stay_offered_after_refining_and_quality_is_in_words(page, coffee):
    upload(page, COFFEE)
    click(page, 300, 200)
    cands = page.locator(".sam-cand")
    assert cands.count() == 3
    labels = [cands.nth(i).inner_text() for i in range(3)]
    assert all(any(word in label for word in QUALITY) for label in labels) and "IoU" not in " ".join(labels)
    pressed = [cands.nth(i).get_attribute("aria-pressed") for i in range(3)]
    first = state(page)["selected"]
    assert pressed == ["true" if i == first else "false" for i in range(3)] and labels[first].startswith("✓")
    assert "sam-vit-base" in page.inner_text(".sam-mask-note")  # the model that answered

    click(page, 450, 100, button="right")  # refines the chosen mask: one mask now, the three still offered
    s = state(page)
    assert len(s["scores"]) == 1 and len(s["first"]) == 3 and s["firstSelected"] == first
    assert cands.count() == 3 and "refined by 2 prompts" in page.inner_text(".sam-mask-note")
    other = (first + 1) % 3
    act(page, "choose_first", lambda: cands.nth(other).click())
    s = state(page)
    assert s["firstSelected"] == other and len(s["prompts"]) == 2
    assert cands.nth(other).get_attribute("aria-pressed") == "true"
    _, _, low_res = coffee.predict(s["prompts"][:1])
    masks, _, _ = coffee.predict(s["prompts"], mask_input=low_res[other][None])
    assert_drawn(page, "candidate", masks[0])  # the later prompt now refines the other first mask


def inside(page, which, others=(), step=10) -> tuple[float, float]:
    """An image pixel covered by mask layer `which` and by none of `others`."""
    found = page.evaluate(
        f"""([which, others]) => {{
            const d = {DEBUG};
            for (let y = 5; y < 400; y += {step}) for (let x = 5; x < 600; x += {step}) {{
                if (d.maskAt(which, x, y) && !others.some((o) => d.maskAt(o, x, y))) return [x + 0.5, y + 0.5];
            }}
            return null;
        }}""",
        [which, list(others)],
    )
    assert found, f"no pixel of {which} outside {others}"
    return found


def test_objects_can_be_hidden_faded_renamed_and_cleared(page):
    upload(page, COFFEE)
    for x, y in ((300, 200), (100, 300)):
        click(page, x, y)
        act(page, "add", lambda: page.click(".sam-add"))
    assert page.locator(".sam-objects li").count() == 2
    x, y = inside(page, 0, [1])
    alpha = page.evaluate(f"{DEBUG}.pixelAt({x}, {y})")[3]
    assert alpha > 0
    page.locator(".sam-show").first.click()  # hide
    assert page.evaluate(f"{DEBUG}.pixelAt({x}, {y})")[3] == 0 and state(page)["objects"][0]["hidden"]
    assert page.locator(".sam-show").first.inner_text() == "Show"
    page.locator(".sam-show").first.click()
    page.locator(".sam-opacity").first.fill("90")
    assert state(page)["objects"][0]["opacity"] == 90
    assert page.evaluate(f"{DEBUG}.pixelAt({x}, {y})")[3] > alpha  # more opaque

    name = page.locator(".sam-obj-name").first
    name.fill("mug")
    act(page, "rename", lambda: name.press("Enter"))
    assert [o["name"] for o in state(page)["objects"]] == ["mug", "object 2"]
    assert page.inner_text(".sam-message") == "Renamed to mug."

    click(page, 500, 300)
    act(page, "clear", lambda: page.click(".sam-clear"))  # Clear prompts keeps the objects
    assert state(page)["prompts"] == [] and len(state(page)["objects"]) == 2
    act(page, "clear_all", lambda: page.click(".sam-clear-all"))
    assert state(page)["objects"] == [] and page.locator(".sam-objects li").count() == 0
    assert page.locator(".sam-objects-none").is_visible()


def test_the_hover_checkbox_looks_different_ticked_and_unticked(page):
    box = page.locator(".sam-hover-toggle")

    def pixels() -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(box.screenshot())).convert("RGB"), dtype=float)

    ticked = pixels()
    page.uncheck(".sam-hover-toggle")
    unticked = pixels()
    assert ticked.shape == unticked.shape and box.bounding_box()["height"] >= 18
    assert np.abs(ticked - unticked).mean() > 30  # not a colour shade: a different picture


def test_messages_are_shown_beside_the_toolbar_even_for_a_tall_image(page, tmp_path):
    tall = tmp_path / "tall.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1600, 600, 3), dtype=np.uint8)).save(tall)
    upload(page, tall)
    page.click(".sam-add")  # nothing to add yet
    page.wait_for_function(f"{DEBUG}.state().error")
    message = page.locator(".sam-message").bounding_box()
    toolbar = page.locator(".sam-toolbar").bounding_box()
    stage = page.locator(".sam-stage").bounding_box()
    assert message["y"] >= 0 and message["y"] + message["height"] <= 900
    assert message["y"] + message["height"] <= stage["y"] + 1  # above the image, in the toolbar's block
    assert toolbar["y"] <= message["y"] and stage["y"] + stage["height"] <= 900  # the whole image in view
    wide = tmp_path / "wide.png"  # too long and thin for the server (see docs/limits.md)
    Image.new("RGB", (2000, 40), (90, 120, 150)).save(wide)
    page.set_input_files(".sam-file", str(wide))
    page.wait_for_function("document.querySelector('.sam-message').innerText.includes('long side')", timeout=60_000)
    assert state(page)["error"] and state(page)["job"] is None and state(page)["height"] == 1600  # still the tall one
    box = page.locator(".sam-message").bounding_box()
    assert box["y"] >= 0 and box["y"] + box["height"] <= 900


def test_candidate_thumbnails_show_the_image_they_were_made_on(page, tmp_path):
    """The thumbnails draw a small copy of the image made once per image (panel.js, thumbBase): a new image
    gets new thumbnails, not the previous image's copy."""
    means = []
    for name, color in (("red.png", (220, 30, 30)), ("blue.png", (30, 30, 220))):
        path = tmp_path / name
        Image.new("RGB", (320, 240), color).save(path)
        upload(page, path)
        click(page, 160, 120)
        pixels = "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"
        canvases = "[...document.querySelectorAll('.sam-cand canvas')]"
        page.wait_for_function(f"(cs => cs.length === 3 && cs.every(c => ({pixels})(c)[7] === 255))({canvases})",
                               polling=50)  # painted (the other two candidates' masks come just after)
        thumbs = page.evaluate(f"{canvases}.map(c => [c.width, c.height, ({pixels})(c)])")
        assert len(thumbs) == 3 and all((w, h) == (85, 64) for w, h, _ in thumbs)  # 320x240 at 64 px tall
        rgba = np.array([px for _, _, px in thumbs], dtype=float).reshape(3, -1, 4)
        assert (rgba[..., 3] == 255).all()  # the image fills each thumbnail
        means.append(rgba[..., :3].mean(axis=(0, 1)))
    # under any mask (drawn at 0.6 opacity) 40% of the image's colour shows through
    assert means[0][0] - means[0][2] > 50 and means[1][2] - means[1][0] > 50, means
