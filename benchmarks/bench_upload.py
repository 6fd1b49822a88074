"""Upload -> ready in the page against the image encoder alone, for photos of several sizes.

Starts `python app.py` (sam-vit-base by default, random weights of the real size from a loopback Hub),
opens it in headless Chromium and uploads JPEG photos the way a visitor does (the canvas's file picker),
timed by the page itself from choosing the file to the canvas being ready for clicks: reading and sending
the file, decoding it (EXIF orientation included), the resize to 1024, the embedding and the answer. Each
upload is a new image (no embedding cache hit). Right after each upload, with the app and the page idle,
this process times the image encoder alone on a 1024x1024 input, in the same precision and threads as the
app; the ratio upload / encoder, taken per upload and its neighbouring encoder run so that a shared host's
changes of speed fall on both, is the cost of everything around the model.

python benchmarks/bench_upload.py [--precision float32] [--rounds 3]
"""

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_name  # noqa: E402
from sam.allocator import reuse_freed_memory  # noqa: E402
from sam.weights import load_model  # noqa: E402
from tests.helpers.browser import DEBUG, app_on_hub, launch_chromium, open_app, upload  # noqa: E402
from tests.helpers.hub import Checkpoints  # noqa: E402

UPLOADS = f"{DEBUG}.timings().filter(t => t.type === 'image')"  # the page's timings of its uploads
SIZES = {"1280x853": (1280, 853), "1920x1080": (1920, 1080), "4032x3024, EXIF rotated": (4032, 3024)}
REPOS = {"sam-vit-base": ("facebook/sam-vit-base", "vit_b")}  # model -> (Hub repo served, random checkpoint size)


def photo(size: tuple[int, int], seed: int, rotated: bool) -> bytes:
    """A JPEG (quality 90) of smooth colour fields and noise, so it compresses like a photo (~0.3 byte/pixel)."""
    w, h = size
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 64 + 1, w // 64 + 1, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.int16)
    pixels = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    exif = Image.Exif()
    if rotated:
        exif[0x0112] = 6  # orientation: the phone was held upright
    Image.fromarray(pixels).save(out, "JPEG", quality=90, exif=exif)
    return out.getvalue()


Pairs = dict[str, list[tuple[float, float]]]


def page_uploads(url: str, folder: Path, rounds: int, encoder: Callable[[], float]) -> Pairs:
    """Each size's (upload -> ready, the encoder alone right after it) in seconds, `rounds` of each."""
    from playwright.sync_api import sync_playwright

    times: Pairs = {name: [] for name in SIZES}
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = open_app(browser, url)
        upload(page, REPO / "examples" / "coffee.jpg", timeout_ms=600_000)  # warm: the model is loaded
        for r in range(rounds):
            for i, (name, size) in enumerate(SIZES.items()):
                path = folder / f"photo-{r}-{i}.jpg"
                path.write_bytes(photo(size, seed=100 * r + i, rotated="EXIF" in name))
                done = page.evaluate(f"{UPLOADS}.length")
                page.set_input_files(".sam-file", str(path))
                # The page times itself (file chosen -> ready); waiting polls slowly, as fast polling takes
                # CPU from the app's embedding on a 2-core machine (about 10% of it at every 20 ms).
                page.wait_for_function(f"{UPLOADS}.length > {done}", timeout=600_000, polling=250)
                shown = "document.querySelector(`.sam-canvas img[alt='The image to segment: ${n}']`)"
                assert page.evaluate(f"(n) => !!{shown} && {DEBUG}.state().ready", path.name)
                ready = page.evaluate(f"{UPLOADS}.pop().ms") / 1000
                times[name].append((ready, encoder()))
                mb = path.stat().st_size / 1e6
                print(f"{name}: {ready:.2f} s ({mb:.1f} MB), encoder alone {times[name][-1][1]:.2f} s", file=sys.stderr)
        assert page.errors == [], page.errors
        browser.close()
    return times


def encoder(checkpoint: Path, precision: str) -> Callable[[], float]:
    """A function timing one run of the image encoder on a 1024x1024 input (after one warm-up run now)."""
    model = load_model(str(checkpoint), dtype=precision)
    x = torch.randn(1, 3, model.img_size, model.img_size)

    @torch.inference_mode()
    def run() -> float:
        start = time.perf_counter()
        model.encode(x)
        return time.perf_counter() - start

    run()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam-vit-base", choices=list(REPOS))
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=3, help="uploads per size")
    args = parser.parse_args()
    reuse_freed_memory()
    load = [os.getloadavg()[0]]
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-upload-")))
        checkpoints = Checkpoints(tmp / "checkpoints")
        repo, config = REPOS[args.model]
        weights = checkpoints.transformers(config, 0)
        url = stack.enter_context(app_on_hub(checkpoints, tmp, ["--model", args.model], overrides={repo: weights},
                                             extra_env={"SAM_PRECISION": args.precision}))
        uploads = page_uploads(url, tmp, args.rounds, encoder(weights, args.precision))
        load.append(os.getloadavg()[0])
    rows = {}
    for name, pairs in uploads.items():
        ready, alone = [r for r, _ in pairs], [e for _, e in pairs]
        rows[name] = {"upload_to_ready_s": round(statistics.median(ready), 2),
                      "encoder_s": round(statistics.median(alone), 2),
                      "ratio": round(statistics.median(r / e for r, e in pairs), 2),
                      "runs": [[round(r, 2), round(e, 2)] for r, e in pairs]}
    machine = (f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.model} {args.precision}, "
               f"load average {' / '.join(f'{x:.1f}' for x in load)}")
    print(json.dumps({"machine": machine, "uploads": rows}, indent=1))
    print(f"\n{machine}; ratio: the median of each upload over the encoder alone (1024x1024) right after it\n")
    print("| photo | upload -> ready (median) | encoder alone (median) | ratio |\n| --- | --- | --- | --- |")
    for name, row in rows.items():
        print(f"| {name} | {row['upload_to_ready_s']:.2f} s | {row['encoder_s']:.2f} s | {row['ratio']:.2f}x |")


if __name__ == "__main__":
    main()
