"""The keyword arguments of an Ultralytics predict call, as `SAM(...)(...)` and `SAMPredictor` take them.

Each argument is accepted (`Options`), refused with the reason (`REFUSED`), or a segment-everything setting
(`everything_arguments`). Saving follows Ultralytics: runs/segment/predict, predict2, ... (`run_dir`).
"""

import inspect
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

# Names the Ultralytics docs use for segment-everything -> SamAutomaticMaskGenerator's (Meta's) names.
EVERYTHING_ALIASES = {
    "points_stride": "points_per_side",
    "points_batch_size": "points_per_batch",
    "conf_thres": "pred_iou_thresh",
    "crop_downscale_factor": "crop_n_points_downscale_factor",
}

_VIDEO = "video is not supported: SAM segments still images"
_NO_CLASSES = "SAM's masks have no classes (class i is mask i)"
# Ultralytics predict arguments that have no meaning here, and why.
REFUSED = {
    "half": "fp16 is not used here; for a faster CPU encoder pass SAM(sam.load_model(name, dtype='bfloat16'))",
    "batch": "images are embedded one at a time; pass a list, folder or glob as source",
    "vid_stride": _VIDEO,
    "stream_buffer": _VIDEO,
    "save_frames": _VIDEO,
    "tracker": "tracking is not supported: SAM segments still images",
    "persist": "tracking is not supported: SAM segments still images",
    "visualize": "feature maps are not drawn; model.predictor.get_image_embedding() gives the image embedding",
    "embed": "use model.predictor.get_image_embedding() for the image embedding",
    "augment": "there is no test-time augmentation for SAM",
    "agnostic_nms": _NO_CLASSES,
    "classes": _NO_CLASSES,
    "iou": "prompted masks go through no NMS (one mask per prompt); segment-everything takes box_nms_thresh",
    "max_det": "each prompt gives its own masks; keep fewer with conf= or by slicing the Results (r[:n])",
    "save_crop": "crops are not written; sam.build_zip writes a cut-out of each mask",
    "texts": "text prompts are not supported here: SAM takes points, boxes and masks (text prompts are SAM 3's)",
}


@dataclass
class Options:
    """The accepted arguments of a predict call, with Ultralytics' meanings (our defaults where they differ)."""

    conf: float = 0.0  # drop masks whose predicted IoU is not above this (Ultralytics' SAM: 0.25)
    multimask_output: bool = False  # three candidate masks per object
    verbose: bool = True  # one line per image, and the times, on stderr
    progress: bool | None = None  # segment-everything's progress bar on stderr (None: as verbose)
    save: bool = False  # the plotted image, to runs/segment/predict*
    save_txt: bool = False  # YOLO-seg labels, to runs/segment/predict*/labels
    save_conf: bool = False  # the confidence at the end of each label line
    show: bool = False  # open each plotted image in the system's viewer
    project: str | None = None  # runs/segment unless given
    name: str | None = None  # predict unless given
    exist_ok: bool = False  # write into an existing run folder instead of the next free one
    line_width: int | None = None  # plot's line width (None: from the image size)
    show_labels: bool = True
    show_conf: bool = True
    show_boxes: bool = True
    device: str | int | None = None  # move the model there first (None: where it is)
    imgsz: int | list[int] | tuple[int, ...] | None = None  # must be the model's input size
    retina_masks: bool = True  # masks are always at the image's full resolution

    @property
    def show_progress(self) -> bool:
        return self.verbose if self.progress is None else bool(self.progress)


OPTION_NAMES = tuple(f.name for f in fields(Options))


def split_arguments(kwargs: dict[str, Any]) -> tuple[Options, dict[str, Any]]:
    """Call keywords -> (Options, the rest: segment-everything settings). Refused ones raise ValueError."""
    for key in kwargs:
        if key in REFUSED:
            raise ValueError(f"{key}= is not supported: {REFUSED[key]}")
    options = Options(**{k: v for k, v in kwargs.items() if k in OPTION_NAMES})
    return options, {k: v for k, v in kwargs.items() if k not in OPTION_NAMES}


def everything_arguments(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The docs' segment-everything arguments (or Meta's names) -> SamAutomaticMaskGenerator keyword arguments."""
    from .automatic import SamAutomaticMaskGenerator

    accepted = set(inspect.signature(SamAutomaticMaskGenerator.__init__).parameters) - {"self", "model", "output_mode"}
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        name = EVERYTHING_ALIASES.get(key, key)
        if name not in accepted:
            raise ValueError(
                f"unknown argument {key!r}. A predict call takes source, stream, bboxes, points, labels, masks, "
                f"{', '.join(OPTION_NAMES)}; and, with no prompt (segment-everything), "
                f"{', '.join(sorted(accepted | set(EVERYTHING_ALIASES)))}"
            )
        if name in out:
            raise ValueError(f"{key!r} and another name for {name!r} were both given")
        out[name] = value
    return out


def check_imgsz(imgsz: Any, img_size: int) -> None:
    """imgsz may only repeat the model's input size: SAM embeds every image with its long side at that size."""
    if imgsz is None:
        return
    sizes = set(imgsz) if isinstance(imgsz, (list, tuple)) else {imgsz}
    if sizes != {img_size}:
        raise ValueError(
            f"imgsz={imgsz!r} is not supported: SAM always embeds the image with its long side at {img_size} "
            "pixels (this model's input size); leave imgsz out"
        )


def run_dir(project: str | Path | None = None, name: str | None = None, exist_ok: bool = False) -> Path:
    """project/name (runs/segment/predict), or with 2, 3, ... added: the first that does not exist, created.

    With exist_ok, project/name itself, existing or not. As Ultralytics' increment_path.
    """
    base = Path(project or "runs/segment") / (name or "predict")
    path, n = base, 1
    while path.exists() and not exist_ok:
        n += 1
        path = base.with_name(f"{base.name}{n}")
    path.mkdir(parents=True, exist_ok=True)
    return path
