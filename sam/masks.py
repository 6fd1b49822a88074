"""Mask encodings with numpy and OpenCV: COCO run-length encoding, boxes, polygons.

COCO conventions: run-length counts go down the columns (Fortran order) and start with a run of
zeros; the compressed string form is the one `pycocotools.mask.encode` writes, so `encode_coco_rle`
gives the same bytes without importing pycocotools. Boxes here are pixel edges: a mask covering
columns 3..5 has x0 = 3, x1 = 6 and width 3, as `pycocotools.mask.toBbox`.
"""

from typing import Any

import numpy as np

__all__ = [
    "area",
    "decode_coco_rle",
    "encode_coco_rle",
    "inclusive_box",
    "mask_to_box",
    "mask_to_polygons",
    "mask_to_rle",
    "mask_to_xywh",
    "normalize_polygons",
    "polygons_to_mask",
    "rle_to_mask",
]


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an HxW mask, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def area(mask: np.ndarray) -> int:
    """Number of pixels in an HxW mask."""
    return int(np.count_nonzero(mask))


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """HxW bool -> uncompressed COCO RLE {"size": [H, W], "counts": [...]}: column-major runs, zeros first."""
    mask = _check_mask(mask)
    h, w = mask.shape
    flat = mask.ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], change, [h * w]])).tolist()
    if h * w and flat[0]:
        counts = [0] + counts
    return {"size": [int(h), int(w)], "counts": counts}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Uncompressed COCO RLE -> HxW bool."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {counts.sum()}, expected {h} * {w}")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(w, h).T


def encode_coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """HxW bool -> {"size": [H, W], "counts": str}, COCO's compressed RLE (as pycocotools.mask.encode).

    Each count (from the fourth on, minus the count two before it) is written in 5-bit groups, low
    first, as characters 48 + group, with 0x20 set on every group but the last; the last group's
    0x10 bit carries the sign.
    """
    rle = mask_to_rle(_check_mask(mask))
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if len(counts) == 0:  # an empty image (0 pixels): pycocotools writes one zero run
        counts = np.zeros(1, dtype=np.int64)
    x = counts.copy()
    x[3:] -= counts[1:-2]
    groups, keep = [], []
    active = np.ones(len(x), dtype=bool)
    while active.any():
        c = x & 0x1F
        x = x >> 5  # arithmetic shift, as C on a signed long
        more = np.where(c & 0x10, x != -1, x != 0)
        groups.append(np.where(more & active, c | 0x20, c) + 48)
        keep.append(active)
        active = active & more
    chars = np.stack(groups, 1)[np.stack(keep, 1)]  # row-major: the groups of each count in order
    return {"size": rle["size"], "counts": chars.astype(np.uint8).tobytes().decode("ascii")}


def decode_coco_rle(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE, compressed (str or bytes counts) or uncompressed (list) -> HxW bool."""
    counts = rle["counts"]
    if isinstance(counts, list):
        return rle_to_mask(rle)
    data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    values: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(values) > 2:
            x += values[-2]
        values.append(x)
    return rle_to_mask({"size": rle["size"], "counts": values})


def mask_to_box(mask: np.ndarray) -> list[int]:
    """HxW bool -> [x0, y0, x1, y1] in pixel edges (x1, y1 exclusive); [0, 0, 0, 0] when empty."""
    mask = _check_mask(mask)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def mask_to_xywh(mask: np.ndarray) -> list[int]:
    """HxW bool -> COCO bbox [x, y, width, height] (as pycocotools.mask.toBbox)."""
    x0, y0, x1, y1 = mask_to_box(mask)
    return [x0, y0, x1 - x0, y1 - y0]


def mask_to_polygons(mask: np.ndarray, min_points: int = 3) -> list[np.ndarray]:
    """HxW bool -> outer contours as Nx2 float32 arrays of (x, y) pixel indices.

    One polygon per connected region (holes are not traced); contours with fewer than min_points
    vertices (single pixels, two-pixel specks) are dropped. Largest region first.
    """
    import cv2

    mask = _check_mask(mask)
    if not mask.any():
        return []
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = [c.reshape(-1, 2).astype(np.float32) for c in contours if len(c) >= min_points]
    polys.sort(key=lambda p: -abs(cv2.contourArea(p)))
    return polys


def normalize_polygons(polygons: list[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    """Polygons in pixels -> coordinates divided by (W, H) and clipped to [0, 1]; size is (H, W)."""
    h, w = size
    scale = np.array([w, h], dtype=np.float32)
    return [np.clip(p / scale, 0.0, 1.0) for p in polygons]


def polygons_to_mask(polygons: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Fill polygons (Nx2 (x, y) pixels) into an HxW bool mask; the inverse of mask_to_polygons for blobs."""
    import cv2

    out = np.zeros(size, dtype=np.uint8)
    if polygons:
        cv2.fillPoly(out, [np.round(p).astype(np.int32).reshape(-1, 1, 2) for p in polygons], 1)
    return out.astype(bool)


def inclusive_box(mask: np.ndarray) -> list[int]:
    """HxW bool -> [x0, y0, x1, y1] with x1, y1 the last column and row (Meta's boxes); zeros when empty."""
    x0, y0, x1, y1 = mask_to_box(mask)
    return [x0, y0, x1 - 1, y1 - 1] if x1 > x0 else [0, 0, 0, 0]
