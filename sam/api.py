"""The high-level API of the Ultralytics SAM docs, with our names: `SAM`, `SAMPredictor`.

    model = SAM("sam_b.pt")
    model.info()
    results = model("image.jpg", bboxes=[439, 437, 524, 709])
    results = model(points=[[400, 370], [900, 370]], labels=[1, 1])  # same image, one mask per point

Prompt nesting (pixels of the original image; labels 1 foreground, 0 background):
    points=[x, y]                        one object from one point
    points=[[x, y], [x, y]]              one object per point (with one box: one object, the box and all points)
    points=[[[x, y], [x, y]]]            one object from several points; labels=[[1, 0]]
    bboxes=[x0, y0, x1, y1] or [[...], [...]]   one object per box; with points, box i goes with point group i
No prompt segments everything (`SamAutomaticMaskGenerator`).
"""

import hashlib
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .images import ImageError, list_images, load_image
from .modeling.sam import Sam
from .predictor import SamPredictor
from .prompts import as_tensors, check_boxes, check_points
from .results import Results
from .weights import load_model

# Names the Ultralytics docs use for segment-everything -> SamAutomaticMaskGenerator's (Meta's) names.
EVERYTHING_ALIASES = {
    "points_stride": "points_per_side",
    "points_batch_size": "points_per_batch",
    "conf_thres": "pred_iou_thresh",
    "crop_downscale_factor": "crop_n_points_downscale_factor",
}
PROMPT_CHUNK = 64  # prompts decoded per predict_torch call (bounds the full-resolution logits in memory)

ImageSource = str | Path | np.ndarray | Image.Image


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Empty or None -> cuda if available else cpu; "0" -> cuda:0; anything else as torch reads it."""
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, str) and device.isdigit():
        return torch.device(f"cuda:{device}")
    return torch.device(device)


def iter_images(source: ImageSource | list) -> Iterator[tuple[np.ndarray, str | None]]:
    """(RGB image, path or None) for each image of a source: path, folder, glob, array, PIL image or a list."""
    if isinstance(source, (list, tuple)):
        for item in source:
            yield from iter_images(item)
    elif isinstance(source, (np.ndarray, Image.Image)):
        yield load_image(source), None
    elif isinstance(source, (str, Path)):
        for path in list_images(source):
            yield read_file(path), str(path)
    else:
        raise ValueError(f"source must be a path, folder, glob, numpy array or PIL image, got {type(source).__name__}")


def read_file(path: str | Path) -> np.ndarray:
    """An image file -> HxWx3 uint8 RGB; sam.images.ImageError naming the file when it cannot be read."""
    try:
        return load_image(path)
    except ImageError as e:
        raise ImageError(f"cannot read image {path}: {e}") from e


def prompt_batch(points: Any = None, labels: Any = None, bboxes: Any = None):
    """The docs' nested prompts -> (points BxNx2 | None, labels BxN | None, boxes Bx4 | None), one row per object.

    Returns None when there is no prompt. Raises ValueError for prompts that break sam.prompts' rules or
    whose shapes cannot be paired.
    """
    boxes = None if bboxes is None else check_boxes(bboxes)
    if points is None:
        if labels is not None:
            raise ValueError("labels were given without points")
        return None if boxes is None else (None, None, boxes)
    pts = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points, dtype=object)
    shape = np.shape(pts)
    if len(shape) not in (1, 2, 3) or shape[-1] != 2 or pts.size == 0:
        raise ValueError(f"points must be [x, y], [[x, y], ...] or [[[x, y], ...], ...], got shape {shape}")
    pts, lbl = check_points(points, np.ones(shape[:-1]) if labels is None else labels)
    pts = pts.reshape(1, 2) if pts.ndim == 1 else pts
    lbl = lbl.reshape(pts.shape[:-1])
    if pts.ndim == 2:
        n = len(pts)
        if boxes is not None and len(boxes) == 1 and n > 1:  # a box refined by points: one object
            pts, lbl = pts[None], lbl.reshape(1, n)
        else:  # one object per point
            pts, lbl = pts[:, None], lbl.reshape(n, 1)
    if boxes is not None and len(boxes) != len(pts):
        raise ValueError(f"{len(boxes)} boxes but {len(pts)} point groups: give one point group per box")
    return pts, lbl, boxes


def everything_arguments(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The docs' segment-everything arguments (or Meta's names) -> SamAutomaticMaskGenerator keyword arguments."""
    from .automatic import SamAutomaticMaskGenerator

    accepted = set(inspect.signature(SamAutomaticMaskGenerator.__init__).parameters) - {"self", "model", "output_mode"}
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        name = EVERYTHING_ALIASES.get(key, key)
        if name not in accepted:
            known = sorted(accepted | set(EVERYTHING_ALIASES))
            raise ValueError(f"unknown argument {key!r}; segment-everything accepts {', '.join(known)}")
        if name in out:
            raise ValueError(f"{key!r} and another name for {name!r} were both given")
        out[name] = value
    return out


class SAM:
    """A SAM model with the Ultralytics call conventions; `model(...)` and `model.predict(...)` give list[Results].

    The last image is kept with its embedding: `model(points=...)` with no source prompts it again without
    re-running the image encoder. `model.predictor` is the low-level, Meta-compatible `sam.SamPredictor`.
    """

    def __init__(self, model: "str | Path | Sam" = "sam_b.pt", device: str | torch.device | None = "cpu") -> None:
        self.source = None if isinstance(model, Sam) else str(model)  # None: a module given as it is
        self.name = self.source or getattr(getattr(model, "config", None), "name", "sam")
        if isinstance(model, Sam):
            self.model = model.to(resolve_device(device)) if device not in (None, "") else model
        else:
            self.model = load_model(str(model), device=str(resolve_device(device)))
        self.predictor = SamPredictor(self.model)
        self._image: np.ndarray | None = None
        self._image_key: tuple | None = None
        self._path: str | None = None
        self._generator: tuple[tuple, Any] | None = None

    @property
    def device(self) -> torch.device:
        return self.model.device

    def weight_files(self) -> list[Path]:
        """The checkpoint files this model was read from, when they are on disk (a local path or the Hub cache)."""
        if self.source is None or self.source.startswith("random:"):
            return []
        local = Path(self.source).expanduser()
        if local.is_file():
            return [local]
        if local.is_dir():
            return sorted(p for p in local.iterdir() if p.is_file())
        from .weights import KNOWN_MODELS

        known = KNOWN_MODELS.get(self.source)
        if known is None:
            return []
        from huggingface_hub import try_to_load_from_cache

        cached = [try_to_load_from_cache(known.repo_id, f) for f in known.files]
        return [Path(p) for p in cached if isinstance(p, str)]

    def info(self, verbose: bool = True) -> dict[str, Any]:
        """Parameters, layers, size on disk, precision and device; printed as one line when verbose."""
        params = list(self.model.parameters())
        files = self.weight_files()
        size = sum(f.stat().st_size for f in files) if files else None
        info = {
            "model": self.name,
            "weights": getattr(self.model, "weights_source", "not from a checkpoint"),
            "parameters": sum(p.numel() for p in params),
            "layers": sum(1 for m in self.model.modules() if not any(True for _ in m.children())),
            "size_mb": None if size is None else round(size / 2**20, 1),
            "files": [str(f) for f in files],
            "precision": self.model.precision,  # the image encoder's matrix products
            "device": str(self.device),
            "img_size": self.model.img_size,
        }
        if verbose:
            disk = f"{info['size_mb']} MB on disk" if size is not None else "no checkpoint file on disk"
            print(
                f"{info['model']}: {info['layers']} layers, {info['parameters'] / 1e6:.2f}M parameters, {disk}, "
                f"{info['precision']}, {info['device']}"
            )
        return info

    # -- the current image ------------------------------------------------------------------------------
    def set_image(self, image: ImageSource, path: str | None = None) -> None:
        """Embed one image (path, array or PIL image); the same image again is not re-embedded."""
        if isinstance(image, (str, Path)):
            paths = list_images(image)
            if len(paths) != 1:
                raise ValueError(f"set_image takes one image, {image} has {len(paths)}")
            path, image = str(paths[0]), read_file(paths[0])
        image = load_image(image)
        key = (image.shape, hashlib.blake2b(image.tobytes(), digest_size=16).digest())
        if key != self._image_key or not self.predictor.is_image_set:
            self.predictor.set_image(image)
        self._image, self._image_key, self._path = image, key, path

    def reset_image(self) -> None:
        self.predictor.reset_image()
        self._image = self._image_key = self._path = None

    # -- prediction -------------------------------------------------------------------------------------
    def __call__(
        self,
        source: ImageSource | list | None = None,
        bboxes: Any = None,
        points: Any = None,
        labels: Any = None,
        *,
        multimask_output: bool = False,
        conf: float = 0.0,
        stream: bool = False,
        **everything: Any,
    ) -> list[Results] | Iterator[Results]:
        """Results per image of source (or the current image when source is None).

        With prompts: one mask per object (three with multimask_output). Without: segment everything,
        with the docs' crop_n_layers, points_stride, points_batch_size, conf_thres, stability_score_thresh,
        ... or SamAutomaticMaskGenerator's own argument names. conf drops masks whose predicted IoU is
        not above it (0: keep all; Ultralytics' default is 0.25). stream=True gives a generator.
        """
        prompts = prompt_batch(points, labels, bboxes)
        if prompts is not None and everything:
            raise ValueError(f"{', '.join(everything)} apply to segment-everything, not to prompts")
        generator_args = everything_arguments(everything) if prompts is None else {}
        if source is None and self._image is None:
            raise ValueError("no image: pass a source (path, folder, glob, array or PIL image) first")
        images = iter_images(source) if source is not None else iter([(self._image, self._path)])
        out = self._run(images, prompts, multimask_output, conf, generator_args)
        return out if stream else list(out)

    predict = __call__

    def _run(self, images, prompts, multimask_output, conf, generator_args) -> Iterator[Results]:
        for image, path in images:
            self.set_image(image, path)
            if prompts is None:
                masks, scores, logits = self._everything(generator_args)
            else:
                masks, scores, logits = self._prompt(*prompts, multimask_output=multimask_output)
            keep = scores > conf if conf > 0 else np.ones(len(scores), bool)
            yield Results(self._image, masks[keep], scores[keep], path, None if logits is None else logits[keep])

    def _prompt(self, points, labels, boxes, multimask_output: bool = False):
        """Batched prompts (original pixels) through `SamPredictor.predict_torch`, PROMPT_CHUNK objects per call.

        Points must lie on the current image; boxes are clipped to it (sam.prompts' rules).
        """
        pred = self.predictor
        size = pred.original_size
        if points is not None:
            points, labels = check_points(points, labels, size)
        if boxes is not None:
            boxes = check_boxes(boxes, size)
        n = len(points) if points is not None else len(boxes)
        masks, scores, logits = [], [], []
        for s in range(0, n, PROMPT_CHUNK):
            part = slice(s, s + PROMPT_CHUNK)
            point_t, boxes_t, _ = as_tensors(
                pred.transform, size, None if points is None else points[part],
                None if labels is None else labels[part], None if boxes is None else boxes[part], device=self.device,
            )
            coords_t, labels_t = point_t if point_t is not None else (None, None)
            m, sc, lr = pred.predict_torch(coords_t, labels_t, boxes_t, multimask_output=multimask_output)
            masks.append(m.flatten(0, 1).cpu().numpy())
            scores.append(sc.flatten(0, 1).float().cpu().numpy())
            logits.append(lr.flatten(0, 1).float().cpu().numpy())
        return np.concatenate(masks), np.concatenate(scores), np.concatenate(logits)

    def _everything(self, generator_args: dict[str, Any]):
        from .automatic import SamAutomaticMaskGenerator

        key = tuple(sorted((k, repr(v)) for k, v in generator_args.items()))
        if self._generator is None or self._generator[0] != key:
            self._generator = (key, SamAutomaticMaskGenerator(self.model, **generator_args))
        records = self._generator[1].generate(self._image, embedding=self.predictor.embedding)
        h, w = self._image.shape[:2]
        masks = np.stack([r["segmentation"] for r in records]) if records else np.zeros((0, h, w), bool)
        scores = np.array([r["predicted_iou"] for r in records], dtype=np.float32)
        return masks, scores, None


class SAMPredictor:
    """Set an image once, answer many prompts; configured like Ultralytics' `Predictor(overrides=...)`.

    overrides: model (name or file, default "sam_b.pt"), conf (drop masks with predicted IoU <= conf,
    default 0), imgsz (must be the model's input size), device, task ("segment"), mode ("predict").
    Not to be confused with `sam.SamPredictor`, Meta's low-level API (numpy in, numpy out, one object
    per call); this one returns `Results` and follows the docs' prompt nesting.
    """

    OVERRIDES = ("model", "conf", "imgsz", "device", "task", "mode", "verbose")

    def __init__(self, overrides: dict[str, Any] | None = None, model: "SAM | Sam | None" = None) -> None:
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(self.OVERRIDES))
        if unknown:
            raise ValueError(f"unknown overrides {unknown}; accepted: {', '.join(self.OVERRIDES)}")
        if overrides.get("task", "segment") != "segment" or overrides.get("mode", "predict") != "predict":
            raise ValueError("SAMPredictor does task='segment', mode='predict' only")
        if isinstance(model, SAM):
            self.sam = model
        else:
            self.sam = SAM(model if model is not None else overrides.get("model", "sam_b.pt"), overrides.get("device"))
        self.conf = float(overrides.get("conf", 0.0))
        imgsz = overrides.get("imgsz", self.sam.model.img_size)
        sizes = set(imgsz) if isinstance(imgsz, (list, tuple)) else {imgsz}
        if sizes != {self.sam.model.img_size}:
            raise ValueError(f"imgsz={imgsz!r}: this model takes {self.sam.model.img_size} (its trained input size)")

    def set_image(self, image: ImageSource) -> None:
        self.sam.set_image(image)

    def reset_image(self) -> None:
        self.sam.reset_image()

    def __call__(
        self,
        source: ImageSource | list | None = None,
        bboxes: Any = None,
        points: Any = None,
        labels: Any = None,
        multimask_output: bool = False,
        **everything: Any,
    ) -> list[Results]:
        return self.sam(source, bboxes, points, labels, multimask_output=multimask_output, conf=self.conf, **everything)
