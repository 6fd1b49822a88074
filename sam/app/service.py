"""What the app shares between all its visitors: models loaded once per name, bounded caches, decoding.

A Gradio app serves every visitor from one process. Sessions (`sam.app.session`) keep only keys into
the caches here: a model is loaded once per name and shared; an image embedding is cached by image
content in an LRU bounded in bytes and entries, so an example or a re-upload is instant for anyone.
Everything here is thread-safe. Image embeddings run one at a time (they use every core); decoding runs
in a separate, small pool of slots, so a click never waits behind another visitor's embedding.
"""

import contextlib
import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..images import load_image, prepare
from ..limits import EVERYTHING_TIMEOUT_S, MAX_PIXELS, MAX_PROMPTS, Deadline
from ..modeling.sam import Sam
from ..predictor import ImageEmbedding, SamPredictor
from .lru import LRU
from .threads import Workload

DEFAULT_MODEL = "sam-vit-base"


def _env_int(name: str, default: int, kind: type = int) -> int | float:
    """The environment variable `name` as an int (or `kind`), `default` when unset or empty."""
    value = os.environ.get(name, "").strip()
    try:
        return kind(value) if value else default
    except ValueError:
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None


def image_key(image: np.ndarray) -> str:
    """Content hash of an HxWx3 uint8 image (shape included)."""
    h = hashlib.sha256(f"{image.shape}".encode())
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()[:32]


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file -> HxWx3 uint8 RGB as the user sees it; sam.images.ImageError (a ValueError) says why not."""
    return load_image(path, max_pixels=max_pixels)


def model_info(name: str, model: Sam) -> dict[str, object]:
    """What the status line says about a model."""
    source = str(getattr(model, "weights_source", name))
    precision = model.precision
    return {
        "name": name,
        "source": source,
        "random": source.startswith("random"),
        "precision": {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(precision, precision),
    }


def load(name: str, precision: str = "float32") -> Sam:
    """load_model(name) with the image encoder in `precision` ('float32', 'bfloat16' or 'auto')."""
    from ..weights import load_model

    return load_model(name, dtype=precision)


class Models:
    """Models loaded on first use, once per name, shared by every session.

    At most `max_models` stay loaded (least recently used goes first): a picker over ViT-B/L/H would
    otherwise hold several GB. A failed load is not remembered, so fixing the network and retrying works.
    """

    def __init__(self, loader: Callable[[str], Sam] = load, max_models: int = 2) -> None:
        self.loader = loader
        self.max_models = max_models
        self._models: OrderedDict[str, Sam] = OrderedDict()
        self._lock = threading.Lock()
        self._name_locks: dict[str, threading.Lock] = {}
        self._errors: dict[str, tuple[float, Exception]] = {}  # name -> (when, error) of the last failed load

    def get(self, name: str) -> Sam:
        """The model for `name`, loading it if needed; raises the loader's error (WeightsError) on failure.

        Callers that waited for a load that failed get its error rather than trying again one after the
        other (a Hub that cannot be reached takes half a minute of retries to say so).
        """
        asked = time.monotonic()
        with self._lock:
            lock = self._name_locks.setdefault(name, threading.Lock())
        with lock:  # one load per name at a time; other names load in parallel
            with self._lock:
                if name in self._models:
                    self._models.move_to_end(name)
                    return self._models[name]
                failed = self._errors.get(name)
            if failed is not None and failed[0] >= asked:
                raise failed[1]
            try:
                model = self.loader(name)
            except Exception as e:
                with self._lock:
                    self._errors[name] = (time.monotonic(), e)
                raise
            with self._lock:
                self._models[name] = model
                while len(self._models) > self.max_models:
                    self._models.popitem(last=False)
            return model

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._models)


@dataclass(frozen=True)
class Embedded:
    key: str  # image content hash
    embedding: ImageEmbedding
    seconds: float  # time spent computing it now (0 when it came from the cache)
    cached: bool


class Service:
    """Models, an embedding LRU and an image LRU shared by all sessions; decoding with bounded concurrency."""

    def __init__(
        self,
        models: Models | None = None,
        cache_items: int | None = None,
        cache_mb: int | None = None,
        image_cache_mb: int | None = None,
        decode_slots: int = 2,
        decode_threads: int | None = None,
        embed_threads: int | None = None,
        everything_timeout_s: float | None = None,
    ) -> None:
        self.models = models or Models(max_models=_env_int("SAM_MAX_MODELS", 2))
        nbytes = lambda e: e.nbytes  # noqa: E731
        self.embeddings = LRU(
            cache_items if cache_items is not None else _env_int("SAM_EMBEDDING_CACHE_ITEMS", 64),
            (cache_mb if cache_mb is not None else _env_int("SAM_EMBEDDING_CACHE_MB", 512)) << 20,
            nbytes,
        )
        self.images = LRU(
            256, (image_cache_mb if image_cache_mb is not None else _env_int("SAM_IMAGE_CACHE_MB", 512)) << 20, nbytes
        )
        self._embed_lock = threading.Lock()  # one embedding at a time, whoever asks (page, API, re-embed)
        self._decode_slots = threading.BoundedSemaphore(decode_slots)
        self.workload = Workload()
        # a click decodes on this many threads when no other job runs, on one thread beside others
        self.decode_threads = decode_threads or _env_int("SAM_DECODE_THREADS", torch.get_num_threads())
        self.embed_threads = embed_threads or _env_int("SAM_EMBED_THREADS", torch.get_num_threads())
        self.everything_timeout_s = everything_timeout_s or _env_int(
            "SAM_EVERYTHING_TIMEOUT_S", EVERYTHING_TIMEOUT_S, float
        )
        if not 0 < self.everything_timeout_s < float("inf"):
            raise ValueError(f"SAM_EVERYTHING_TIMEOUT_S must be a positive number, got {self.everything_timeout_s}")

    # images -----------------------------------------------------------------------------------------
    def add_image(self, image: np.ndarray) -> str:
        """Keep an HxWx3 uint8 image (for re-embedding and exports); returns its key."""
        image = np.ascontiguousarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
            raise ValueError(f"expected an HxWx3 uint8 image, got shape {image.shape} dtype {image.dtype}")
        key = image_key(image)
        image.setflags(write=False)
        self.images.put(key, image)
        return key

    def image(self, key: str, path: str | None = None) -> np.ndarray:
        """A kept image; reread from `path` if it left the cache. Raises LookupError when it is gone."""
        image = self.images.get(key)
        if image is None and path and Path(path).is_file():
            image = read_image(path)
            if image_key(image) == key:
                self.images.put(key, image)
            else:
                image = None
        if image is None:
            raise LookupError("the image is no longer on the server: upload it again")
        return image

    # embeddings -------------------------------------------------------------------------------------
    def embed(self, model_name: str, key: str, path: str | None = None) -> Embedded:
        """Embedding of a kept image by `model_name`: from the cache, or computed (one at a time)."""
        cached = self.embeddings.get((model_name, key))
        if cached is not None:
            return Embedded(key, cached, 0.0, True)
        model = self.models.get(model_name)
        image = self.image(key, path)
        with self._embed_lock:
            cached = self.embeddings.get((model_name, key))  # someone else may have just computed it
            if cached is not None:
                return Embedded(key, cached, 0.0, True)
            start = time.perf_counter()
            predictor = SamPredictor(model)
            small, _ = prepare(image, model.img_size)  # SAM's own resize, so the embedding is the same
            with self.workload.job(self.embed_threads, shared=False):
                predictor.set_torch_image(torch.as_tensor(small).permute(2, 0, 1)[None], image.shape[:2])
            embedding = predictor.embedding
            seconds = time.perf_counter() - start
        self.embeddings.put((model_name, key), embedding)
        return Embedded(key, embedding, seconds, False)

    def decoder(self, model_name: str, embedding: ImageEmbedding) -> "Decoder":
        return Decoder(self.models.get(model_name), embedding, self._decode_slots, self.decode_threads, self.workload)


class Decoder:
    """Prompts -> masks for one embedded image, with the shared model (a cheap object; no model copy)."""

    def __init__(
        self,
        model: Sam,
        embedding: ImageEmbedding,
        slots: threading.BoundedSemaphore | None = None,
        threads: int | None = None,
        workload: Workload | None = None,
    ) -> None:
        self.model = model
        self.predictor = SamPredictor(model)
        self.predictor.set_embedding(embedding)
        self.slots = slots
        self.threads = threads or torch.get_num_threads()
        self.workload = workload or Workload()

    @property
    def original_size(self) -> tuple[int, int]:
        return self.predictor.original_size

    @torch.no_grad()
    def decode(
        self,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        mask_input: np.ndarray | None,
        multimask: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Points Nx2 (x, y) and box 4 in image pixels, mask_input hxw low-res logits ->
        low-res logits Cxhxw (float32) and predicted IoU C; C = 3 with multimask else 1."""
        p = self.predictor
        coords = labels_t = box_t = mask_t = None
        if points is not None and len(points):
            coords = torch.as_tensor(p.transform.apply_coords(np.asarray(points, float), p.original_size)).float()[None]
            labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.int)[None]
        if box is not None:
            box_t = torch.as_tensor(p.transform.apply_boxes(np.asarray(box, float)[None], p.original_size)).float()
        if mask_input is not None:
            mask_t = torch.as_tensor(mask_input, dtype=torch.float32)[None, None]
        points_arg = (coords.to(p.device), labels_t.to(p.device)) if coords is not None else None
        with self.slots or contextlib.nullcontext(), self.workload.job(self.threads):
            low_res, scores = p.decode(points_arg, box_t, mask_t, multimask)
        return low_res[0].float().cpu().numpy(), scores[0].float().cpu().numpy()

    @torch.no_grad()
    def masks(self, low_res: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
        """Low-res logits Cxhxw -> bool masks CxHxW at `size` (default: the image size), as Meta's predictor.

        Upsampled to the padded model input and cropped as Meta does; then resized to `size`.
        """
        p = self.predictor
        x = torch.as_tensor(low_res, dtype=torch.float32)[None]
        with self.workload.job(self.threads):
            masks = self.model.postprocess_masks(x, p.input_size, size or p.original_size)
        return (masks[0] > self.model.mask_threshold).numpy()


def _prompt_arrays(points, labels, box) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Validate API prompts: points [[x, y], ...], labels [1 or 0, ...], box [x0, y0, x1, y1]."""
    try:
        pts = np.asarray(points if points is not None else [], dtype=np.float64).reshape(-1, 2)
        lab = np.asarray(labels if labels is not None else [], dtype=np.float64).reshape(-1)
        bx = None if box is None or (hasattr(box, "__len__") and len(box) == 0) else np.asarray(box, np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"points must be [[x, y], ...], labels [1 or 0, ...], box [x0, y0, x1, y1]: {e}") from None
    if len(pts) != len(lab):
        raise ValueError(f"{len(pts)} points but {len(lab)} labels")
    if not np.isin(lab, (0, 1)).all():
        raise ValueError("labels must be 1 (foreground) or 0 (background)")
    if bx is not None and bx.shape != (4,):
        raise ValueError(f"box must be [x0, y0, x1, y1], got shape {bx.shape}")
    if not np.isfinite(pts).all() or (bx is not None and not np.isfinite(bx).all()):
        raise ValueError("coordinates must be finite numbers")
    if len(pts) == 0 and bx is None:
        raise ValueError("give at least one point or a box")
    if len(pts) > MAX_PROMPTS:
        raise ValueError(f"at most {MAX_PROMPTS} points per request, got {len(pts)}")
    if bx is not None and not (bx[0] < bx[2] and bx[1] < bx[3]):
        raise ValueError("box must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1: this one is empty or inverted")
    return (pts if len(pts) else None), (lab.astype(np.int64) if len(lab) else None), bx


def _inside(points: np.ndarray | None, box: np.ndarray | None, h: int, w: int) -> None:
    """Points must lie on the image (edges included); a box must overlap it."""
    for x, y in points if points is not None else ():
        if not (0 <= x <= w and 0 <= y <= h):
            raise ValueError(f"point ({x:.6g}, {y:.6g}) is outside the {w}x{h} image")
    if box is not None and (box[2] <= 0 or box[3] <= 0 or box[0] >= w or box[1] >= h):
        raise ValueError(f"box {[float(f'{v:.6g}') for v in box]} is outside the {w}x{h} image")


def segment(
    service: Service,
    model_name: str,
    image: np.ndarray,
    points=None,
    labels=None,
    box=None,
    multimask: bool = True,
) -> dict[str, object]:
    """Masks for one object in an image, for scripts: COCO RLE masks at image size, scores, boxes.

    points [[x, y], ...] with labels [1 or 0, ...] and/or box [x0, y0, x1, y1], in image pixels.
    Returns {"size": [H, W], "masks": [RLE, ...], "scores": [...], "boxes": [[x0, y0, x1, y1], ...], "model": ...}
    with 3 masks when multimask else 1, best score first.
    """
    from ..masks import encode_coco_rle, mask_to_box

    pts, lab, bx = _prompt_arrays(points, labels, box)
    _inside(pts, bx, image.shape[0], image.shape[1])
    key = service.add_image(image)
    embedded = service.embed(model_name, key)
    decoder = service.decoder(model_name, embedded.embedding)
    low_res, scores = decoder.decode(pts, lab, bx, None, bool(multimask))
    order = np.argsort(-scores, kind="stable")
    masks = decoder.masks(low_res[order])
    info = model_info(model_name, service.models.get(model_name))
    return {
        "size": list(decoder.original_size),
        "masks": [encode_coco_rle(m) for m in masks],
        "scores": [round(float(s), 6) for s in scores[order]],
        "boxes": [mask_to_box(m) for m in masks],
        "model": model_name,
        "weights": info["source"],
        "embedding_seconds": round(embedded.seconds, 3),
    }


def everything(
    service: Service,
    model_name: str,
    key: str,
    path: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    **generator_args,
) -> list[dict]:
    """Segment everything in a kept image (sam.automatic with Meta's defaults unless overridden).

    Records as SamAutomaticMaskGenerator's with output_mode="uncompressed_rle", best predicted IoU first.
    It runs under the embedding lock: like an embedding, it keeps both cores busy for a while; past
    `service.everything_timeout_s` of its own work it stops with sam.limits.TimeLimitError (a ValueError).
    """
    from ..automatic import SamAutomaticMaskGenerator

    embedded = service.embed(model_name, key, path)
    image = service.image(key, path)
    generator = SamAutomaticMaskGenerator(
        service.models.get(model_name), output_mode="uncompressed_rle", **generator_args
    )
    with service._embed_lock, service.workload.job(service.embed_threads, shared=False):
        deadline = Deadline(
            service.everything_timeout_s, "segment everything", "SAM_EVERYTHING_TIMEOUT_S",
            "nothing was changed. Use fewer points per side, or click the objects one by one.",
        )
        records = generator.generate(image, embedding=embedded.embedding, progress=progress, deadline=deadline)
    return sorted(records, key=lambda r: -r["predicted_iou"])


def everything_json(records: list[dict], model_name: str) -> dict[str, object]:
    """Records of `everything` -> JSON for scripts: COCO RLE masks (pycocotools decodes them), scores, boxes."""
    from ..masks import encode_coco_rle, rle_to_mask

    size = records[0]["segmentation"]["size"] if records else None
    return {
        "size": size,
        "masks": [encode_coco_rle(rle_to_mask(r["segmentation"])) for r in records],
        "scores": [round(r["predicted_iou"], 6) for r in records],
        "stability": [round(r["stability_score"], 6) for r in records],
        "bbox": [r["bbox"] for r in records],  # Meta's XYWH
        "areas": [int(r["area"]) for r in records],
        "points": [r["point_coords"][0] for r in records],
        "model": model_name,
    }
