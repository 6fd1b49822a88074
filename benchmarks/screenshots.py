"""Screenshots of the page's main states, for docs/app.md: empty, image, candidates, objects, everything,
error and phone.

Starts `python app.py` against a loopback Hub serving tiny random checkpoints (as the tests do, so the masks
are arbitrary shapes), drives it in headless Chromium at 1280x900 (the phone at 390x844, touch) and writes
docs/images/page-STATE.png, each a palette PNG under 200 KB.

python benchmarks/screenshots.py [--out docs/images] [--url URL]
"""

import argparse
import io
import json
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.helpers.browser import (  # noqa: E402  (the loopback Hub and app launcher the tests use)
    CANVAS,
    DEBUG,
    act,
    app_on_hub,
    click,
    image_to_page,
    launch_chromium,
    open_app,
    open_phone,
    upload,
)
from tests.helpers.hub import Checkpoints  # noqa: E402

MAX_BYTES = 200_000
COFFEE = REPO / "examples" / "coffee.jpg"


def small_png(png: bytes, limit: int = MAX_BYTES) -> bytes:
    """A screenshot as a palette PNG under `limit` bytes: fewer colours first, then narrower."""
    shot = Image.open(io.BytesIO(png)).convert("RGB")
    for width in (shot.width, 1024, 900, 768, 640):
        scaled = shot if width >= shot.width else shot.resize((width, round(shot.height * width / shot.width)),
                                                              Image.Resampling.LANCZOS)
        for colors in (256, 128, 64):
            out = io.BytesIO()
            scaled.quantize(colors, dither=Image.Dither.NONE).save(out, format="PNG", optimize=True)
            if out.tell() <= limit:
                return out.getvalue()
    raise ValueError(f"no palette PNG of this screenshot fits in {limit} bytes")


def desktop_states(page, save: Callable[[str], None], tmp: Path) -> None:
    page.wait_for_function("document.querySelector('#sam-status').innerText.includes('sam-vit-base')")
    save("empty")
    upload(page, COFFEE)
    page.mouse.move(5, 5)
    save("image")
    click(page, 300, 200)
    save("candidates")
    page.fill(".sam-name", "cup")
    act(page, "add", lambda: page.click(".sam-add"))
    click(page, 120, 330)
    act(page, "add", lambda: page.click(".sam-add"))
    click(page, 470, 120)
    save("objects")
    act(page, "clear_all", lambda: page.click(".sam-clear-all"))
    page.click(".sam-everything")
    page.wait_for_function(f"{DEBUG}.state().everything !== null", timeout=300_000)
    x, y = page.evaluate(f"""(() => {{
        for (let y = 150; y < 400; y += 10) for (let x = 250; x < 600; x += 10)
            if ({DEBUG}.labelAt(x, y) >= 0) return [x, y];
        return [300, 200];
    }})()""")
    page.mouse.move(*image_to_page(page, x, y), steps=2)  # the mask under the cursor is highlighted
    page.wait_for_timeout(300)
    save("everything")
    wide = tmp / "panorama.png"  # too long and thin for the app (docs/limits.md)
    Image.new("RGB", (2000, 40), (90, 120, 150)).save(wide)
    page.set_input_files(".sam-file", str(wide))
    page.wait_for_function("document.querySelector('.sam-message').innerText.includes('long side')",
                           timeout=60_000)
    page.mouse.move(5, 5)
    save("error")


def phone_state(page, save: Callable[[str], None]) -> None:
    page.wait_for_function("document.querySelector('#sam-status').innerText.includes('sam-vit-base')")
    upload(page, COFFEE)
    page.tap(".sam-mode[data-mode=negative]")
    page.tap(".sam-mode[data-mode=positive]")
    act(page, "point", lambda: page.touchscreen.tap(*image_to_page(page, 300, 200)))
    page.evaluate("window.scrollTo(0, 0)")
    save("phone")


def run(url: str, out: Path, tmp: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    written = []

    def saver(page) -> Callable[[str], None]:
        def save(state: str) -> None:
            page.wait_for_selector(f"{CANVAS}[data-busy='0']")
            path = out / f"page-{state}.png"
            path.write_bytes(small_png(page.screenshot()))
            written.append(path)

        return save

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = open_app(browser, url, viewport=(1280, 900))
        desktop_states(page, saver(page), tmp)
        assert page.errors == [], page.errors
        phone = open_phone(browser, url)
        phone_state(phone, saver(phone))
        assert phone.errors == [], phone.errors
        browser.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--url", help="an app already running (default: start one on a loopback Hub)")
    args = parser.parse_args()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="screenshots-")))
        url = args.url
        if url is None:
            everything = {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
            url = stack.enter_context(app_on_hub(
                Checkpoints(tmp), tmp, ["--model", "sam-vit-base"],
                extra_env={"SAM_EVERYTHING": json.dumps(everything)},
            ))
        for path in run(url, args.out.resolve(), tmp):
            print(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: {path.stat().st_size // 1000} KB")


if __name__ == "__main__":
    main()
