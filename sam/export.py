"""Exports of segmented objects: mask PNGs, RGBA cut-outs, COCO JSON, YOLO-seg labels, one zip with all.

Object names come from users: they are sanitised before they become file names, and made unique.
"""

import colorsys
import io
import json
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .masks import area, encode_coco_rle, mask_to_polygons, mask_to_xywh, normalize_polygons


@dataclass
class ExportObject:
    """One segmented object.

    name: shown to the user and used for file names; category: the class in COCO / YOLO (defaults to name);
    mask: HxW bool at image size; score: the predicted IoU; color: RGB for overlays.
    """

    name: str
    mask: np.ndarray
    score: float = 1.0
    color: tuple[int, int, int] | None = None
    category: str | None = None

    @property
    def label(self) -> str:
        return " ".join(str(self.category or self.name).split()) or "object"  # one line in classes.txt


def color(i: int) -> tuple[int, int, int]:
    """Colour i of the one palette (overlays, exports, the page's objects): golden-ratio hues, never black."""
    r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.55 + 0.35 * (i % 3) / 2, 0.95 - 0.25 * (i % 2))
    return max(1, round(r * 255)), round(g * 255), round(b * 255)


def hex_color(i: int) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color(i))


def safe_name(name: str, default: str = "object", max_len: int = 64) -> str:
    """Untrusted text -> a file name stem of [A-Za-z0-9._-], no leading dot, never empty."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")[:max_len].strip("._")
    return stem or default


def unique_names(names: Sequence[str]) -> list[str]:
    """Sanitised names made unique (case-insensitively) with _2, _3... suffixes."""
    seen: set[str] = set()
    out = []
    for name in names:
        base = safe_name(name)
        stem, n = base, 1
        while stem.lower() in seen:
            n += 1
            stem = f"{base}_{n}"
        seen.add(stem.lower())
        out.append(stem)
    return out


def _check(image: np.ndarray | None, objects: Sequence[ExportObject]) -> tuple[int, int]:
    """(H, W) shared by the image and every mask."""
    sizes = {np.asarray(o.mask).shape for o in objects}
    if image is not None:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 image, got shape {image.shape} dtype {image.dtype}")
        sizes.add(image.shape[:2])
    if not sizes:
        raise ValueError("nothing to export: no image and no objects")
    if len(sizes) != 1 or len(next(iter(sizes))) != 2:
        raise ValueError(f"masks and image must all be HxW of the same size, got {sorted(sizes)}")
    return next(iter(sizes))


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def mask_png(mask: np.ndarray) -> bytes:
    """HxW bool -> 8-bit grayscale PNG, 255 inside, 0 outside."""
    return _png(np.asarray(mask, dtype=bool).astype(np.uint8) * 255)


def cutout_png(image: np.ndarray, mask: np.ndarray) -> bytes:
    """HxWx3 uint8 and HxW bool -> RGBA PNG: the image's pixels, opaque inside the mask, transparent outside."""
    _check(image, [ExportObject("cutout", mask)])
    alpha = np.asarray(mask, dtype=bool).astype(np.uint8) * 255
    return _png(np.dstack([np.asarray(image), alpha]))


def categories(objects: Sequence[ExportObject]) -> list[str]:
    """Class names in order of first appearance; class index i in YOLO is COCO category_id i + 1."""
    return list(dict.fromkeys(o.label for o in objects))


def coco_json(
    objects: Sequence[ExportObject], size: tuple[int, int], file_name: str = "image.png", image_id: int = 1
) -> dict[str, Any]:
    """COCO instance annotations for one image of size (H, W): compressed RLE, XYWH bbox, area, score."""
    h, w = size
    names = categories(objects)
    annotations = []
    for i, obj in enumerate(objects):
        mask = np.asarray(obj.mask, dtype=bool)
        annotations.append(
            {
                "id": i + 1,
                "image_id": image_id,
                "category_id": names.index(obj.label) + 1,
                "segmentation": encode_coco_rle(mask),
                "area": area(mask),
                "bbox": mask_to_xywh(mask),
                "iscrowd": 0,
                "score": float(obj.score),
                "predicted_iou": float(obj.score),
                "name": obj.name,
            }
        )
    return {
        "images": [{"id": image_id, "file_name": file_name, "height": int(h), "width": int(w)}],
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(names)],
    }


def yolo_lines(masks: Sequence[np.ndarray], classes: Sequence[int], decimals: int = 6) -> list[str]:
    """YOLO-seg label lines `class x1 y1 x2 y2 ...` (coordinates / image size), one per mask with an outline.

    YOLO-seg has one polygon per object: the outline of the mask's largest region (as Ultralytics'
    `masks.xyn`); smaller disconnected pieces and holes are left out (the COCO RLE keeps them).
    """
    lines = []
    for mask, cls in zip(masks, classes, strict=True):
        mask = np.asarray(mask, dtype=bool)
        for poly in normalize_polygons(mask_to_polygons(mask)[:1], mask.shape):
            coords = " ".join(f"{v:.{decimals}f}" for v in poly.reshape(-1))
            lines.append(f"{int(cls)} {coords}")
    return lines


def yolo_labels(objects: Sequence[ExportObject]) -> tuple[str, list[str]]:
    """YOLO-seg label file text for one image, and the class names its indices refer to."""
    names = categories(objects)
    lines = yolo_lines([o.mask for o in objects], [names.index(o.label) for o in objects])
    return "".join(line + "\n" for line in lines), names


def build_zip(image: np.ndarray, objects: Sequence[ExportObject], image_name: str = "image") -> bytes:
    """Everything about one image in a zip (bytes).

    images/IMAGE.png, masks/NAME.png, cutouts/NAME.png (one per object), annotations.json (COCO),
    labels/IMAGE.txt (YOLO-seg) and classes.txt (one class name per line, line i = class i).
    """
    size = _check(image, objects)
    stem = safe_name(re.sub(r"\.[A-Za-z0-9]{1,5}$", "", str(image_name)), default="image")
    files = unique_names([o.name for o in objects])
    labels, names = yolo_labels(objects)
    coco = coco_json(objects, size, file_name=f"{stem}.png")
    for ann, file in zip(coco["annotations"], files):
        ann["file"] = file
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"images/{stem}.png", _png(np.asarray(image)))
        for obj, file in zip(objects, files):
            zf.writestr(f"masks/{file}.png", mask_png(obj.mask))
            zf.writestr(f"cutouts/{file}.png", cutout_png(image, obj.mask))
        zf.writestr("annotations.json", json.dumps(coco, indent=1))
        zf.writestr(f"labels/{stem}.txt", labels)
        zf.writestr("classes.txt", "".join(n + "\n" for n in names))
    return buf.getvalue()
