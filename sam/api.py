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

import glob
import hashlib
import inspect
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .images import ImageError, load_image
from .modeling.sam import Sam
from .predictor import SamPredictor
from .results import Results

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

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


def list_images(source: str | Path) -> list[Path]:
    """A file, a folder (its images, sorted) or a glob pattern -> image paths; FileNotFoundError if none."""
    text = str(source)
    if any(c in text for c in "*?["):
        paths = [Path(p) for p in sorted(glob.glob(text, recursive=True))]
        paths = [p for p in paths if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    else:
        path = Path(source)
        if path.is_dir():
            paths = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            return [path]
        else:
            raise FileNotFoundError(f"no such file or folder: {text}")
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {text}")
    return paths


def to_rgb(image: np.ndarray | Image.Image) -> np.ndarray:
    """PIL image or uint8 array (HxW, HxWx3 RGB, HxWx4 RGBA) -> HxWx3 uint8 RGB."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image, got shape {image.shape}")
    return np.ascontiguousarray(image[:, :, :3])


class ImageReadError(ValueError):
    """An image file that exists but cannot be decoded."""


def read_image(path: str | Path) -> np.ndarray:
    """An image file -> HxWx3 uint8 RGB as the user sees it; ImageReadError if it cannot be read.

    Decoding is sam.images.load_image's (EXIF orientation, first frame, alpha on white, 16-bit scaled), with
    PIL's own decompression-bomb limit instead of the app's upload limits.
    """
    try:
        return load_image(path, max_pixels=Image.MAX_IMAGE_PIXELS or sys.maxsize, max_aspect=math.inf)
    except ImageError as e:
        raise ImageReadError(f"cannot read image {path}: {e}") from e


def iter_images(source: ImageSource | list) -> Iterator[tuple[np.ndarray, str | None]]:
    """(RGB image, path or None) for each image of a source: path, folder, glob, array, PIL image or a list."""
    if isinstance(source, (list, tuple)):
        for item in source:
            yield from iter_images(item)
    elif isinstance(source, (np.ndarray, Image.Image)):
        yield to_rgb(source), None
    elif isinstance(source, (str, Path)):
        for path in list_images(source):
            yield read_image(path), str(path)
    else:
        raise ValueError(f"source must be a path, folder, glob, numpy array or PIL image, got {type(source).__name__}")


def _as_array(name: str, value: Any, dtype: type) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=dtype)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name} must be numbers nested in lists of equal lengths: {e}") from e


def prompt_batch(points: Any = None, labels: Any = None, bboxes: Any = None):
    """The docs' nested prompts -> (points BxNx2 | None, labels BxN | None, boxes Bx4 | None), one row per object.

    Returns None when there is no prompt. Raises ValueError for shapes that cannot be paired.
    """
    boxes = None
    if bboxes is not None:
        boxes = _as_array("bboxes", bboxes, np.float64)
        boxes = boxes[None] if boxes.ndim == 1 else boxes
        if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0:
            raise ValueError(f"bboxes must be [x0, y0, x1, y1] or a list of them, got shape {boxes.shape}")
        if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
            raise ValueError("each box must be [x0, y0, x1, y1] with x1 >= x0 and y1 >= y0")
    if points is None:
        if labels is not None:
            raise ValueError("labels were given without points")
        return None if boxes is None else (None, None, boxes)
    pts = _as_array("points", points, np.float64)
    if pts.ndim not in (1, 2, 3) or pts.shape[-1] != 2 or pts.size == 0:
        raise ValueError(f"points must be [x, y], [[x, y], ...] or [[[x, y], ...], ...], got shape {pts.shape}")
    pts = pts.reshape(1, 2) if pts.ndim == 1 else pts
    lbl = np.ones(pts.shape[:-1], dtype=np.int64) if labels is None else _as_array("labels", labels, np.int64)
    if lbl.size != pts.size // 2:
        raise ValueError(f"{pts.size // 2} points but {lbl.size} labels")
    if not np.isin(lbl, (0, 1)).all():
        raise ValueError("labels must be 1 (foreground) or 0 (background)")
    if pts.ndim == 2:
        n = len(pts)
        if boxes is not None and len(boxes) == 1 and n > 1:  # a box refined by points: one object
            pts, lbl = pts[None], lbl.reshape(1, n)
        else:  # one object per point
            pts, lbl = pts[:, None], lbl.reshape(n, 1)
    else:
        lbl = lbl.reshape(pts.shape[:2])
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


def load(model: "str | Path | Sam", device: str | torch.device | None = "cpu") -> Sam:
    """A model name, file or `random:<name>` (see `sam.weights.load_model`), or a Sam as it is."""
    if isinstance(model, Sam):
        return model.to(resolve_device(device)) if device not in (None, "") else model
    from .weights import load_model

    return load_model(str(model), device=str(resolve_device(device)))


class SAM:
    """A SAM model with the Ultralytics call conventions; `model(...)` and `model.predict(...)` give list[Results].

    The last image is kept with its embedding: `model(points=...)` with no source prompts it again without
    re-running the image encoder. `model.predictor` is the low-level, Meta-compatible `sam.SamPredictor`.
    """

    def __init__(self, model: "str | Path | Sam" = "sam_b.pt", device: str | torch.device | None = "cpu") -> None:
        self.source = None if isinstance(model, Sam) else str(model)  # None: a module given as it is
        self.name = self.source or getattr(getattr(model, "config", None), "name", "sam")
        self.model = load(model, device)
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
            path, image = str(paths[0]), read_image(paths[0])
        image = to_rgb(image)
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
        """Batched prompts (original pixels) through `SamPredictor.predict_torch`, PROMPT_CHUNK objects per call."""
        pred = self.predictor
        n = len(points) if points is not None else len(boxes)
        masks, scores, logits = [], [], []
        for s in range(0, n, PROMPT_CHUNK):
            part = slice(s, s + PROMPT_CHUNK)
            coords_t = labels_t = boxes_t = None
            if points is not None:
                coords = pred.transform.apply_coords(points[part], pred.original_size)
                coords_t = torch.as_tensor(coords, dtype=torch.float, device=self.device)
                labels_t = torch.as_tensor(labels[part], dtype=torch.int, device=self.device)
            if boxes is not None:
                box = pred.transform.apply_boxes(boxes[part], pred.original_size)
                boxes_t = torch.as_tensor(box, dtype=torch.float, device=self.device)
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
