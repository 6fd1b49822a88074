"""The one image reader: a file, bytes, a PIL image or an array -> HxWx3 uint8 RGB as the user sees it.

Every way in (the app, the Python APIs, the CLI) goes through `load_image`; what it cannot use raises
`ImageError` (a ValueError) whose message is meant for the person who sent the image. The decisions
(docs/limits.md lists them too):

- Formats: JPEG (MPO too), PNG, WebP, GIF, BMP, TIFF, AVIF. Nothing else is tried (no SVG, HTML, PDF;
  Pillow's EPS reader would run Ghostscript).
- Size: at most `max_pixels` (by default Pillow's own decompression-bomb limit), checked from the header
  before anything is decoded, so a decompression bomb costs nothing. Long side / short side at most
  `max_aspect` when given: SAM sees the long side at 1024 px, so a 1x20000 strip would be less than one
  pixel high. The web app passes its own, stricter limits (sam/app/settings.py).
- EXIF orientation is applied, as browsers do, so a click in the page lands on the same pixel here.
- The first frame of an animation and the first page of a multi-page TIFF.
- Transparency is composited on white (the colour under alpha 0 is often black or leftover data).
- 16-bit channels are scaled to 8 bits (round(v / 257)), not clipped; float arrays must be in [0, 1].
- CMYK, YCbCr, palette, greyscale and 1-bit images become RGB through Pillow (no ICC colour management).
"""

import contextlib
import glob
import io
import math
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .transforms import ResizeLongestSide

__all__ = ["FORMATS", "SUFFIXES", "ImageError", "check_size", "frame_count", "list_images", "load_image", "prepare"]

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")  # Pillow's names (phones' MPO files open as JPEG)
_NAMES = "JPEG, PNG, WebP, GIF, BMP, TIFF or AVIF"
# File name endings of those formats, for listing a folder (the decoder itself goes by content).
SUFFIXES = (".jpg", ".jpeg", ".jpe", ".mpo", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff", ".avif")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageError(ValueError):
    """An image that cannot be used; the message says why, for the person who sent it."""


def check_size(width: int, height: int, max_pixels: int | None = None, max_aspect: float | None = None) -> None:
    """Raise ImageError for an empty, too large or too elongated image (None: Pillow's limit / no limit)."""
    max_pixels = max_pixels or Image.MAX_IMAGE_PIXELS or sys.maxsize
    max_aspect = max_aspect or math.inf
    if width < 1 or height < 1:
        raise ImageError(f"the image is empty ({width}x{height} pixels)")
    if width * height > max_pixels:
        raise ImageError(
            f"the image is {width}x{height} ({width * height / 1e6:.0f} megapixels); at most "
            f"{max_pixels // 1_000_000} megapixels are accepted: scale it down first"
        )
    if max(width, height) > max_aspect * min(width, height):
        raise ImageError(
            f"the image is {width}x{height}: its long side may be at most {max_aspect:g} times its short side "
            "(SAM sees the long side at 1024 pixels, so the short side would all but vanish); crop it into parts"
        )


def load_image(
    source: str | os.PathLike | bytes | Image.Image | np.ndarray,
    *,
    max_pixels: int | None = None,
    max_aspect: float | None = None,
) -> np.ndarray:
    """A file path, the bytes of a file, a PIL image or an array -> HxWx3 uint8 RGB (C-contiguous).

    Arrays: HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA); uint8 as is, uint16 scaled, bool 0/255, other
    integers must lie in 0..255, floats in [0, 1]. max_pixels: at most this many pixels (default: Pillow's
    decompression-bomb limit); max_aspect: long side / short side (default: any). Raises ImageError with a
    message for people.
    """
    limits = dict(max_pixels=max_pixels, max_aspect=max_aspect)
    if isinstance(source, np.ndarray):
        return _from_array(source, **limits)
    if isinstance(source, Image.Image):
        return _from_pil(source, **limits)
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise ImageError("the file is empty (0 bytes)")
        return _decode(io.BytesIO(source), **limits)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"no such file: {path.name}")
        if path.stat().st_size == 0:
            raise ImageError(f"{path.name} is empty (0 bytes)")
        return _decode(path, **limits)
    raise ImageError(f"expected an image file, its bytes, a PIL image or a numpy array, got {type(source).__name__}")


def frame_count(source: str | os.PathLike | bytes) -> int:
    """Frames (GIF, WebP, APNG) or pages (TIFF) in an image file; 1 for still images and unreadable files."""
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
        with Image.open(fp, formats=FORMATS) as im:
            return int(getattr(im, "n_frames", 1))
    except Exception:  # load_image says what is wrong with a file; this only counts
        return 1


def prepare(image: np.ndarray, long_side: int = 1024) -> tuple[np.ndarray, float]:
    """The model's input for an HxWx3 image: resized so that its long side is `long_side` -> (array, scale).

    Exactly SAM's own resize (sam.transforms.ResizeLongestSide), so an embedding of the array, given the
    original size (SamPredictor.set_torch_image), equals the embedding of the full image, while the model
    path never holds more than the small copy. Masks are then upsampled from the low-res logits to the full
    image size, so exports keep the full resolution. scale = long_side / max(H, W): x_input ~= x * scale.
    """
    h, w = image.shape[:2]
    return ResizeLongestSide(long_side).apply_image(np.ascontiguousarray(image)), long_side / max(h, w)


def _decode(fp: Path | io.BytesIO, max_pixels: int | None, max_aspect: float | None) -> np.ndarray:
    try:
        with Image.open(fp, formats=FORMATS) as im:
            return _from_pil(im, max_pixels, max_aspect)
    except ImageError:
        raise
    except Image.DecompressionBombError:  # Pillow's own limit, above ours: raised before decoding
        limit = (max_pixels or Image.MAX_IMAGE_PIXELS) // 1_000_000
        raise ImageError(f"the image is larger than {limit} megapixels") from None
    except UnidentifiedImageError:
        raise ImageError(f"could not read the image: it is not a {_NAMES} file") from None
    except MemoryError:
        raise ImageError("could not read the image: not enough memory to decode it") from None
    except Exception as e:  # decoders fed arbitrary bytes raise OSError, SyntaxError, EOFError, struct.error...
        detail = str(e)[:200] or type(e).__name__
        raise ImageError(f"could not read the image: the file is damaged or truncated ({detail})") from None


def _from_pil(im: Image.Image, max_pixels: int | None, max_aspect: float | None) -> np.ndarray:
    check_size(im.width, im.height, max_pixels, max_aspect)  # before anything is decoded
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)
    im.load()  # decoding errors surface here (truncated, damaged data)
    with contextlib.suppress(Exception):  # a damaged EXIF block: the pixels as stored, as browsers show them
        im = ImageOps.exif_transpose(im)
    if im.mode in _SIXTEEN_BIT:
        grey = np.clip(np.asarray(im).astype(np.float32), 0, 65535) / 257.0
        return _rgb_from_grey(np.rint(grey).astype(np.uint8))
    if im.mode == "F":
        return _from_array(np.asarray(im, dtype=np.float32), max_pixels, max_aspect)
    if im.mode in _ALPHA or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.ascontiguousarray(np.asarray(Image.alpha_composite(white, rgba).convert("RGB")))
    try:
        rgb = im.convert("RGB")
    except ValueError as e:
        raise ImageError(f"images in colour mode {im.mode} are not supported; save it as RGB") from e
    return np.ascontiguousarray(np.asarray(rgb))


def _rgb_from_grey(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


def _from_array(a: np.ndarray, max_pixels: int | None, max_aspect: float | None) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ImageError(f"expected an HxW, HxWx3 or HxWx4 image array, got shape {a.shape}")
    check_size(a.shape[1], a.shape[0], max_pixels, max_aspect)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = np.rint(a / 257.0).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise ImageError("a float image must hold values in [0, 1]")
        a = np.rint(a * 255).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer) and a.dtype != np.uint8:
        if a.min() < 0 or a.max() > 255:
            raise ImageError(f"a {a.dtype} image must hold values in 0..255 (or pass uint16 for 16 bits)")
        a = a.astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ImageError(f"unsupported image dtype {a.dtype}")
    if a.ndim == 2:
        return _rgb_from_grey(a)
    if a.shape[2] == 4:  # composite on white, as for files
        alpha = a[:, :, 3:].astype(np.float32) / 255.0
        a = np.rint(a[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(a[:, :, :3])


def list_images(source: str | os.PathLike) -> list[Path]:
    """A file, a folder (its images, sorted) or a glob pattern -> image paths; FileNotFoundError if none."""
    text = str(source)
    if any(c in text for c in "*?["):
        paths = [Path(p) for p in sorted(glob.glob(text, recursive=True))]
        paths = [p for p in paths if p.is_file() and p.suffix.lower() in SUFFIXES]
    else:
        path = Path(source)
        if path.is_dir():
            paths = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
        elif path.is_file():
            return [path]
        else:
            raise FileNotFoundError(f"no such file or folder: {text}")
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(SUFFIXES)}) found in {text}")
    return paths
