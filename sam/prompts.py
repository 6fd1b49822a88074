"""Prompts: one set of rules for points, labels and boxes, and one way to turn them into the model's tensors.

Every way in (Meta's `SamPredictor.predict`, the Ultralytics-style `SAM`, the app's page and its API)
goes through `as_tensors`; the callers that take untrusted prompts (the `SAM` facade, the CLI, the app)
check them with `check_points` and `check_boxes` first. The rules, in pixels of the original image:

- coordinates are finite numbers; labels are 1 (foreground) or 0 (background);
- a box is [x0, y0, x1, y1] with x0 < x1 and y0 < y1;
- given the image size, a point must lie on the image (its edges included), and a box is clipped to the
  image; one that lies off the image, or keeps less than a pixel on it, is refused.
"""

from typing import Any

import numpy as np
import torch

from .transforms import ResizeLongestSide


def _array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name} must be numbers nested in lists of equal lengths: {e}") from None


def _fmt(values: np.ndarray) -> str:
    return ", ".join(f"{v:.6g}" for v in np.asarray(values, dtype=np.float64).ravel())


def check_points(
    points: Any, labels: Any, size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """...x2 points (x, y) and labels of the same leading shape -> float64 points and int64 labels.

    size (H, W): every point must lie on the image. Raises ValueError saying what is wrong.
    """
    pts, lbl = _array("points", points), _array("labels", labels)
    if pts.ndim == 0 or pts.shape[-1] != 2:
        raise ValueError(f"points must be [x, y] pairs, got shape {pts.shape}")
    if lbl.size != pts.size // 2:
        raise ValueError(f"{pts.size // 2} points but {lbl.size} labels")
    if not np.isfinite(pts).all():
        raise ValueError("coordinates must be finite numbers")
    if not np.isin(lbl, (0, 1)).all():
        raise ValueError("labels must be 1 (foreground) or 0 (background)")
    if size is not None:
        h, w = size
        off = ~((pts[..., 0] >= 0) & (pts[..., 0] <= w) & (pts[..., 1] >= 0) & (pts[..., 1] <= h))
        if off.any():
            x, y = pts[off][0]
            raise ValueError(f"point ({x:.6g}, {y:.6g}) is outside the {w}x{h} image")
    return pts, lbl.reshape(pts.shape[:-1]).astype(np.int64)


def check_boxes(boxes: Any, size: tuple[int, int] | None = None) -> np.ndarray:
    """Bx4 (or 4) boxes [x0, y0, x1, y1] -> Bx4 float64, clipped to the image when size (H, W) is given."""
    b = _array("boxes", boxes)
    b = b[None] if b.ndim == 1 else b
    if b.ndim != 2 or b.shape[1] != 4 or len(b) == 0:
        raise ValueError(f"a box must be [x0, y0, x1, y1], got shape {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError("coordinates must be finite numbers")
    for box in b:
        if not (box[0] < box[2] and box[1] < box[3]):
            raise ValueError(f"box [{_fmt(box)}] must have x0 < x1 and y0 < y1: it is empty or inverted")
    if size is None:
        return b
    h, w = size
    clipped = np.stack([b[:, 0].clip(0, w), b[:, 1].clip(0, h), b[:, 2].clip(0, w), b[:, 3].clip(0, h)], axis=1)
    for box, inside in zip(b, clipped):
        if box[2] <= 0 or box[3] <= 0 or box[0] >= w or box[1] >= h:
            raise ValueError(f"box [{_fmt(box)}] is outside the {w}x{h} image")
        if inside[2] - inside[0] < 1 or inside[3] - inside[1] < 1:
            raise ValueError(f"box [{_fmt(box)}] is empty: less than one pixel of it lies on the {w}x{h} image")
    return clipped


def as_tensors(
    transform: ResizeLongestSide,
    original_size: tuple[int, int],
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    mask_input: np.ndarray | None = None,
    device: torch.device | str = "cpu",
) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None, torch.Tensor | None]:
    """Prompts in original-image pixels -> the prompt encoder's inputs, in model-input pixels, on `device`.

    points BxNx2 (x, y) with labels BxN; boxes Bx4 (x0, y0, x1, y1); mask_input Bxhxw or Bx1xhxw low-res
    logits. Returns ((points float BxNx2, labels int BxN) | None, boxes float Bx4 | None, masks float
    Bx1xhxw | None), as `PromptEncoder.forward` takes them.
    """
    point_t = box_t = mask_t = None
    if points is not None:
        if labels is None:
            raise ValueError("labels must be given with points")
        coords = transform.apply_coords(np.asarray(points, dtype=np.float64), original_size)
        point_t = (
            torch.as_tensor(coords, dtype=torch.float, device=device),
            torch.as_tensor(np.asarray(labels), dtype=torch.int, device=device),
        )
    if boxes is not None:
        box = transform.apply_boxes(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), original_size)
        box_t = torch.as_tensor(box, dtype=torch.float, device=device)
    if mask_input is not None:
        mask_t = torch.as_tensor(np.asarray(mask_input), dtype=torch.float, device=device)
        mask_t = mask_t.reshape(-1, 1, *mask_t.shape[-2:])
    return point_t, box_t, mask_t
