"""The page's layout on a wide screen and on a phone, and an accessibility audit (axe-core) in both themes.

Headless Chromium on `python app.py` with tiny random weights from a loopback Hub.
"""

import pytest

from tests.helpers.browser import (
    DEBUG,
    REPO,
    act,
    app_fixture,
    axe_violations,
    browser_fixture,  # noqa: F401  (a fixture)
    click,
    image_to_page,
    open_app,
    open_phone,
    state,
    upload,
)

pytestmark = pytest.mark.browser
COFFEE = str(REPO / "examples" / "coffee.jpg")


app_url = app_fixture()


def in_view(page, selector: str, height: int) -> bool:
    box = page.locator(selector).first.bounding_box()
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= height


def test_image_toolbar_objects_export_and_examples_in_one_wide_viewport(browser, app_url, tmp_path):
    from PIL import Image

    large = tmp_path / "large.png"
    Image.open(COFFEE).resize((1800, 1200)).save(large)
    page = open_app(browser, app_url, viewport=(1280, 900))
    assert page.locator("#sam-zip").is_hidden()  # no empty file box before there is a zip
    upload(page, large)
    click(page, 900, 600)
    act(page, "add", lambda: page.click(".sam-add"))
    click(page, 300, 300)
    for selector in (".sam-toolbar", ".sam-stage", ".sam-candidates", ".sam-objects li", "#sam-export",
                     "#sam-examples button.thumbnail-item"):
        assert in_view(page, selector, 900), selector
    assert page.evaluate("window.scrollY") == 0
    stage = page.locator(".sam-stage").bounding_box()
    panel = page.locator(".sam-panel").bounding_box()
    assert panel["x"] >= stage["x"] + stage["width"]  # objects beside the image
    page.click("#sam-export")
    page.locator("#sam-zip a").first.wait_for(timeout=60_000)
    assert in_view(page, "#sam-zip a", 900)
    page.locator("#sam-examples button.thumbnail-item").nth(1).click()  # chelsea.jpg
    page.wait_for_function(f"{DEBUG}.state().width === 451", timeout=60_000)
    assert in_view(page, ".sam-stage", 900) and page.evaluate("window.scrollY") == 0
    assert page.errors == []
    page.context.close()


def touch_drag(page, start: tuple[float, float], end: tuple[float, float], steps: int = 5) -> None:
    cdp = page.context.new_cdp_session(page)
    (x0, y0), (x1, y1) = start, end
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x0, "y": y0}]})
    for i in range(1, steps + 1):
        x, y = x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def test_phone_layout_touch_targets_and_touch_modes(browser, app_url):
    page = open_phone(browser, app_url)
    page.wait_for_function("document.querySelector('#sam-status').innerText.includes('sam-vit-base')")
    picker = page.locator("#sam-model").bounding_box()
    status = page.locator("#sam-status")
    box = status.bounding_box()
    line = float(status.evaluate("(e) => parseFloat(getComputedStyle(e.querySelector('p') || e).lineHeight)"))
    assert box["y"] >= picker["y"] + picker["height"] - 1  # below the picker, not squeezed beside it
    assert box["height"] <= 3.5 * line and box["width"] >= 300
    small = page.evaluate("""() => [...document.querySelectorAll(
            '.sam-main button, .sam-panel button, .sam-main label.sam-check, .sam-panel input')]
        .filter((e) => e.offsetParent)
        .map((e) => [e.className, e.getBoundingClientRect().width, e.getBoundingClientRect().height])
        .filter(([, w, h]) => w < 44 || h < 44)""")
    assert small == []  # 44 px touch targets
    hint = page.inner_text(".sam-hint")
    assert "Tap" in hint and "right click" not in hint.lower()
    assert page.locator(".sam-keys").is_hidden()

    upload(page, COFFEE)
    page.locator("#sam-examples button.thumbnail-item").nth(1).tap()  # far below the image on a phone
    page.wait_for_function(f"{DEBUG}.state().width === 451 && {DEBUG}.state().job === null", timeout=60_000)
    top = page.locator(".sam-stage").bounding_box()["y"]
    assert 0 <= top < 844 / 2  # the new image is in view

    page.tap(".sam-mode[data-mode=negative]")
    act(page, "point", lambda: page.touchscreen.tap(*image_to_page(page, 200, 150)))
    assert state(page)["prompts"] == [{"kind": "point", "coords": [200, 150], "label": 0}]
    page.tap(".sam-mode[data-mode=box]")
    act(page, "box", lambda: touch_drag(page, image_to_page(page, 100, 100), image_to_page(page, 400, 250)))
    box_prompt = state(page)["prompts"][-1]
    assert box_prompt["kind"] == "box" and box_prompt["coords"] == pytest.approx([100, 100, 400, 250], abs=2)
    assert page.errors == []
    page.context.close()


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_accessibility_audit_with_image_candidates_and_objects(browser, app_url, theme):
    page = open_app(browser, f"{app_url}/?__theme={theme}", viewport=(1280, 900))
    assert page.evaluate("document.body.classList.contains('dark')") == (theme == "dark")
    upload(page, COFFEE)
    click(page, 300, 200)
    page.fill(".sam-name", "cup")
    act(page, "add", lambda: page.click(".sam-add"))
    click(page, 100, 300)
    assert page.locator(".sam-cand").count() == 3 and page.locator(".sam-objects li").count() == 1
    pressed = page.locator(".sam-cand[aria-pressed=true]")  # the chosen mask, not by its colour alone
    assert pressed.count() == 1 and pressed.inner_text().startswith("✓")
    violations = axe_violations(page)
    act(page, "clear", lambda: page.click(".sam-clear"))
    page.click(".sam-add")  # nothing to add: an error message, audited too
    page.wait_for_function(f"{DEBUG}.state().error")
    violations += axe_violations(page, context=".sam-toolbar")
    assert violations == [], "\n".join(f"{v['impact']} {v['id']}: {v['help']} {v['nodes'][:3]}" for v in violations)
    # What the audit does not check: the names and states a screen reader announces.
    assert page.get_attribute("#sam-status", "role") == "status"
    assert page.get_attribute(".sam-message", "role") == "status"
    assert page.locator(".sam-stage").get_attribute("aria-label")
    assert page.get_by_label("Object name").count() == 1
    assert page.errors == []
    page.context.close()
