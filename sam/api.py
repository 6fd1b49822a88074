"""The high-level API of the Ultralytics SAM docs, with our names: `SAM`, `SAMPredictor`.

    model = SAM("sam_b.pt")
    model.info()
    results = model("image.jpg", bboxes=[439, 437, 524, 709])
    results = model(points=[[400, 370], [900, 370]], labels=[1, 1])  # same image, one mask per point

Sources follow Ultralytics' colours (numpy arrays BGR, PIL images RGB, tensors BCHW RGB in [0, 1]; see
sam.sources). Prompt nesting (pixels of the original image; labels 1 foreground, 0 background):
    points=[x, y]                        one object from one point
    points=[[x, y], [x, y]]              one object per point (with one box: one object, the box and all points)
    points=[[[x, y], [x, y]]]            one object from several points; labels=[[1, 0]]
    bboxes=[x0, y0, x1, y1] or [[...], [...]]   one object per box; with points, box i goes with point group i
    masks=Nx256x256 low-res logits       mask i refines object i (Meta's mask_input; Results.logits gives them)
No prompt segments everything (`SamAutomaticMaskGenerator`). Other keywords: sam.arguments.
"""

import hashlib
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .arguments import Options, check_imgsz, everything_arguments, run_dir, split_arguments
from .hub import WeightsError
from .modeling.sam import Sam
from .modeling.sam2 import Sam2
from .predictor import SamPredictor
from .prompts import as_tensors, check_boxes, check_points
from .results import Results
from .sources import Item, expand, read_file
from .weights import KNOWN_MODELS, load_model

__all__ = ["SAM", "SAMPredictor", "prompt_batch", "read_file", "resolve_device"]

PROMPT_CHUNK = 64  # prompts decoded per predict_torch call (bounds the full-resolution logits in memory)
LARGE_WORK = 4096  # segment-everything points above which the work is announced (the default is 32 x 32)

# Models the Ultralytics docs name that this package does not run: a pattern of the file name and what the
# model is. Checked only for a name that is neither a local file nor in sam.weights.KNOWN_MODELS, so a family
# that gets supported there is no longer refused here; each entry can also simply be deleted.
NOT_SUPPORTED = (
    (r"sam2(\.1)?_[a-z+]+\.pt", "SAM 2 / SAM 2.1 (Meta, 2024: a Hiera image encoder with a memory for video)"),
    (r"sam3\.pt", "SAM 3 (Meta, 2025: segments the concepts named by a text or an example box)"),
    (r"fastsam-[a-z]+\.pt", "FastSAM (a YOLOv8-seg network that segments everything, then picks masks by prompt)"),
    (r"yolo.*\.pt", "an Ultralytics YOLO model (the ultralytics package runs it; auto_annotate takes it as det_model)"),
)


def check_supported(name: str) -> None:
    """Raise WeightsError for a model family of the Ultralytics docs that is not supported here."""
    if name in KNOWN_MODELS or Path(name).expanduser().exists():
        return
    for pattern, what in NOT_SUPPORTED:
        if re.fullmatch(pattern, Path(name).name.lower()):
            sam_names = ", ".join(n for n in KNOWN_MODELS if n.endswith(".pt"))
            raise WeightsError(
                f"{name!r} is {what}: it is not supported here. This package runs SAM ViT-B/L/H, MobileSAM "
                f"and SlimSAM ({sam_names}, or any name of the models table)"
            )


def resolve_device(device: str | int | torch.device | None) -> torch.device:
    """Empty or None -> cuda if available else cpu; 0 or "0" -> cuda:0; anything else as torch reads it."""
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, int) or (isinstance(device, str) and device.isdigit()):
        return torch.device(f"cuda:{device}")
    return torch.device(device)


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


def mask_prompt(masks: Any, objects: int | None, size: tuple[int, int]) -> np.ndarray:
    """masks= (hxw, Nxhxw or Nx1xhxw low-res logits, h x w = the model's mask input) -> Nxhxw float32."""
    m = np.asarray(masks.detach().cpu() if isinstance(masks, torch.Tensor) else masks, dtype=np.float32)
    m = m[None] if m.ndim == 2 else m[:, 0] if m.ndim == 4 and m.shape[1] == 1 else m
    if m.ndim != 3 or m.shape[1:] != tuple(size) or len(m) == 0:
        raise ValueError(
            f"masks must be Nx{size[0]}x{size[1]} low-res logits (Results.logits, or the third output of "
            f"SamPredictor.predict), got shape {np.shape(masks)}"
        )
    if not np.isfinite(m).all():
        raise ValueError("masks must be finite numbers")
    if objects is not None and len(m) != objects:
        raise ValueError(f"{len(m)} masks but {objects} objects: give one mask per object")
    return m


class SAM:
    """A SAM model with the Ultralytics call conventions; `model(...)` and `model.predict(...)` give list[Results].

    The last image is kept with its embedding: `model(points=...)` with no source prompts it again without
    re-running the image encoder. `model.predictor` is the low-level, Meta-compatible `sam.SamPredictor`.
    """

    def __init__(
        self, model: "str | Path | Sam | Sam2" = "sam_b.pt", device: str | int | torch.device | None = "cpu"
    ) -> None:
        given = isinstance(model, Sam | Sam2)
        self.source = None if given else str(model)  # None: a module given as it is
        self.name = self.source or getattr(model.config, "name", "sam")
        if given:
            self.model = model.to(resolve_device(device)) if device not in (None, "") else model
        else:
            check_supported(str(model))
            self.model = load_model(str(model), device=str(resolve_device(device)))
        self.predictor = SamPredictor(self.model)
        self._image: np.ndarray | None = None  # HxWx3 uint8 RGB
        self._image_key: tuple | None = None
        self._path: str | None = None
        self._generator: tuple[tuple, Any] | None = None

    @property
    def device(self) -> torch.device:
        return self.model.device

    def to(self, device: str | int | torch.device | None) -> "SAM":
        """Move the model (the current image is embedded again when next used)."""
        device = resolve_device(device)
        if device != self.device:
            self.model.to(device)
            self.predictor.reset_image()
            self._generator = None
        return self

    def weight_files(self) -> list[Path]:
        """The checkpoint files this model was read from, when they are on disk (a local path or the Hub cache)."""
        if self.source is None or self.source.startswith("random:"):
            return []
        local = Path(self.source).expanduser()
        if local.is_file():
            return [local]
        if local.is_dir():
            return sorted(p for p in local.iterdir() if p.is_file())
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
            "weights": self.model.weights_source,
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
    def set_image(self, image: Any, path: str | None = None) -> None:
        """Embed one image (path, BGR array, PIL image or 1x3xHxW tensor); the same image again is not re-embedded."""
        items = expand(image)
        if len(items) != 1:
            raise ValueError(f"set_image takes one image, {image} has {len(items)}")
        self._set(items[0].read(), path or items[0].path)

    def _set(self, image: np.ndarray, path: str) -> None:
        """Embed an HxWx3 uint8 RGB image unless it is the one embedded already."""
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
        source: Any = None,
        stream: bool = False,
        bboxes: Any = None,
        points: Any = None,
        labels: Any = None,
        masks: Any = None,
        **kwargs: Any,
    ) -> list[Results] | Iterator[Results]:
        """Results per image of source (or the current image when source is None); stream=True: a generator.

        With prompts: one mask per object (three with multimask_output=True). Without: segment everything,
        with the docs' crop_n_layers, points_stride, points_batch_size, conf_thres, stability_score_thresh,
        ... or SamAutomaticMaskGenerator's own argument names (multimask_output=False given with no prompt:
        one mask per point, SAM 2 models only). Other keywords (conf, verbose, save, device,
        ...) are those of sam.arguments.Options; the ones that have no meaning for SAM raise ValueError
        saying why.
        """
        options, everything = split_arguments(kwargs)
        check_imgsz(options.imgsz, self.model.img_size)
        if options.device is not None:
            self.to(options.device)
        prompts = prompt_batch(points, labels, bboxes)
        if prompts is None and masks is not None:
            prompts = (None, None, None)
        if prompts is not None and everything:
            raise ValueError(f"{', '.join(everything)}: segment-everything settings (no prompt), not for prompts")
        generator_args = everything_arguments(everything) if prompts is None else {}
        if prompts is None and "multimask_output" in kwargs and isinstance(self.model, Sam2):
            generator_args["multimask_output"] = options.multimask_output  # SAM 2's generator setting; SAM's has none
        if source is None and self._image is None:
            raise ValueError("no image: pass a source (path, folder, glob, array, PIL image or tensor) first")
        items = expand(source) if source is not None else [Item(self._path, lambda: self._image)]
        out = self._run(items, prompts, masks, options, generator_args)
        return out if stream else list(out)

    predict = __call__

    def _run(self, items: list[Item], prompts, masks, opts: Options, generator_args) -> Iterator[Results]:
        save_dir = None
        times = np.zeros(3)
        for i, item in enumerate(items, 1):
            t0 = time.perf_counter()
            image = item.read()
            t1 = time.perf_counter()
            self._set(image, item.path)
            if prompts is None:
                found, scores, logits = self._everything(generator_args, opts.show_progress)
            else:
                found, scores, logits = self._prompt(*prompts, masks, opts.multimask_output)
            t2 = time.perf_counter()
            keep = scores > opts.conf if opts.conf > 0 else None
            result = Results.from_masks(np.ascontiguousarray(image[..., ::-1]), found, scores, item.path, logits, keep)
            t3 = time.perf_counter()
            step = np.array([t1 - t0, t2 - t1, t3 - t2]) * 1000
            times += step
            result.speed = dict(zip(("preprocess", "inference", "postprocess"), step.tolist()))
            if opts.save or opts.save_txt:
                save_dir = save_dir or run_dir(opts.project, opts.name, opts.exist_ok)
                self._save(result, save_dir, opts)
            if opts.show:
                result.show(**_plot_args(opts))
            if opts.verbose:
                h, w = result.orig_shape
                line = f"image {i}/{len(items)} {item.path}: {w}x{h} {len(result)} masks, {step[1]:.1f}ms"
                print(line, file=sys.stderr)
            yield result
        if opts.verbose and items:
            t = times / len(items)
            print(f"Speed: {t[0]:.1f}ms preprocess, {t[1]:.1f}ms inference, {t[2]:.1f}ms postprocess per image",
                  file=sys.stderr)  # fmt: skip
            if save_dir is not None:
                print(f"Results saved to {save_dir}", file=sys.stderr)

    @staticmethod
    def _save(result: Results, save_dir: Path, opts: Options) -> None:
        result.save_dir = str(save_dir)
        name = Path(result.path).name
        if opts.save:
            result.save(save_dir / name, **_plot_args(opts))
        if opts.save_txt:
            result.save_txt(save_dir / "labels" / f"{Path(name).stem}.txt", save_conf=opts.save_conf)

    def _prompt(self, points, labels, boxes, masks=None, multimask_output: bool = False):
        """Batched prompts (original pixels) through `SamPredictor.predict_torch`, PROMPT_CHUNK objects per call.

        Points must lie on the current image; boxes are clipped to it (sam.prompts' rules). masks: the
        low-res logits of each object (see mask_prompt). Returns masks MxHxW bool, scores M, logits Mxhxw.
        """
        pred = self.predictor
        size = pred.original_size
        if points is not None:
            points, labels = check_points(points, labels, size)
        if boxes is not None:
            boxes = check_boxes(boxes, size)
        n = len(points) if points is not None else len(boxes) if boxes is not None else None
        if masks is not None:
            masks = mask_prompt(masks, n, self.model.prompt_encoder.mask_input_size)
            n = len(masks)
        out: tuple[list, list, list] = ([], [], [])
        for s in range(0, n, PROMPT_CHUNK):
            part = slice(s, s + PROMPT_CHUNK)
            point_t, boxes_t, mask_t = as_tensors(
                pred.transform, size, *(None if p is None else p[part] for p in (points, labels, boxes, masks)),
                device=self.device,
            )
            coords_t, labels_t = point_t if point_t is not None else (None, None)
            m, sc, lr = pred.predict_torch(coords_t, labels_t, boxes_t, mask_t, multimask_output=multimask_output)
            for acc, t in zip(out, (m, sc.float(), lr.float())):
                acc.append(t.flatten(0, 1).cpu().numpy())
        return tuple(np.concatenate(acc) for acc in out)

    def _everything(self, generator_args: dict[str, Any], progress: bool):
        from tqdm import tqdm

        from .automatic import SamAutomaticMaskGenerator

        key = tuple(sorted((k, repr(v)) for k, v in generator_args.items()))
        if self._generator is None or self._generator[0] != key:
            self._generator = (key, SamAutomaticMaskGenerator(self.model, **generator_args))
        generator = self._generator[1]
        if progress:
            announce_work(generator, self._image.shape[:2])
        with tqdm(desc="everything", unit="point", file=sys.stderr, disable=not progress) as bar:

            def advance(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            records = generator.generate(self._image, embedding=self.predictor.embedding, progress=advance)
        h, w = self._image.shape[:2]
        masks = np.stack([r["segmentation"] for r in records]) if records else np.zeros((0, h, w), bool)
        scores = np.array([r["predicted_iou"] for r in records], dtype=np.float32)
        return masks, scores, None


def announce_work(generator: Any, size: tuple[int, int]) -> None:
    """Print (stderr) what segment-everything is about to do when it is more than LARGE_WORK points."""
    from .amg import generate_crop_boxes

    _, layers = generate_crop_boxes(size, generator.crop_n_layers, generator.crop_overlap_ratio)
    per_layer = [(layers.count(k), len(generator.point_grids[k])) for k in sorted(set(layers))]
    total = sum(crops * points for crops, points in per_layer)
    if total > LARGE_WORK:
        parts = " + ".join(f"{c} crop{'s' * (c > 1)} x {p} points" for c, p in per_layer)
        each = "3 candidate masks each" if getattr(generator, "multimask_output", True) else "one mask each"
        print(
            f"segment everything: {parts} = {total} points, {each} (the default, one crop x "
            "32 x 32 points, is 1024): this takes a while on a CPU",
            file=sys.stderr,
        )


def _plot_args(opts: Options) -> dict[str, Any]:
    return dict(line_width=opts.line_width, labels=opts.show_labels, conf=opts.show_conf, boxes=opts.show_boxes)


class SAMPredictor:
    """Set an image once, answer many prompts; configured like Ultralytics' `Predictor(overrides=...)`.

    overrides: model (name or file, default "sam_b.pt"), task ("segment"), mode ("predict"), and any
    keyword of a predict call (conf, imgsz, device, verbose, save, ...: sam.arguments), used as its default.
    Not to be confused with `sam.SamPredictor`, Meta's low-level API (numpy RGB in, numpy out, one object
    per call); this one returns `Results`, follows the docs' prompt nesting and takes arrays as BGR.
    """

    def __init__(self, overrides: dict[str, Any] | None = None, model: "SAM | Sam | None" = None) -> None:
        args = dict(overrides or {})
        if args.pop("task", "segment") != "segment" or args.pop("mode", "predict") != "predict":
            raise ValueError("SAMPredictor does task='segment', mode='predict' only")
        name = args.pop("model", "sam_b.pt")
        options, everything = split_arguments(args)  # refused or unknown overrides raise here, not at a call
        everything_arguments(everything)
        if isinstance(model, SAM):
            self.sam = model
        else:
            self.sam = SAM(model if model is not None else name, options.device)
        check_imgsz(options.imgsz, self.sam.model.img_size)
        self.args = args

    def set_image(self, image: Any) -> None:
        """One image: a path, a BGR array (cv2.imread's), a PIL image or a 1x3xHxW tensor."""
        self.sam.set_image(image)

    def reset_image(self) -> None:
        self.sam.reset_image()

    def __call__(self, source: Any = None, stream: bool = False, **kwargs: Any) -> list[Results] | Iterator[Results]:
        """As `SAM.__call__`, the overrides giving the defaults."""
        return self.sam(source, stream, **{**self.args, **kwargs})
