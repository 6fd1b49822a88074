"""Command line: `python -m sam predict ...`, `python -m sam annotate ...` (and `everything` when present).

Exit codes: 0 done; 1 unexpected error (traceback); 2 bad arguments; 3 the model could not be loaded;
4 no images found, or an image could not be read (the others are still processed). Errors go to stderr
as one line starting with "error: ", skipped images as "warning: ". Results are listed on stdout.
"""

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np

from .allocator import reuse_freed_memory

EXIT_OK, EXIT_USAGE, EXIT_MODEL, EXIT_IMAGES = 0, 2, 3, 4
DEFAULT_MODEL = "sam-vit-base"
T = TypeVar("T")


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _numbers(n: int, what: str):
    def parse(text: str) -> list[float]:
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            values = []
        if len(values) != n:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return values

    parse.__name__ = what  # argparse names the type in its messages
    return parse


def _load(model: str, device: str):
    from .api import SAM

    try:
        return SAM(model, device=device)
    except Exception as e:  # any failure to find, fetch or read the weights
        raise CliError(f"cannot load model {model!r}: {e}", EXIT_MODEL) from e


def find_images(source: str) -> list[Path]:
    """The image files of a file, folder or glob; none found: CliError with EXIT_IMAGES."""
    from .api import list_images

    try:
        return list_images(source)
    except FileNotFoundError as e:
        raise CliError(str(e), EXIT_IMAGES) from e


def _progress(items: list, desc: str):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="image", disable=len(items) < 2, file=sys.stderr)


def read_images(paths: list[Path], extras: Iterable[T], desc: str) -> Iterator[tuple[Path, np.ndarray, T]]:
    """(path, HxWx3 uint8 image, extra) for each readable image, in order, with a progress bar named desc.

    An unreadable file gets a "warning: ..." line on stderr and is skipped; once all are done, a CliError
    with EXIT_IMAGES says how many could not be read.
    """
    from .api import ImageReadError, read_image

    unreadable = 0
    for path, extra in _progress(list(zip(paths, extras)), desc):
        try:
            image = read_image(path)
        except ImageReadError as e:
            print(f"warning: {e}", file=sys.stderr)
            unreadable += 1
            continue
        yield path, image, extra
    if unreadable:
        raise CliError(f"{unreadable} of {len(paths)} images could not be read", EXIT_IMAGES)


def run_predict(args: argparse.Namespace) -> int:
    from .api import prompt_batch
    from .export import mask_png, unique_names

    points, labels, boxes = args.points, args.labels, args.bboxes
    if labels is not None and points is None:
        raise CliError("--labels needs --points", EXIT_USAGE)
    if labels is not None and len(labels) != len(points):
        raise CliError(f"{len(points)} points but {len(labels)} labels", EXIT_USAGE)
    if points is not None and boxes is not None and len(boxes) > 1:
        raise CliError("--points go with one box; several boxes segment one object each", EXIT_USAGE)
    if points is not None and boxes is None:  # all points describe one object, as clicks in the app
        points, labels = [points], None if labels is None else [labels]
    try:
        prompt_batch(points, labels, boxes)
    except ValueError as e:
        raise CliError(str(e), EXIT_USAGE) from e
    paths = find_images(args.source)
    model = _load(args.model, args.device)
    output = Path(args.output)
    for path, image, stem in read_images(paths, unique_names([p.stem for p in paths]), "predict"):
        result = model(image, bboxes=boxes, points=points, labels=labels, multimask_output=args.multimask)[0]
        folder = output / stem
        (folder / "masks").mkdir(parents=True, exist_ok=True)
        for i, mask in enumerate(result.masks):
            (folder / "masks" / f"{i}.png").write_bytes(mask_png(mask))
        result.save(folder / "overlay.png")
        coco = result.to_coco(file_name=path.name)
        (folder / "annotations.json").write_text(json.dumps(coco), encoding="utf-8")
        scores = " ".join(f"{s:.3f}" for s in np.asarray(result.scores))
        print(f"{path}: {len(result)} masks (scores {scores or '-'}) -> {folder}")
    return EXIT_OK


def run_annotate(args: argparse.Namespace) -> int:
    from .annotate import auto_annotate, ultralytics_detector
    from .api import ImageReadError

    find_images(args.data)
    if args.det_labels is not None:
        if not Path(args.det_labels).is_dir():
            raise CliError(f"--det-labels: no such folder: {args.det_labels}", EXIT_USAGE)
        det = args.det_labels
    else:
        try:
            det = ultralytics_detector(args.det_model, args.device, conf=args.conf)
        except Exception as e:
            raise CliError(f"cannot load detector {args.det_model!r}: {e}", EXIT_MODEL) from e
    sam = _load(args.model, args.device)
    try:
        out = auto_annotate(
            args.data, det, sam, device=args.device, classes=args.classes, output_dir=args.output, progress=True
        )
    except ImageReadError as e:
        raise CliError(str(e), EXIT_IMAGES) from e
    except ValueError as e:  # e.g. a malformed label file
        raise CliError(str(e), EXIT_USAGE) from e
    print(out)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sam", description="Segment Anything from the command line.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", help="masks from points / boxes (or everything) for an image, folder or glob")
    p.add_argument("source", help="image file, folder or glob pattern (quote it)")
    p.add_argument("--points", nargs="+", type=_numbers(2, "X,Y"), metavar="X,Y", help="points of one object")
    p.add_argument("--labels", nargs="+", type=int, choices=(0, 1), metavar="L", help="1 foreground, 0 background")
    p.add_argument("--bboxes", nargs="+", type=_numbers(4, "X0,Y0,X1,Y1"), metavar="X0,Y0,X1,Y1", help="one mask each")
    p.add_argument("--multimask", action="store_true", help="three candidate masks per object")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or checkpoint file (default {DEFAULT_MODEL})")
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", required=True, help="OUTPUT/<image>/{masks/N.png, overlay.png, annotations.json}")
    p.set_defaults(func=run_predict)

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
    a.set_defaults(func=run_annotate)

    for module in _extra_commands():
        before = set(sub.choices)
        module.add_parser(sub)
        for name in set(sub.choices) - before:
            if sub.choices[name].get_default("func") is None:
                sub.choices[name].set_defaults(func=module.run)
    return parser


def _extra_commands() -> list:
    """Subcommands that live in their own modules (each has add_parser(subparsers) and run(args))."""
    import importlib
    import importlib.util

    names = [f"{__package__}.everything_cli"]
    return [importlib.import_module(n) for n in names if importlib.util.find_spec(n) is not None]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # bad arguments: argparse prints usage and exits with 2
    reuse_freed_memory()  # see sam/allocator.py
    try:
        return int(args.func(args) or 0)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
