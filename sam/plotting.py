"""Drawing masks, boxes and labels on a BGR image (what `Results.plot` returns), with the one palette."""

import numpy as np

from .export import color
from .masks import mask_to_box, mask_to_polygons


def draw(
    bgr: np.ndarray,
    masks: np.ndarray | None,
    boxes: np.ndarray | None,
    labels: list[str] | None,
    classes: np.ndarray,
    line_width: int | None = None,
    font_size: float | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """HxWx3 uint8 BGR with each mask (NxHxW bool) tinted and outlined, its box (Nx4 xyxy) and label on top.

    Object i takes colour `color(classes[i])` of sam.export's palette (RGB there, so reversed here).
    line_width: None picks one from the image size, as Ultralytics does; font_size: cv2's font scale.
    """
    import cv2

    h, w = bgr.shape[:2]
    lw = line_width or max(round((h + w) / 2 * 0.003), 2)
    scale = font_size or lw / 3
    colors = [color(int(c))[::-1] for c in classes]
    out = np.asarray(bgr).astype(np.float32)
    if masks is not None:
        for mask, c in zip(masks, colors):
            out[mask] = out[mask] * (1 - alpha) + np.array(c, np.float32) * alpha
    out = np.ascontiguousarray(out.round().astype(np.uint8))
    for i, c in enumerate(colors):
        if masks is not None and masks[i].any():
            cv2.polylines(out, [p.astype(np.int32) for p in mask_to_polygons(masks[i])], True, c, lw)
        box = boxes[i] if boxes is not None else (mask_to_box(masks[i]) if masks is not None else None)
        if box is None or box[2] <= box[0]:
            continue
        x0, y0, x1, y1 = (int(v) for v in box)
        if boxes is not None:
            cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), c, lw)
        if labels:
            (tw, th), _ = cv2.getTextSize(labels[i], cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            top = y0 - th - 4 if y0 - th - 4 >= 0 else y0
            cv2.rectangle(out, (x0, top), (x0 + tw + 2, top + th + 4), c, -1)
            cv2.putText(out, labels[i], (x0 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1)
    return out
