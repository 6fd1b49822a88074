"""`sam annotate DATA (--det-labels DIR | --det-model NAME) [--ray [ADDRESS]]`: YOLO-seg labels from boxes."""

import argparse
from pathlib import Path

from .common import (
    DEFAULT_MODEL,
    EXIT_IMAGES,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    add_ray_arguments,
    find_images,
    load_sam,
    ray_options,
    report_summary,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("annotate", help="YOLO-seg labels for a folder of images from a detector's boxes")
    a.add_argument("data", help="folder (or glob) of images")
    det = a.add_mutually_exclusive_group(required=True)
    det.add_argument("--det-labels", metavar="DIR", help="folder of YOLO box labels (class cx cy w h), one per image")
    det.add_argument("--det-model", metavar="NAME", help="an Ultralytics YOLO model (needs ultralytics installed)")
    a.add_argument("--model", default=DEFAULT_MODEL, help=f"SAM model (default {DEFAULT_MODEL})")
    a.add_argument("--classes", nargs="+", type=int, metavar="ID", help="keep only these class ids")
    a.add_argument("--conf", type=float, default=0.25, help="detector confidence (with --det-model)")
    a.add_argument("--device", default="cpu")
    a.add_argument("--output", help="label folder (default: <data>_auto_annotate_labels beside data)")
    a.add_argument("--overwrite", action="store_true", help="with --ray: redo images whose labels exist")
    add_ray_arguments(a)
    a.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..annotate import auto_annotate, ultralytics_detector
    from ..images import ImageError
    from ..scale.files import read_summary

    ray = ray_options(args)
    find_images(args.data)
    if args.det_labels is not None and not Path(args.det_labels).is_dir():
        raise CliError(f"--det-labels: no such folder: {args.det_labels}", EXIT_USAGE)
    check_device = args.device if ray["engine"] == "local" else "cpu"  # with --ray the GPUs may be elsewhere
    if args.det_model is not None:  # loaded here to check it; auto_annotate loads it (on each Ray worker) by name
        try:
            ultralytics_detector(args.det_model, check_device, conf=args.conf)
        except Exception as e:
            raise CliError(f"cannot load detector {args.det_model!r}: {e}", EXIT_MODEL) from e
    det = args.det_labels or args.det_model
    sam = load_sam(args.model, check_device)
    if ray["engine"] == "ray" and not args.model.startswith("random:"):  # each worker loads it by name
        sam = args.model
    options = dict(device=args.device, conf=args.conf, classes=args.classes, output_dir=args.output, progress=True)
    try:
        out = auto_annotate(args.data, det, sam, **options, overwrite=args.overwrite, **ray)
    except ImageError as e:
        raise CliError(str(e), EXIT_IMAGES) from e
    except ValueError as e:  # e.g. a malformed label file
        raise CliError(str(e), EXIT_USAGE) from e
    print(out)
    if ray["engine"] == "ray":
        report_summary(read_summary(out))
    return EXIT_OK
