"""Images from strangers (sam.images): a corpus of broken, hostile and unusual files written by the tests.

Each bad file gets one ImageError with a message for people; each unusual but valid file gives the RGB
array a viewer shows. Then the same corpus through the app's server side and, in headless Chromium, the
page: a bad upload shows its message and the session's objects stay.
"""

import functools
import io
import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from sam import SamPredictor, images
from sam.app.settings import MAX_ASPECT, MAX_PIXELS
from sam.images import ImageError, frame_count, prepare

RED = (255, 0, 0)

# What the app reads from visitors: sam.images with the app's limits (sam/app/settings.py).
LIMITS = dict(max_pixels=MAX_PIXELS, max_aspect=MAX_ASPECT)
load_image = functools.partial(images.load_image, **LIMITS)
check_size = functools.partial(images.check_size, **LIMITS)


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def forged_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height 8-bit grey pixels, with one compressed row of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1), 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def photo(width: int = 96, height: int = 64) -> Image.Image:
    """A smooth RGB picture with a red square in the top-left corner (the 'visible feature')."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 90)], -1).astype(np.uint8)
    rgb[4:20, 4:20] = RED
    return Image.fromarray(rgb)


def bad_corpus() -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, what the message must say)."""
    jpeg = encode(photo(), "JPEG", quality=90)
    rng = np.random.default_rng(0)
    return {
        "empty.png": (b"", "empty"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "damaged or truncated"),
        "random.png": (rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), "not a JPEG, PNG, WebP"),
        "page.html": (b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>", "not a JPEG"),
        "drawing.svg": (
            b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64"/></svg>',
            "not a JPEG",
        ),
        "bomb.png": (forged_png(100_000, 100_000), "megapixels"),  # beyond Pillow's own bomb limit
        "large.png": (forged_png(8_000, 6_000), "8000x6000 .*at most 40 megapixels"),  # beyond ours only
        "strip.png": (encode(Image.new("L", (20_000, 1), 128), "PNG"), "20000x1: its long side may be at most 32"),
        "tall-strip.png": (encode(Image.new("RGB", (3, 200)), "PNG"), "3x200"),
        "icon.ico": (encode(photo(32, 32), "ICO"), "not a JPEG"),  # Pillow reads it; we do not try
        "pixmap.ppm": (encode(photo(), "PPM"), "not a JPEG"),
    }


@pytest.mark.parametrize("name", sorted(bad_corpus()))
def test_bad_files_get_one_clear_error(name, tmp_path):
    data, message = bad_corpus()[name]
    path = tmp_path / name
    path.write_bytes(data)
    for source in (path, str(path), data):
        with pytest.raises(ImageError, match=message) as err:
            load_image(source)
        assert isinstance(err.value, ValueError) and "Traceback" not in str(err.value)
        assert len(str(err.value)) < 300


@pytest.mark.parametrize("name", ["bomb.png", "large.png"])
def test_bombs_are_refused_before_any_pixel_is_decoded(name, monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageError, match="megapixels"):
        load_image(bad_corpus()[name][0])


def test_a_real_compressed_bomb(tmp_path):
    """49 MP of zeros: about 50 kB on disk, 147 MB once decoded as RGB."""
    data = encode(Image.new("L", (7_000, 7_000)), "PNG", optimize=True)
    assert len(data) < 200_000
    with pytest.raises(ImageError, match="7000x7000 \\(49 megapixels\\); at most 40"):
        load_image(data)


def test_size_limits():
    check_size(1, 1)
    check_size(MAX_ASPECT, 1)
    check_size(1, MAX_ASPECT)
    with pytest.raises(ImageError, match="33x1"):
        check_size(MAX_ASPECT + 1, 1)
    with pytest.raises(ImageError, match="empty"):
        check_size(0, 10)
    side = int(MAX_PIXELS**0.5)
    check_size(side, side)
    with pytest.raises(ImageError, match="megapixels"):
        check_size(side + 1, side + 1)
    with pytest.raises(ImageError, match="at most 0 megapixels"):
        load_image(np.zeros((4, 4), np.uint8), max_pixels=10)


def test_the_most_elongated_accepted_image_runs_through_the_model(tiny_predictor):
    image = np.full((20, 20 * MAX_ASPECT, 3), 100, np.uint8)
    tiny_predictor.set_image(load_image(image))
    masks, scores, _ = tiny_predictor.predict(np.array([[300, 10]]), np.array([1]))
    assert masks.shape == (3, 20, 640) and np.isfinite(scores).all()


def test_sixteen_bit_png_is_scaled_not_clipped():
    grey = (np.arange(64 * 16).reshape(16, 64) * 64).astype(np.uint16)  # 0 .. 65472
    out = load_image(cv2.imencode(".png", grey)[1].tobytes())
    assert out.dtype == np.uint8 and out.shape == (16, 64, 3)
    np.testing.assert_array_equal(out[..., 0], np.rint(grey / 257))
    assert (out[..., 0] == out[..., 2]).all() and out.max() == 255 and len(np.unique(out)) > 200
    rgb = np.stack([grey, 65535 - grey, grey // 2], -1)
    out = load_image(cv2.imencode(".png", rgb[..., ::-1])[1].tobytes())  # OpenCV writes BGR
    assert np.abs(out.astype(int) - np.rint(rgb / 257)).max() <= 1  # Pillow keeps the high byte
    np.testing.assert_array_equal(load_image(grey)[..., 1], np.rint(grey / 257))  # a uint16 array too


def test_greyscale_palette_and_one_bit():
    grey = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    out = load_image(encode(grey, "PNG"))
    assert (out[..., 0] == np.asarray(grey)).all() and (out[..., 0] == out[..., 2]).all()
    pal = photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    np.testing.assert_array_equal(load_image(encode(pal, "PNG")), np.asarray(pal.convert("RGB")))
    bits = load_image(encode(Image.new("1", (8, 8), 1), "PNG"))
    assert (bits == 255).all()


def test_transparency_is_composited_on_white():
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., :3] = (200, 40, 0)
    rgba[:4, :, 3] = 255  # opaque
    rgba[4:7, :, 3] = 128  # half
    rgba[7:, :, 3] = 0  # transparent, with a colour nobody sees
    for source in (encode(Image.fromarray(rgba), "PNG"), rgba, Image.fromarray(rgba)):
        out = load_image(source)
        assert tuple(out[0, 0]) == (200, 40, 0) and tuple(out[9, 0]) == (255, 255, 255)
        assert np.abs(out[5, 0].astype(int) - (227, 147, 127)).max() <= 1
    la = Image.fromarray(rgba[..., [0, 3]], "LA")
    assert tuple(load_image(encode(la, "PNG"))[9, 0]) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb():
    cmyk = photo().convert("CMYK")
    data = encode(cmyk, "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "CMYK"
    out = load_image(data)
    assert out.shape == (64, 96, 3)
    assert np.abs(out.astype(int) - np.asarray(photo()).astype(int)).mean() < 4


# EXIF orientation -> the transpose that turns the stored pixels into what viewers show.
ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def exif_photo(orientation: int) -> tuple[bytes, np.ndarray]:
    """(JPEG whose viewers show `photo()`, stored transposed with that EXIF orientation; what they show)."""
    upright = photo()
    stored = upright
    if orientation != 1:
        inverse = {
            Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90,
            Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270,
        }
        stored = upright.transpose(inverse.get(ORIENTATIONS[orientation], ORIENTATIONS[orientation]))
        assert np.array_equal(np.asarray(stored.transpose(ORIENTATIONS[orientation])), np.asarray(upright))
    exif = stored.getexif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif), np.asarray(upright)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    data, upright = exif_photo(orientation)
    out = load_image(data)
    assert out.shape == upright.shape
    assert np.abs(out.astype(int) - upright.astype(int)).mean() < 3
    assert np.abs(out[12, 12].astype(int) - RED).max() < 40  # the red square is where the viewer shows it


def test_invalid_or_damaged_exif_keeps_the_stored_pixels():
    stored = np.asarray(photo())
    for exif in (
        b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x09\x00\x00",
        b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff",
    ):  # orientation 9; a cut-off block
        out = load_image(encode(photo(), "JPEG", quality=95, exif=exif))
        assert out.shape == stored.shape and np.abs(out.astype(int) - stored.astype(int)).mean() < 3


def test_animated_gif_and_multipage_tiff_give_the_first_frame(tmp_path):
    first = Image.new("RGB", (40, 30), RED)
    later = [Image.new("RGB", (40, 30), (0, 0, 255)), Image.new("RGB", (40, 30), (0, 255, 0))]
    gif = encode(first, "GIF", save_all=True, append_images=later, duration=50, loop=0)
    tiff = encode(first, "TIFF", save_all=True, append_images=[Image.new("RGB", (80, 70), (0, 0, 255))])
    webp = encode(first, "WEBP", save_all=True, append_images=later, lossless=True)
    for data in (gif, tiff, webp):
        assert frame_count(data) >= 2
        out = load_image(data)
        assert out.shape == (30, 40, 3) and np.abs(out.astype(int) - RED).max() <= 2
    assert frame_count(encode(first, "PNG")) == 1 and frame_count(b"junk") == 1


def test_transparent_gif_frame():
    frame = Image.new("P", (20, 10), 0)
    frame.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    frame.paste(1, (0, 0, 10, 10))  # colour 1 (green) is the transparent one
    out = load_image(encode(frame, "GIF", transparency=1))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 15]) == RED


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "AVIF"])
def test_common_formats_load(fmt):
    out = load_image(encode(photo(), fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP", "AVIF") else {})))
    assert out.shape == (64, 96, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert np.abs(out.astype(int) - np.asarray(photo()).astype(int)).mean() < 6


def test_arrays_and_pil_images():
    rgb = np.asarray(photo())
    np.testing.assert_array_equal(load_image(rgb), rgb)
    np.testing.assert_array_equal(load_image(photo()), rgb)
    np.testing.assert_array_equal(load_image(rgb[..., :1])[..., 2], rgb[..., 0])
    np.testing.assert_array_equal(load_image(rgb.astype(np.float64) / 255), rgb)
    np.testing.assert_array_equal(load_image(rgb.astype(np.int64)), rgb)
    assert load_image(np.ones((4, 4), bool)).max() == 255
    for bad, message in [
        (rgb.astype(np.float32), r"\[0, 1\]"),
        (np.full((4, 4), np.nan), r"\[0, 1\]"),
        (rgb.astype(np.int64) * 2, "0..255"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (np.zeros((4, 4), complex), "dtype"),
    ]:
        with pytest.raises(ImageError, match=message):
            load_image(bad)
    with pytest.raises(ImageError, match="got list"):
        load_image([[1, 2]])
    with pytest.raises(ImageError, match="no such file: nothing.png"):
        load_image("/nonexistent/nothing.png")


# ---- large images: the model sees SAM's 1024-pixel input; masks come back at full size --------------------


@pytest.fixture(scope="module")
def tiny_model():
    from sam.build import build_sam
    from tests.helpers.reference import TINY, random_state_dict

    model = build_sam(TINY)
    model.load_state_dict(random_state_dict(model, 0))
    return model


@pytest.fixture
def tiny_predictor(tiny_model):
    return SamPredictor(tiny_model)


def test_prepare_gives_the_embedding_of_the_full_image(tiny_model):
    rng = np.random.default_rng(1)
    image = cv2.resize(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8), (1999, 1333))
    small, scale = prepare(image, tiny_model.img_size)
    assert small.shape == (171, 256, 3) and scale == pytest.approx(256 / 1999)
    full, ours = SamPredictor(tiny_model), SamPredictor(tiny_model)
    full.set_image(image)
    ours.set_torch_image(torch.as_tensor(small).permute(2, 0, 1)[None], image.shape[:2])
    assert torch.equal(full.embedding.features, ours.embedding.features)
    assert ours.original_size == (1333, 1999)
    a, sa, _ = full.predict(np.array([[1500, 1000]]), np.array([1]))
    b, sb, _ = ours.predict(np.array([[1500, 1000]]), np.array([1]))
    assert b.shape == (3, 1333, 1999) and np.array_equal(a, b) and np.array_equal(sa, sb)
    tiny = np.zeros((5, 7, 3), np.uint8)
    assert prepare(tiny, 256)[0].shape == (183, 256, 3)  # small images are upsampled, as SAM does


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# ---- the app: the corpus through the page's own requests, then in Chromium ---------------------------------


@pytest.fixture(scope="module")
def app_url(checkpoints, tmp_path_factory):
    from tests.helpers.browser import app_on_hub

    with app_on_hub(checkpoints, tmp_path_factory.mktemp("bad-images"), ["--model", "sam-vit-base"]) as url:
        yield url


@pytest.fixture(scope="module")
def app_predictor(checkpoints):
    """What the app's sam-vit-base is on the loopback Hub."""
    from tests.helpers.browser import default_predictor

    return default_predictor(checkpoints)


def test_every_bad_file_gets_its_message_in_the_page_and_the_session_stays(app_url):
    from tests.helpers.page_client import PageClient

    page = PageClient(app_url)
    try:
        view, _ = page.open_image(encode(photo(), "PNG"), "good.png")
        token = view["token"]
        out = page.act({"type": "point", "x": 50, "y": 30})
        assert len(out["candidates"]) == 3
        out = page.act({"type": "add", "name": "kept"})
        assert [o["name"] for o in out["objects"]] == ["kept"]
        for name, (data, message) in bad_corpus().items():
            view, status = page.open_image(data, name)
            assert re.search(message, view["error"]), (name, view)
            assert "/" not in view["error"] and "Traceback" not in view["error"]  # no server paths, no traces
            assert "sam-vit-base" in status
        out = page.act({"type": "point", "x": 20, "y": 20, "objects_version": -1})  # still the same session
        assert page.token == token and [o["name"] for o in out["objects"]] == ["kept"]
        assert out["prompts"] == [{"kind": "point", "coords": [20, 20], "label": 1}]
    finally:
        page.close()


def test_unusual_files_are_segmented_as_the_viewer_shows_them(app_url, app_predictor):
    """EXIF-rotated, 16-bit, CMYK, transparent, animated: a click on the red square lands on it."""
    from tests.helpers.page_client import PageClient

    upright = np.asarray(photo())
    rgba = np.dstack([upright, np.full(upright.shape[:2], 255, np.uint8)])
    rgba[40:, 60:, 3] = 0
    files = {
        "rotated.jpg": (exif_photo(6)[0], None),
        "mirrored.jpg": (exif_photo(5)[0], None),
        "deep.png": (cv2.imencode(".png", upright[..., ::-1].astype(np.uint16) * 257)[1].tobytes(), None),
        "print.jpg": (encode(photo().convert("CMYK"), "JPEG", quality=95), None),
        "alpha.png": (encode(Image.fromarray(rgba), "PNG"), None),
        "moving.gif": (encode(photo(), "GIF", save_all=True, append_images=[Image.new("RGB", (96, 64))]), "src"),
    }
    page = PageClient(app_url)
    try:
        for name, (data, src) in files.items():
            view, _ = page.open_image(data, name)
            image = load_image(data)
            assert (view["image"]["width"], view["image"]["height"]) == (96, 64), name
            assert ("src" in view["image"]) == (src == "src"), name  # an animation: the page shows frame 1
            assert np.abs(image[12, 12].astype(int) - RED).max() < 60, name  # the red square, where it is seen
            out = page.act({"type": "point", "x": 12, "y": 12})
            app_predictor.set_image(image)
            masks, scores, _ = app_predictor.predict(np.array([[12, 12]]), np.array([1]))
            assert out["selected"] == int(np.argmax(scores)), name
            for cand, mask in zip(out["candidates"], masks, strict=True):
                np.testing.assert_array_equal(png_mask(cand["png"]), mask)
    finally:
        page.close()


def test_a_large_image_is_embedded_at_model_size_and_exported_at_full_size(app_url, app_predictor, tmp_path):
    from tests.helpers.page_client import PageClient

    rng = np.random.default_rng(2)
    image = cv2.resize(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), (4000, 3000), interpolation=cv2.INTER_LINEAR)
    page = PageClient(app_url)
    try:
        view, _ = page.open_image(encode(Image.fromarray(image), "PNG"), "large.png")
        assert (view["image"]["width"], view["image"]["height"]) == (4000, 3000)
        out = page.act({"type": "point", "x": 3000, "y": 1000})
        assert png_mask(out["candidates"][0]["png"]).shape == (768, 1024)  # the page gets display-size masks
        page.act({"type": "add", "name": "big"})
        (zip_path,) = page.event("on_export", [None])
        zipped = page.http.get(f"{app_url}/gradio_api/file={zip_path['path']}")
        zipped.raise_for_status()
    finally:
        page.close()
    import zipfile

    app_predictor.set_image(image)
    masks, scores, _ = app_predictor.predict(np.array([[3000, 1000]]), np.array([1]))
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as zf:
        (name,) = [n for n in zf.namelist() if n.startswith("masks/")]
        with Image.open(io.BytesIO(zf.read(name))) as im:
            exported = np.asarray(im.convert("L")) > 0
    assert exported.shape == (3000, 4000)
    # The app upsamples on one thread, this predictor on all: a handful of pixels at the threshold may differ.
    assert (exported != masks[int(np.argmax(scores))]).sum() <= 10


def png_mask(url: str) -> np.ndarray:
    import base64

    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
        return np.asarray(im.convert("RGBA"))[..., 3] > 0


@pytest.mark.browser
def test_a_bad_upload_in_the_browser_keeps_the_image_and_objects(app_url, tmp_path):
    from playwright.sync_api import sync_playwright

    from tests.helpers.browser import CANVAS, DEBUG, REPO, act, click, launch_chromium, open_app, state, upload

    random_png = write(tmp_path, "random.png", bad_corpus()["random.png"][0])
    strip = write(tmp_path, "strip.png", bad_corpus()["tall-strip.png"][0])
    bomb = write(tmp_path, "bomb.png", encode(Image.new("L", (7_000, 7_000)), "PNG", optimize=True))
    rotated = write(tmp_path, "rotated.jpg", exif_photo(6)[0])
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = open_app(browser, app_url)
        upload(page, REPO / "examples" / "coffee.jpg")
        click(page, 300, 200)
        act(page, "add", lambda: page.click(".sam-add"))
        before = state(page)
        assert [o["name"] for o in before["objects"]] == ["object 1"]
        for path, message in [
            (random_png, "The browser cannot show this image"),  # refused by the browser
            (strip, "3x200: its long side may be at most 32"),  # refused by the server
            (bomb, "7000x7000 (49 megapixels); at most 40"),
        ]:
            page.set_input_files(".sam-file", str(path))
            page.wait_for_function(f"{DEBUG}.state().error && {DEBUG}.state().message.includes({message!r})")
            page.wait_for_selector(f"{CANVAS}[data-ready='1']")
            assert message in page.locator(".sam-message").inner_text()  # shown in the page, not only kept
            after = state(page)
            assert after["objects"] == before["objects"] and (after["width"], after["height"]) == (600, 400)
            assert page.locator(".sam-objects li").count() == 1
            assert page.evaluate("document.querySelector('.sam-img').naturalWidth") == 600
        click(page, 100, 300)  # still responsive, and the server kept the object: the next one is "object 2"
        act(page, "add", lambda: page.click(".sam-add"))
        assert [o["name"] for o in state(page)["objects"]] == ["object 1", "object 2"]
        page.set_input_files(".sam-file", str(rotated))  # EXIF: the browser and the server agree on the size
        page.wait_for_function(f"{DEBUG}.state().ready && {DEBUG}.state().width === 96")
        assert state(page)["objects"] == [] and state(page)["height"] == 64
        assert page.evaluate("document.querySelector('.sam-img').naturalWidth") == 96
        assert page.errors == []
        browser.close()
