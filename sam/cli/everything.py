"""`sam everything IMAGE_OR_FOLDER --output DIR`: every mask of each image, as segment-anything's amg.py.

--format png (default): DIR/<image>/0.png, 1.png, ... (255 inside the mask) and metadata.csv with amg.py's
columns. --format coco: DIR/<image>.json, the generator's records with COCO RLE masks (amg.py's
--convert-to-rle output). Exit codes are those of sam/cli/common.py.
"""

import argparse
import json
import sys
from pathlib import Path

from .common import DEFAULT_MODEL, EXIT_MODEL, EXIT_OK, EXIT_USAGE, CliError, find_images, read_images

METADATA_HEADER = (
    "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,stability_score,"
    "crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
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
    "pred_iou_thresh": (float, "drop masks whose predicted IoU is not above this (default 0.88)"),
    "stability_score_thresh": (float, "drop masks less stable than this (default 0.95)"),
    "stability_score_offset": (float, "logit offset of the stability score (default 1.0)"),
    "box_nms_thresh": (float, "box IoU above which a duplicate mask is dropped (default 0.7)"),
    "crop_n_layers": (_count(0), "also segment 4, 16, ... crops of the image (default 0)"),
    "crop_nms_thresh": (float, "box IoU for duplicates across crops (default 0.7)"),
    "crop_overlap_ratio": (float, "overlap of the crops of the first crop layer (default 512/1500)"),
    "crop_n_points_downscale_factor": (_count(1), "points per side shrink by this in each crop layer (default 1)"),
    "min_mask_region_area": (_count(0), "fill holes and drop islands smaller than this, in pixels (default 0)"),
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("everything", help="every mask of an image, folder or glob (segment everything)")
    p.add_argument("source", help="image file, folder or glob pattern (quote it)")
    p.add_argument("--output", required=True, help="folder for <image>/N.png + metadata.csv, or <image>.json")
    p.add_argument("--format", choices=("png", "coco"), default="png", help="PNG masks + CSV, or COCO RLE JSON")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or checkpoint file (default {DEFAULT_MODEL})")
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run")
    settings = p.add_argument_group("generator settings (segment-anything's SamAutomaticMaskGenerator)")
    for name, (kind, text) in SETTINGS.items():
        settings.add_argument("--" + name.replace("_", "-"), type=kind, metavar=kind.__name__.upper(), help=text)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..automatic import SamAutomaticMaskGenerator
    from ..export import unique_names
    from ..weights import load_model

    paths = find_images(args.source)
    output = Path(args.output)
    names = unique_names([p.stem for p in paths])
    targets = [output / (n + ".json" if args.format == "coco" else n) for n in names]
    existing = [t for t in targets if t.exists()]
    if existing and not args.overwrite:
        raise CliError(f"{existing[0]} exists (pass --overwrite to replace earlier results)", EXIT_USAGE)
    try:
        model = load_model(args.model, device=args.device)
    except Exception as e:  # any failure to find, fetch or read the weights
        raise CliError(f"cannot load model {args.model!r}: {e}", EXIT_MODEL) from e
    settings = {k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None}
    output_mode = "coco_rle" if args.format == "coco" else "binary_mask"
    try:
        generator = SamAutomaticMaskGenerator(model, output_mode=output_mode, **settings)
    except ValueError as e:
        raise CliError(str(e), EXIT_USAGE) from e
    output.mkdir(parents=True, exist_ok=True)
    for path, image, target in read_images(paths, targets, "everything"):
        with tqdm(desc=path.name, unit="point", leave=False, file=sys.stderr, disable=len(paths) > 1) as bar:

            def progress(done: int, total: int, bar=bar) -> None:
                bar.total = total
                bar.update(done - bar.n)

            records = generator.generate(image, progress=progress)
        if args.format == "coco":
            target.write_text(json.dumps(records), encoding="utf-8")
        else:
            write_masks_to_folder(records, target)
        print(f"{path}: {len(records)} masks -> {target}")
    return EXIT_OK


def write_masks_to_folder(records: list[dict], folder: Path) -> None:
    """N.png per mask and metadata.csv (amg.py's columns), replacing the PNGs of an earlier run."""
    from ..export import mask_png

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        if old.stem.isdigit():
            old.unlink()
    rows = [METADATA_HEADER]
    for i, r in enumerate(records):
        (folder / f"{i}.png").write_bytes(mask_png(r["segmentation"]))
        values = [i, r["area"], *r["bbox"], *r["point_coords"][0], r["predicted_iou"], r["stability_score"]]
        rows.append(",".join(str(v) for v in [*values, *r["crop_box"]]))
    (folder / "metadata.csv").write_text("\n".join(rows), encoding="utf-8")
