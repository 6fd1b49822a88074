"""Results: the masks found in one image, with boxes, polygons, an overlay and COCO / YOLO exports."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .export import ExportObject, coco_json, color, yolo_lines
from .masks import mask_to_box, mask_to_polygons, normalize_polygons


@dataclass
class Results:
    """Masks for one image.

    orig_img: HxWx3 uint8 RGB; masks: NxHxW bool; scores: N predicted IoU; path: where the image came
    from (None for arrays); logits: low-res logits (Nx256x256 for a 1024 model) when the masks came from prompts (they
    can be given back to `SamPredictor.predict(mask_input=...)` to refine a mask).
    """

    orig_img: np.ndarray
    masks: np.ndarray
    scores: np.ndarray
    path: str | None = None
    logits: np.ndarray | None = None
    _polygons: list[list[np.ndarray]] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.masks)

    @property
    def orig_shape(self) -> tuple[int, int]:
        return self.orig_img.shape[:2]

    @property
    def boxes(self) -> np.ndarray:
        """Nx4 float32 (x0, y0, x1, y1) in pixel edges around each mask; zeros for an empty mask."""
        return np.array([mask_to_box(m) for m in self.masks], dtype=np.float32).reshape(-1, 4)

    @property
    def polygons(self) -> list[list[np.ndarray]]:
        """Per mask, the outer contour of each region (Kx2 (x, y) pixels), largest first."""
        if self._polygons is None:
            self._polygons = [mask_to_polygons(m) for m in self.masks]
        return self._polygons

    @property
    def xy(self) -> list[np.ndarray]:
        """Per mask, the outline of its largest region, Kx2 (x, y) in pixels (0x2 for an empty mask)."""
        return [p[0] if p else np.zeros((0, 2), np.float32) for p in self.polygons]

    @property
    def xyn(self) -> list[np.ndarray]:
        """`xy` divided by the image width and height."""
        return [normalize_polygons([p], self.orig_shape)[0] for p in self.xy]

    def plot(self, boxes: bool = True, labels: bool = True, alpha: float = 0.5, line_width: int = 2) -> np.ndarray:
        """HxWx3 uint8 RGB: the image with each mask tinted and outlined, boxes and scores on top."""
        import cv2

        out = self.orig_img.astype(np.float32)
        for i, mask in enumerate(self.masks):
            out[mask] = out[mask] * (1 - alpha) + np.array(color(i), np.float32) * alpha
        out = np.ascontiguousarray(out.round().astype(np.uint8))
        for i, polys in enumerate(self.polygons):
            rgb = color(i)
            if polys:
                cv2.polylines(out, [p.astype(np.int32) for p in polys], True, rgb, line_width)
            if self.masks[i].any() and (boxes or labels):
                x0, y0, x1, y1 = (int(v) for v in self.boxes[i])
                if boxes:
                    cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), rgb, line_width)
                if labels:
                    text = f"{i}: {float(self.scores[i]):.2f}"
                    cv2.putText(out, text, (x0 + 2, max(y0 - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, rgb, 1)
        return out

    def save(self, filename: str | Path) -> Path:
        """Write `plot()` to an image file (format from the extension); returns the path."""
        filename = Path(filename)
        filename.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(self.plot()).save(filename)
        return filename

    def objects(self, category: str = "object") -> list[ExportObject]:
        return [
            ExportObject(f"{category}_{i}", m, float(s), color(i), category)
            for i, (m, s) in enumerate(zip(self.masks, self.scores))
        ]

    def to_coco(self, file_name: str | None = None, category: str = "object") -> dict[str, Any]:
        """COCO instance annotations (compressed RLE, bbox, area, score) for this image."""
        name = file_name or (Path(self.path).name if self.path else "image.png")
        return coco_json(self.objects(category), self.orig_shape, file_name=name)

    def to_yolo(self, classes: list[int] | np.ndarray | None = None) -> list[str]:
        """YOLO-seg lines `class x1 y1 ...` (normalised `xyn`), one per mask with an outline; class 0 unless given."""
        classes = np.zeros(len(self), int) if classes is None else classes
        return yolo_lines(list(self.masks), classes)

    def __repr__(self) -> str:
        h, w = self.orig_shape
        return f"Results({len(self)} masks, image {w}x{h}, path={self.path!r})"
