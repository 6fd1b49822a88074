"""The app in headless Chromium: upload, click, negative points, boxes, hover, undo, objects, zip, sessions.

The app runs as `python app.py --model sam-vit-base` against a loopback Hub serving tiny random
checkpoints under the published repo ids (one test uses a full-size random ViT-B). Random weights give
arbitrary masks, so every drawn mask is compared with what `SamPredictor.predict` (Meta's API) returns
for the same prompts on the same checkpoint: the page must draw exactly that mask.
"""

import base64
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam.app.service import read_image
from sam.automatic import SamAutomaticMaskGenerator
from tests.helpers.browser import (
    CANVAS,
    DEBUG,
    REPO,
    Expected,
    act,
    app_fixture,
    app_on_hub,
    assert_drawn,
    browser_fixture,  # noqa: F401  (a fixture)
    click,
    image_to_page,
    mask_info,
    open_app,
    page_fixture,  # noqa: F401  (a fixture)
    run_app,
    served_default,
    state,
    upload,
)
from tests.helpers.hub import hub_env

pytestmark = pytest.mark.browser
COFFEE = str(REPO / "examples" / "coffee.jpg")
CHELSEA = str(REPO / "examples" / "chelsea.jpg")


# "Everything" on a coarse grid, and with thresholds random weights pass (Meta's defaults: 32, 0.88, 0.95).
EVERYTHING = {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


app_url = app_fixture(SAM_EVERYTHING=json.dumps(EVERYTHING))


@pytest.fixture(scope="module")
def coffee(checkpoints):
    # published() gives facebook/sam-vit-base the tiny transformers checkpoint of seed 0.
    return Expected(served_default(checkpoints), COFFEE)


def test_click_draws_the_predicted_mask_and_candidates(page, coffee):
    upload(page, COFFEE)
    assert "sam-vit-base" in page.inner_text("#sam-status")
    click(page, 300, 200)
    s = state(page)
    assert s["prompts"] == [{"kind": "point", "coords": [300, 200], "label": 1}]
    masks, scores, _ = coffee.predict(s["prompts"])
    assert s["scores"] == pytest.approx(scores.tolist(), abs=1e-3)
    assert s["selected"] == int(np.argmax(scores))
    assert_drawn(page, "candidate", masks[s["selected"]])
    other = (s["selected"] + 1) % 3  # the other candidates are one click away, with no server round trip
    page.locator(".sam-cand").nth(other).click()
    assert state(page)["selected"] == other
    assert_drawn(page, "candidate", masks[other])


def test_negative_point_refines_with_previous_logits(page, coffee):
    upload(page, COFFEE)
    click(page, 300, 200)
    before = mask_info(page, "candidate")
    click(page, 450, 100, button="right")
    s = state(page)
    assert [p["label"] for p in s["prompts"]] == [1, 0]
    _, scores, low_res = coffee.predict(s["prompts"][:1])
    masks, _, _ = coffee.predict(s["prompts"], mask_input=low_res[np.argmax(scores)][None])
    assert_drawn(page, "candidate", masks[0])
    assert mask_info(page, "candidate")["count"] != before["count"]
    page.click(".sam-mode[data-mode=negative]")  # negative mode: a left click is negative too
    click(page, 100, 300)
    assert state(page)["prompts"][-1]["label"] == 0


def test_dragged_box_gives_the_predicted_box_mask(page, coffee):
    upload(page, COFFEE)
    x0, y0 = image_to_page(page, 200, 100)
    x1, y1 = image_to_page(page, 400, 300)

    def drag():
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=3)
        page.mouse.move(x1, y1, steps=3)
        page.mouse.up()

    act(page, "box", drag)
    s = state(page)
    assert len(s["prompts"]) == 1 and s["prompts"][0]["kind"] == "box"
    assert s["prompts"][0]["coords"] == pytest.approx([200, 100, 400, 300], abs=1.5)
    masks, _, _ = coffee.predict(s["prompts"])
    # Random weights put this mask anywhere: the app must draw what SAM predicts for the box (not clip it).
    assert_drawn(page, "candidate", masks[0])
    click(page, 300, 200)  # a point combines with the box on the same object
    assert [p["kind"] for p in state(page)["prompts"]] == ["box", "point"]


def test_hover_shows_a_preview_and_can_be_turned_off(page, coffee):
    upload(page, COFFEE)
    x, y = image_to_page(page, 150, 250)
    act(page, "hover", lambda: page.mouse.move(x, y, steps=2))
    page.wait_for_selector(f"{CANVAS}[data-hover='1']")
    hover = state(page)["hover"]
    masks, scores, _ = coffee.predict([{"kind": "point", "coords": [hover["x"], hover["y"]], "label": 1}])
    assert_drawn(page, "hover", masks[np.argmax(scores)])
    assert state(page)["prompts"] == []  # a preview does not change the object
    page.uncheck(".sam-hover-toggle")
    page.wait_for_selector(f"{CANVAS}[data-hover='0']")
    page.mouse.move(x + 30, y + 10, steps=2)
    page.wait_for_timeout(400)
    assert state(page)["hover"] is None


def test_undo_and_clear(page):
    upload(page, COFFEE)
    click(page, 300, 200)
    first = mask_info(page, "candidate")
    click(page, 450, 100, button="right")
    assert mask_info(page, "candidate") != first
    act(page, "undo", lambda: page.click(".sam-undo"))
    assert len(state(page)["prompts"]) == 1
    assert mask_info(page, "candidate") == first  # undo gives back exactly the earlier mask
    act(page, "clear", lambda: page.click(".sam-clear"))
    s = state(page)
    assert s["prompts"] == [] and s["scores"] == []
    assert page.evaluate(f"{DEBUG}.pixelAt(300.5, 200.5)")[3] == 0  # nothing drawn any more


def test_two_objects_and_the_zip(page, coffee):
    upload(page, COFFEE)
    click(page, 300, 200)
    first = coffee.predict(state(page)["prompts"])
    page.fill(".sam-name", "cup")
    act(page, "add", lambda: page.click(".sam-add"))
    click(page, 100, 300)  # the next click starts a new object
    s = state(page)
    assert len(s["prompts"]) == 1 and len(s["scores"]) == 3
    second = coffee.predict(s["prompts"])
    act(page, "add", lambda: page.click(".sam-add"))  # no name: "object 2"
    assert [o["name"] for o in state(page)["objects"]] == ["cup", "object 2"]
    assert page.locator(".sam-objects li").count() == 2
    expected = [masks[np.argmax(scores)] for masks, scores, _ in (first, second)]
    for i, mask in enumerate(expected):
        assert_drawn(page, i, mask)

    page.click("#sam-export")
    link = page.locator("#sam-zip a.download-link").first
    link.wait_for(timeout=60_000)
    with page.expect_download() as download:
        link.click()
    with open(download.value.path(), "rb") as f:
        check_zip(f.read(), expected, (400, 600))

    act(page, "delete", lambda: page.locator(".sam-del").first.click())
    assert [o["name"] for o in state(page)["objects"]] == ["object 2"]


def check_zip(data: bytes, masks: list[np.ndarray], size: tuple[int, int]) -> None:
    from pycocotools import mask as mask_utils

    h, w = size
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        coco = json.loads(zf.read("annotations.json"))
        assert [a["name"] for a in coco["annotations"]] == ["cup", "object 2"]
        for ann, mask in zip(coco["annotations"], masks, strict=True):
            rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
            np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), mask)
            assert ann["area"] == int(mask.sum())
        labels = zf.read("labels/coffee.txt").decode().splitlines()
        assert labels
        for line in labels:
            cls, *coords = line.split()
            assert int(cls) in (0, 1) and len(coords) >= 6 and len(coords) % 2 == 0
            assert all(0.0 <= float(c) <= 1.0 for c in coords)
        pngs = [n for n in names if n.startswith(("masks/", "cutouts/", "images/"))]
        assert len(pngs) == 5
        for name in pngs:
            with Image.open(io.BytesIO(zf.read(name))) as im:
                assert im.size == (w, h)
                if name.startswith("cutouts/"):
                    assert im.mode == "RGBA"


def test_everything_then_pick_a_mask(page, coffee):
    upload(page, COFFEE)
    act(page, "hover", lambda: page.mouse.move(*image_to_page(page, 20, 20), steps=2))  # warm: embedding in use
    page.click(".sam-everything")
    page.wait_for_function(f"{DEBUG}.state().everything !== null || {DEBUG}.state().error", timeout=120_000)
    generator = SamAutomaticMaskGenerator(coffee.predictor.model, **EVERYTHING)
    records = sorted(generator.generate(read_image(COFFEE)), key=lambda r: -r["predicted_iou"])
    shown = state(page)["everything"]
    assert (shown["count"], shown["shown"]) == (len(records), True) and records
    # The label image shows mask i where mask i is the smallest mask covering the pixel.
    first = records[0]["segmentation"]
    covering = [i for i, r in enumerate(records) if r["segmentation"][200, 300]]
    if covering:
        smallest = min(covering, key=lambda i: records[i]["area"])
        assert page.evaluate(f"{DEBUG}.labelAt(300.5, 200.5)") == smallest
    ys, xs = np.nonzero(first)
    x, y = int(xs[len(xs) // 2]), int(ys[len(ys) // 2])
    index = page.evaluate(f"{DEBUG}.labelAt({x + 0.5}, {y + 0.5})")
    assert records[index]["segmentation"][y, x]
    act(page, "pick", lambda: page.mouse.click(*image_to_page(page, x + 0.5, y + 0.5)))
    assert [o["name"] for o in state(page)["objects"]] == ["object 1"]
    assert_drawn(page, 0, records[index]["segmentation"])
    assert state(page)["prompts"] == []  # picking does not add points
    page.click(".sam-everything")  # hide: clicks add points again
    assert state(page)["everything"]["shown"] is False
    click(page, 300, 200)
    assert len(state(page)["prompts"]) == 1


def test_two_browser_contexts_never_share_prompts_or_masks(browser, app_url):
    a, b = open_app(browser, app_url), open_app(browser, app_url)
    try:
        upload(a, COFFEE)
        upload(b, CHELSEA)
        click(a, 300, 200)
        assert state(b)["prompts"] == [] and state(b)["scores"] == []
        ax, ay = image_to_page(a, 100, 100)
        bx, by = image_to_page(b, 50, 60)
        na, nb = sum(t["type"] == "point" for t in a.evaluate(f"{DEBUG}.timings()")), 0
        a.mouse.click(ax, ay, button="right")  # both at once
        b.mouse.click(bx, by)
        a.wait_for_function(f"{DEBUG}.timings().filter(t => t.type === 'point').length > {na}")
        b.wait_for_function(f"{DEBUG}.timings().filter(t => t.type === 'point').length > {nb}")
        sa, sb = state(a), state(b)
        assert [p["coords"] for p in sa["prompts"]] == [[300, 200], [100, 100]]
        assert [p["coords"] for p in sb["prompts"]] == [[50, 60]]
        assert (sa["width"], sa["height"]) == (600, 400) and (sb["width"], sb["height"]) == (451, 300)
        assert mask_info(b, "candidate")["width"] == 451
        assert a.errors == [] and b.errors == []
    finally:
        a.context.close()
        b.context.close()


DROP_OR_PASTE = """async ([kind, b64]) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const dt = new DataTransfer();
    dt.items.add(new File([bytes], 'chelsea.jpg', { type: 'image/jpeg' }));
    if (kind === 'drop') {
        document.querySelector('.sam-stage').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true }));
    } else {
        document.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true }));
    }
}"""


@pytest.mark.parametrize("kind", ["drop", "paste"])
def test_drop_and_paste_an_image(page, kind):
    data = base64.b64encode(Path(CHELSEA).read_bytes()).decode()
    page.evaluate(DROP_OR_PASTE, [kind, data])
    page.wait_for_selector(f"{CANVAS}[data-ready='1']", timeout=60_000)
    s = state(page)
    assert (s["width"], s["height"]) == (451, 300) and s["error"] is False
    click(page, 200, 150)
    assert len(state(page)["scores"]) == 3


def test_example_gallery_loads_an_image(page):
    page.locator("#sam-examples img").first.click()
    page.wait_for_selector(f"{CANVAS}[data-ready='1']", timeout=60_000)
    s = state(page)
    assert (s["width"], s["height"]) == (512, 512)  # astronaut.jpg, the first example
    assert page.evaluate("document.querySelector('.sam-img').naturalWidth") == 512
    click(page, 256, 200)
    assert len(state(page)["scores"]) == 3


def test_page_loads_and_explains_when_weights_cannot_be_fetched(browser, tmp_path):
    env = {**hub_env("http://127.0.0.1:9", tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}  # offline, empty cache
    with run_app([], env, tmp_path / "app.log") as url:
        page = open_app(browser, url)
        page.wait_for_function("document.querySelector('#sam-status').innerText.includes('Could not load')")
        text = page.inner_text("#sam-status")
        assert "sam-vit-base" in text and "HF_HUB_OFFLINE is set" in text and "--model" in text
        page.set_input_files(".sam-file", COFFEE)
        page.wait_for_function(f"{DEBUG}.state().error")
        assert page.errors == []
        page.context.close()


@pytest.mark.slow
def test_full_size_sam_vit_base_from_the_hub(browser, checkpoints, tmp_path):
    vit_b = checkpoints.transformers("vit_b", 0)
    with app_on_hub(checkpoints, tmp_path, [], overrides={"facebook/sam-vit-base": vit_b}) as url:
        page = open_app(browser, url)
        upload(page, CHELSEA, timeout_ms=300_000)
        status = page.inner_text("#sam-status")
        assert "sam-vit-base (facebook/sam-vit-base)" in status and "fp32" in status and "embedding" in status
        click(page, 200, 150)
        s = state(page)
        masks, scores, _ = Expected(vit_b, CHELSEA).predict(s["prompts"])
        assert_drawn(page, "candidate", masks[int(np.argmax(scores))])
        assert page.errors == []
        page.context.close()
