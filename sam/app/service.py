"""What the app shares between all its visitors: models loaded once per name, bounded caches, decoding.

A Gradio app serves every visitor from one process. Sessions (`sam.app.session`) keep only keys into
the caches here: a model is loaded once per name and shared; an image embedding is cached by image
content in an LRU bounded in bytes and entries, so an example or a re-upload is instant for anyone.
Everything here is thread-safe. Image embeddings run one at a time (they use every core); decoding runs
in a separate, small pool of slots, so a click never waits behind another visitor's embedding.
"""

import contextlib
import functools
import hashlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..hub import WeightsError
from ..images import load_image, prepare
from ..modeling.sam import Sam
from ..precision import resolve_dtype
from ..predictor import ImageEmbedding, SamPredictor
from ..prompts import as_tensors, check_boxes, check_points
from ..weights import load_model
from .lru import LRU
from .settings import MAX_ASPECT, MAX_PIXELS, MAX_PROMPTS, Settings
from .threads import FairLock, Workload
from .timings import EmbeddingTimes

# Images from visitors are read with the app's limits (sam/app/settings.py).
read_image = functools.partial(load_image, max_pixels=MAX_PIXELS, max_aspect=MAX_ASPECT)


def image_key(image: np.ndarray) -> str:
    """Content hash of an HxWx3 uint8 image (shape included)."""
    h = hashlib.sha256(f"{image.shape}".encode())
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()[:32]


def public_message(error: Exception) -> str:
    """One line for a visitor or an API caller, with no path of the server in it.

    Errors that say what to change (ValueError, LookupError, WeightsError) keep their first line, with
    paths reduced to their file names; anything else is an internal error, named by its type only (the
    caller logs it with its traceback).
    """
    if not isinstance(error, ValueError | LookupError | WeightsError):
        return f"Internal error ({type(error).__name__}); see the server log."
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return re.sub(r"(?<![\w.])(?:~|[A-Za-z]:)?(?:[\\/][^\s\\/'\"(),;:]+)+[\\/]([^\s\\/'\"(),;:]+)", r"\1", text)


def model_info(name: str, model: Sam) -> dict[str, object]:
    """What the status line says about a model."""
    source = model.weights_source
    precision = model.precision
    return {
        "name": name,
        "source": source,
        "random": source.startswith("random"),
        "precision": {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(precision, precision),
    }


class Models:
    """Models loaded on first use, once per name, shared by every session.

    At most `max_models` stay loaded (least recently used goes first): a picker over ViT-B/L/H would
    otherwise hold several GB. A failed load is not remembered, so fixing the network and retrying works.
    """

    def __init__(self, loader: Callable[[str], Sam] = load_model, max_models: int = Settings.max_models) -> None:
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
        cache_items: int = Settings.embedding_cache_items,
        cache_mb: int = Settings.embedding_cache_mb,
        image_cache_mb: int = Settings.image_cache_mb,
        decode_slots: int = 2,
        decode_threads: int = Settings.decode_threads,
        embed_threads: int = Settings.embed_threads,
        everything_timeout_s: float = Settings.everything_timeout_s,
        share_embeddings: bool = Settings.share_embeddings,
        times: EmbeddingTimes | None = None,
    ) -> None:
        """Thread counts of 0 mean all of torch's threads; the other values are sam.app.settings.Settings';
        times: where the embeddings' seconds are recorded (default: a new record, for fp32 models)."""
        self.models = models or Models()
        self.times = times or EmbeddingTimes()
        nbytes = lambda e: e.nbytes  # noqa: E731
        self.embeddings = LRU(cache_items, cache_mb << 20, nbytes)
        self.images = LRU(256, image_cache_mb << 20, nbytes)
        # One embedding (or segment-everything batch) at a time, whoever asks (page, API, re-embed), in turn.
        self._embed_lock = FairLock()
        self._everything: dict[object, int] = {}  # owner -> segment-everything runs in progress
        self._everything_guard = threading.Lock()
        self._decode_slots = threading.BoundedSemaphore(decode_slots)
        self.workload = Workload()
        # a click decodes on this many threads when no other job runs, on one thread beside others
        self.decode_threads = decode_threads or torch.get_num_threads()
        self.embed_threads = embed_threads or torch.get_num_threads()
        self.everything_timeout_s = everything_timeout_s
        self.share_embeddings = share_embeddings

    @classmethod
    def from_settings(cls, settings: Settings) -> "Service":
        """The service `app.main` runs: models loaded in settings.precision, caches and threads as set."""
        loader = functools.partial(load_model, dtype=settings.precision)
        precision = str(resolve_dtype(settings.precision)).removeprefix("torch.")
        return cls(
            Models(loader, settings.max_models), settings.embedding_cache_items, settings.embedding_cache_mb,
            settings.image_cache_mb, decode_threads=settings.decode_threads, embed_threads=settings.embed_threads,
            everything_timeout_s=settings.everything_timeout_s, share_embeddings=settings.share_embeddings,
            times=EmbeddingTimes(precision),
        )

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
    def embed(self, model_name: str, key: str, path: str | None = None, owner: str | None = None) -> Embedded:
        """Embedding of a kept image by `model_name`: from the cache, or computed (one at a time).

        owner: the visitor asking; unless embeddings are shared, each visitor's uploads have cache entries of
        their own (None: shared, as the examples are).
        """
        cache_key = (model_name, key) if owner is None or self.share_embeddings else (model_name, key, owner)
        cached = self.embeddings.get(cache_key)
        if cached is not None:
            return Embedded(key, cached, 0.0, True)
        model = self.models.get(model_name)
        image = self.image(key, path)
        with self._embed_lock:
            cached = self.embeddings.get(cache_key)  # someone else may have just computed it
            if cached is not None:
                return Embedded(key, cached, 0.0, True)
            start = time.perf_counter()
            predictor = SamPredictor(model)
            if model.keeps_aspect_ratio:  # SAM's own resize, so the embedding is the same as from the image
                small, _ = prepare(image, model.img_size)
            else:  # SAM 2 resizes the image itself, to its square input
                small = predictor.transform.apply_image(np.ascontiguousarray(image)).copy()
            with self.workload.job(self.embed_threads, shared=False):
                predictor.set_torch_image(torch.as_tensor(small).permute(2, 0, 1)[None], image.shape[:2])
            embedding = predictor.embedding
            seconds = time.perf_counter() - start
        self.times.record(model_name, model.precision, seconds)
        self.embeddings.put(cache_key, embedding)
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
        points_arg, box_t, mask_t = as_tensors(
            p.transform, p.original_size, None if points is None or not len(points) else np.asarray(points)[None],
            None if labels is None or not len(labels) else np.asarray(labels)[None],
            None if box is None else np.asarray(box)[None], None if mask_input is None else mask_input[None],
            p.device,
        )
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


def _prompt_arrays(points, labels, box, size: tuple[int, int]):
    """API prompts -> (points Nx2 | None, labels N | None, box 4 | None), by sam.prompts' rules on an HxW image."""
    nothing = lambda v: v is None or (hasattr(v, "__len__") and len(v) == 0)  # noqa: E731
    try:
        pts = np.asarray([] if points is None else points, dtype=np.float64).reshape(-1, 2)
        lab = np.asarray([] if labels is None else labels, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise ValueError(f"points must be [[x, y], ...], labels [1 or 0, ...]: {e}") from None
    if len(pts) == 0 and nothing(box):
        raise ValueError("give at least one point or a box")
    if len(pts) > MAX_PROMPTS:
        raise ValueError(f"at most {MAX_PROMPTS} points per request, got {len(pts)}")
    pts, lab = check_points(pts, lab, size)
    bx = None if nothing(box) else check_boxes(box, size)
    if bx is not None and len(bx) != 1:
        raise ValueError(f"give one box [x0, y0, x1, y1], got {len(bx)}")
    return (pts if len(pts) else None), (lab if len(lab) else None), (None if bx is None else bx[0])


def segment(
    service: Service,
    model_name: str,
    image: np.ndarray,
    points=None,
    labels=None,
    box=None,
    multimask: bool = True,
    owner: str | None = None,
) -> dict[str, object]:
    """Masks for one object in an image, for scripts: COCO RLE masks at image size, scores, boxes.

    points [[x, y], ...] with labels [1 or 0, ...] and/or box [x0, y0, x1, y1], in image pixels; owner:
    the caller, for Service.embed.
    Returns {"size": [H, W], "masks": [RLE, ...], "scores": [...], "boxes": [[x0, y0, x1, y1], ...], "model": ...}
    with 3 masks when multimask else 1, best score first.
    """
    from ..masks import encode_coco_rle, mask_to_box

    pts, lab, bx = _prompt_arrays(points, labels, box, image.shape[:2])
    key = service.add_image(image)
    embedded = service.embed(model_name, key, owner=owner)
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
    }
