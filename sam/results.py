"""Results: the masks found in one image, with the names, types and meanings of Ultralytics' `Results` for SAM.

As Ultralytics documents them (docs.ultralytics.com/modes/predict/#working-with-results):
- `orig_img` the image as HxWx3 uint8 numpy in BGR order (OpenCV's), `orig_shape` (H, W), `path` a str
  (image0.jpg, image1.jpg... for images given in memory), `names` {class: name}, `speed` in ms per image;
- `masks` (Masks): `data` NxHxW bool torch tensor, `xy` / `xyn` the outline of each mask in pixels / [0, 1];
- `boxes` (Boxes): `data` Nx6 float (x0, y0, x1, y1, conf, cls); `xyxy`, `xywh` (centre, size), `xyxyn`,
  `xywhn`, `conf` (the predicted IoU), `cls` (SAM has no classes: mask i is class i, named "i");
- `plot()` returns a BGR array; `show()`, `save()`, `save_txt()`, `summary()`, `to_json()`, `len()`,
  indexing and iteration (one mask each), `cpu()` / `numpy()` / `cuda()` / `to()`.
Ours besides: `scores` (numpy conf), `logits` (low-res logits, for `masks=` in a later call), `polygons`,
`to_coco()`, `to_yolo()`. Tensors stay on the CPU unless moved with `cuda()` / `to()`.
"""

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .export import ExportObject, coco_json, color, yolo_lines
from .masks import mask_to_box, mask_to_polygons, normalize_polygons

Array = torch.Tensor | np.ndarray


def _numpy(x: Array) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _take(x: Array, idx: Any) -> Array:
    """x[idx], keeping the first dimension when idx is a single index."""
    if isinstance(x, np.ndarray) and isinstance(idx, torch.Tensor):
        idx = idx.cpu().numpy()
    y = x[idx]
    return y[None] if y.ndim < x.ndim else y


def _convert(x: Array, how: str, *args: Any, **kwargs: Any) -> Array:
    if how == "numpy":
        return _numpy(x)
    t = torch.as_tensor(x)
    return t.cpu() if how == "cpu" else t.cuda() if how == "cuda" else t.to(*args, **kwargs)


class BaseTensor:
    """`data` (torch tensor or numpy array, first dimension = objects) and the image's (H, W)."""

    def __init__(self, data: Array, orig_shape: tuple[int, int]) -> None:
        self.data = data
        self.orig_shape = tuple(orig_shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: Any) -> "BaseTensor":
        return self.__class__(_take(self.data, idx), self.orig_shape)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def cpu(self) -> "BaseTensor":
        return self.__class__(_convert(self.data, "cpu"), self.orig_shape)

    def numpy(self) -> "BaseTensor":
        return self.__class__(_convert(self.data, "numpy"), self.orig_shape)

    def cuda(self) -> "BaseTensor":
        return self.__class__(_convert(self.data, "cuda"), self.orig_shape)

    def to(self, *args: Any, **kwargs: Any) -> "BaseTensor":
        return self.__class__(_convert(self.data, "to", *args, **kwargs), self.orig_shape)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, orig_shape={self.orig_shape})"


class Boxes(BaseTensor):
    """Nx6 (x0, y0, x1, y1, conf, cls) in pixels of the original image; x1, y1 are pixel edges (exclusive)."""

    id = None  # no tracking
    is_track = False

    @property
    def xyxy(self) -> Array:
        return self.data[:, :4]

    @property
    def conf(self) -> Array:
        return self.data[:, 4]

    @property
    def cls(self) -> Array:
        return self.data[:, 5]

    @property
    def xywh(self) -> Array:
        """Nx4 (centre x, centre y, width, height)."""
        xyxy = self.xyxy
        out = xyxy.clone() if isinstance(xyxy, torch.Tensor) else xyxy.copy()
        out[:, :2] = (xyxy[:, :2] + xyxy[:, 2:]) / 2
        out[:, 2:] = xyxy[:, 2:] - xyxy[:, :2]
        return out

    def _normalized(self, boxes: Array) -> Array:
        h, w = self.orig_shape
        return boxes / (boxes.new_tensor([w, h, w, h]) if isinstance(boxes, torch.Tensor) else np.array([w, h, w, h]))

    @property
    def xyxyn(self) -> Array:
        return self._normalized(self.xyxy)

    @property
    def xywhn(self) -> Array:
        return self._normalized(self.xywh)


class Masks(BaseTensor):
    """NxHxW bool masks at the image's full resolution."""

    @cached_property
    def xy(self) -> list[np.ndarray]:
        """Per mask, the outline of its largest region: Kx2 float32 (x, y) pixels (0x2 for an empty mask).

        Computed once per Masks object, as Ultralytics caches it.
        """
        return [(mask_to_polygons(m)[:1] or [np.zeros((0, 2), np.float32)])[0] for m in _numpy(self.data)]

    @property
    def xyn(self) -> list[np.ndarray]:
        """`xy` divided by the image width and height."""
        return [normalize_polygons([p], self.orig_shape)[0] for p in self.xy]


class Results:
    """The masks found in one image (see the module docstring for every attribute)."""

    def __init__(
        self,
        orig_img: np.ndarray,
        path: str,
        names: dict[int, str] | None = None,
        boxes: Array | None = None,
        masks: Array | None = None,
        speed: dict[str, float | None] | None = None,
        logits: np.ndarray | None = None,
    ) -> None:
        self.orig_img = orig_img
        self.orig_shape = tuple(orig_img.shape[:2])
        self.path = path
        self.boxes = None if boxes is None else Boxes(boxes, self.orig_shape)
        self.masks = None if masks is None else Masks(masks, self.orig_shape)
        n = len(self.masks) if self.masks is not None else 0
        self.names = names if names is not None else {i: str(i) for i in range(n)}
        self.speed = speed or {"preprocess": None, "inference": None, "postprocess": None}
        self.logits = logits
        self.probs = self.keypoints = self.obb = None  # what SAM does not give
        self.save_dir: str | None = None

    @classmethod
    def from_masks(
        cls,
        orig_img: np.ndarray,
        masks: np.ndarray,
        scores: np.ndarray,
        path: str,
        logits: np.ndarray | None = None,
        keep: np.ndarray | None = None,
        speed: dict[str, float | None] | None = None,
    ) -> "Results":
        """Masks NxHxW bool with their scores N -> Results with boxes around them, mask i of class i.

        orig_img: HxWx3 uint8 BGR. keep: N bool, the masks to keep (their classes stay those of all N).
        """
        keep = np.ones(len(masks), bool) if keep is None else keep
        boxes = np.array([mask_to_box(m) for m in masks[keep]], dtype=np.float32).reshape(-1, 4)
        classes = np.arange(len(masks), dtype=np.float32)[keep]
        data = np.concatenate([boxes, scores[keep, None].astype(np.float32), classes[:, None]], axis=1)
        return cls(
            orig_img, path, {i: str(i) for i in range(len(masks))}, torch.from_numpy(data),
            torch.from_numpy(np.ascontiguousarray(masks[keep])), speed, None if logits is None else logits[keep],
        )  # fmt: skip

    def __len__(self) -> int:
        return 0 if self.masks is None else len(self.masks)

    def __getitem__(self, idx: Any) -> "Results":
        r = self._new(lambda b: b[idx])
        r.logits = None if self.logits is None else _take(self.logits, idx)
        return r

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def _new(self, fn) -> "Results":
        r = Results(self.orig_img, self.path, self.names, speed=self.speed, logits=self.logits)
        r.boxes = None if self.boxes is None else fn(self.boxes)
        r.masks = None if self.masks is None else fn(self.masks)
        r.save_dir = self.save_dir
        return r

    def cpu(self) -> "Results":
        return self._new(lambda b: b.cpu())

    def numpy(self) -> "Results":
        return self._new(lambda b: b.numpy())

    def cuda(self) -> "Results":
        return self._new(lambda b: b.cuda())

    def to(self, *args: Any, **kwargs: Any) -> "Results":
        return self._new(lambda b: b.to(*args, **kwargs))

    def new(self) -> "Results":
        """A Results for the same image with nothing in it."""
        return Results(self.orig_img, self.path, self.names, speed=self.speed)

    # -- ours ---------------------------------------------------------------------------------------------
    @property
    def scores(self) -> np.ndarray:
        """N float32: the predicted IoU of each mask (`boxes.conf` as numpy)."""
        return np.zeros(0, np.float32) if self.boxes is None else _numpy(self.boxes.conf).astype(np.float32)

    @property
    def classes(self) -> np.ndarray:
        return np.zeros(0, np.int64) if self.boxes is None else _numpy(self.boxes.cls).astype(np.int64)

    def mask_array(self) -> np.ndarray:
        """NxHxW bool numpy."""
        return np.zeros((0, *self.orig_shape), bool) if self.masks is None else _numpy(self.masks.data).astype(bool)

    @property
    def polygons(self) -> list[list[np.ndarray]]:
        """Per mask, the outer contour of each region (Kx2 (x, y) pixels), largest first."""
        return [mask_to_polygons(m) for m in self.mask_array()]

    def objects(self, category: str = "object") -> list[ExportObject]:
        return [
            ExportObject(f"{category}_{c}", m, float(s), color(int(c)), category)
            for m, s, c in zip(self.mask_array(), self.scores, self.classes)
        ]

    def to_coco(self, file_name: str | None = None, category: str = "object") -> dict[str, Any]:
        """COCO instance annotations (compressed RLE, bbox, area, score) for this image."""
        return coco_json(self.objects(category), self.orig_shape, file_name=file_name or Path(self.path).name)

    def to_yolo(self, classes: list[int] | np.ndarray | None = None) -> list[str]:
        """YOLO-seg lines `class x1 y1 ...` (normalised `xyn`), one per mask with an outline; class 0 unless given."""
        classes = np.zeros(len(self), int) if classes is None else classes
        return yolo_lines(list(self.mask_array()), classes)

    # -- Ultralytics' outputs -----------------------------------------------------------------------------
    def summary(self, normalize: bool = False, decimals: int = 5) -> list[dict[str, Any]]:
        """One dict per mask: name, class, confidence, box {x1, y1, x2, y2}, segments {x: [...], y: [...]}."""
        h, w = self.orig_shape if normalize else (1, 1)
        out = []
        boxes = _numpy(self.boxes.xyxy) if self.boxes is not None else np.zeros((0, 4))
        outlines = self.masks.xy if self.masks is not None else []
        for box, conf, c, xy in zip(boxes, self.scores, self.classes, outlines):
            x1, y1, x2, y2 = (round(float(v) / s, decimals) for v, s in zip(box, (w, h, w, h)))
            out.append(
                {
                    "name": self.names.get(int(c), str(int(c))),
                    "class": int(c),
                    "confidence": round(float(conf), decimals),
                    "box": {"x1": x1, "y1": y1, "x2": x2, "y2": y2},
                    "segments": {
                        "x": [round(float(v) / w, decimals) for v in xy[:, 0]],
                        "y": [round(float(v) / h, decimals) for v in xy[:, 1]],
                    },
                }
            )
        return out

    def to_json(self, normalize: bool = False, decimals: int = 5) -> str:
        """`summary()` as a JSON string."""
        return json.dumps(self.summary(normalize=normalize, decimals=decimals), indent=2)

    def save_txt(self, txt_file: str | Path, save_conf: bool = False) -> str:
        """Append YOLO-seg lines `class x1 y1 x2 y2 ... [conf]` (normalised outlines) to txt_file; returns it.

        A mask without an outline gets no line; with no line at all, no file is written (as Ultralytics).
        """
        lines = []
        for mask, conf, c in zip(self.mask_array(), self.scores, self.classes):
            lines += [line + (f" {conf:.6g}" if save_conf else "") for line in yolo_lines([mask], [c])]
        if lines:
            Path(txt_file).parent.mkdir(parents=True, exist_ok=True)
            with open(txt_file, "a", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in lines)
        return str(txt_file)

    def plot(self, conf: bool = True, line_width: int | None = None, font_size: float | None = None,
             labels: bool = True, boxes: bool = True, masks: bool = True, pil: bool = False,
             img: np.ndarray | None = None, show: bool = False, save: bool = False,
             filename: str | None = None, alpha: float = 0.5) -> Any:  # fmt: skip
        """The image (or img, HxWx3 BGR) with each mask tinted and outlined, boxes and "name conf" labels.

        Returns HxWx3 uint8 BGR, or a PIL image (RGB) with pil=True. show / save: also show it, write it.
        """
        from .plotting import draw

        base = self.orig_img if img is None else np.asarray(img)
        out = draw(
            base, self.mask_array() if masks else None, _numpy(self.boxes.xyxy) if boxes and self.boxes else None,
            self._labels(conf) if labels else None, self.classes, line_width, font_size, alpha,
        )  # fmt: skip
        if show:
            self._pil(out).show()
        if save:
            self._write(out, filename)
        return self._pil(out) if pil else out

    def _labels(self, conf: bool) -> list[str]:
        return [
            self.names.get(int(c), str(int(c))) + (f" {s:.2f}" if conf else "")
            for c, s in zip(self.classes, self.scores)
        ]

    @staticmethod
    def _pil(bgr: np.ndarray):
        from PIL import Image

        return Image.fromarray(np.ascontiguousarray(bgr[..., ::-1]))

    def _write(self, bgr: np.ndarray, filename: str | Path | None) -> str:
        filename = str(filename or f"results_{Path(self.path).name}")
        Path(filename).parent.mkdir(parents=True, exist_ok=True)
        self._pil(bgr).save(filename)
        return filename

    def show(self, *args: Any, **kwargs: Any) -> None:
        """`plot()` in the system's image viewer."""
        self.plot(*args, show=True, **kwargs)

    def save(self, filename: str | Path | None = None, *args: Any, **kwargs: Any) -> str:
        """Write `plot()` to filename (default results_<image name>, format from the extension); returns it."""
        return self._write(self.plot(*args, **kwargs), filename)

    def __repr__(self) -> str:
        h, w = self.orig_shape
        return f"Results({len(self)} masks, image {w}x{h}, path={self.path!r})"
