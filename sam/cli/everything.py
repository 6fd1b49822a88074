"""`sam everything IMAGE_OR_FOLDER --output DIR [--ray [ADDRESS]]`: every mask of each image, as amg.py.

--format png (default): DIR/<image>/0.png, 1.png, ... (255 inside the mask) and metadata.csv with amg.py's
columns. --format coco: DIR/<image>.json, the generator's records with COCO RLE masks (amg.py's
--convert-to-rle output). The work is sam.scale.segment_everything's. Exit codes are those of
sam/cli/common.py.
"""

import argparse
from pathlib import Path

from .common import (
    DEFAULT_MODEL,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    add_ray_arguments,
    find_images,
    ray_options,
    report_summary,
)


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    parse.__name__ = "int"
    return parse


# Generator settings on the command line (None: the generator's default).
SETTINGS = {
    "points_per_side": (_count(1), "points along each side of the image grid (default 32)"),
    "points_per_batch": (_count(1), "points run through the decoder at once (default 64)"),
    "pred_iou_thresh": (float, "drop masks whose predicted IoU is not above this (default 0.88; SAM 2: 0.8)"),
    "stability_score_thresh": (float, "drop masks less stable than this (default 0.95)"),
    "stability_score_offset": (float, "logit offset of the stability score (default 1.0)"),
    "box_nms_thresh": (float, "box IoU above which a duplicate mask is dropped (default 0.7)"),
    "crop_n_layers": (_count(0), "also segment 4, 16, ... crops of the image (default 0)"),
    "crop_nms_thresh": (float, "box IoU for duplicates across crops (default 0.7)"),
    "crop_overlap_ratio": (float, "overlap of the crops of the first crop layer (default 512/1500)"),
    "crop_n_points_downscale_factor": (_count(1), "points per side shrink by this in each crop layer (default 1)"),
    "min_mask_region_area": (_count(0), "fill holes and drop islands smaller than this, in pixels (default 0)"),
    "mask_threshold": (float, "logit above which a pixel is in a mask (default 0.0)"),
    "object_score_thresh": (float, "SAM 2: drop the masks of points whose object-score logit is not above this"),
}
# SAM 2 switches (sam2's SAM2AutomaticMaskGenerator): flag -> (setting, value when given, help).
SWITCHES = {
    "use_m2m": ("use_m2m", True, "SAM 2: decode each mask again with itself as the mask prompt"),
    "single_mask": ("multimask_output", False, "SAM 2: one mask per point instead of three"),
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("everything", help="every mask of an image, folder or glob (segment everything)")
    p.add_argument("source", help="image file, folder or glob pattern (quote it)")
    p.add_argument("--output", required=True, help="folder for <image>/N.png + metadata.csv, or <image>.json")
    p.add_argument("--format", choices=("png", "coco"), default="png", help="PNG masks + CSV, or COCO RLE JSON")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or checkpoint file (default {DEFAULT_MODEL})")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--overwrite", action="store_true",
        help="replace the results of an earlier run (without it, --ray skips the images whose results are complete)",
    )  # fmt: skip
    settings = p.add_argument_group("generator settings (SamAutomaticMaskGenerator: segment-anything's, sam2's)")
    for name, (kind, text) in SETTINGS.items():
        settings.add_argument("--" + name.replace("_", "-"), type=kind, metavar=kind.__name__.upper(), help=text)
    for flag, (_, _, text) in SWITCHES.items():
        settings.add_argument("--" + flag.replace("_", "-"), action="store_true", help=text)
    add_ray_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..automatic import SamAutomaticMaskGenerator
    from ..scale.everything import EverythingJob, segment_everything
    from ..weights import load_model

    ray = ray_options(args)
    paths = find_images(args.source)
    output = Path(args.output)
    settings = {k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None}
    settings |= {name: value for flag, (name, value, _) in SWITCHES.items() if getattr(args, flag)}
    existing = [output / t for t in EverythingJob(None, output, args.format).targets(paths) if (output / t).exists()]
    if existing and not args.overwrite and ray["engine"] == "local":  # with --ray, a rerun resumes
        raise CliError(f"{existing[0]} exists (pass --overwrite to replace earlier results)", EXIT_USAGE)
    check_device = args.device if ray["engine"] == "local" else "cpu"  # with --ray the GPUs may be elsewhere
    try:
        model = load_model(args.model, device=check_device)
    except Exception as e:  # any failure to find, fetch or read the weights
        raise CliError(f"cannot load model {args.model!r}: {e}", EXIT_MODEL) from e
    try:
        SamAutomaticMaskGenerator(model, **settings)  # checks the settings
    except ValueError as e:
        raise CliError(str(e), EXIT_USAGE) from e
    if ray["engine"] == "ray" and not args.model.startswith("random:"):  # each worker loads it by name
        model = args.model

    def report(row: dict) -> None:
        if not row["error"]:
            print(f"{row['path']}: {row['masks']} masks -> {output / row['target']}")

    summary = segment_everything(
        args.source, output, model, format=args.format, device=args.device, overwrite=args.overwrite,
        progress=True, on_image=report, **ray, **settings,
    )  # fmt: skip
    report_summary(summary)
    return EXIT_OK
