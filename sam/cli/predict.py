"""`sam predict SOURCE --output DIR [--points X,Y ...] [--labels L ...] [--bboxes X0,Y0,X1,Y1 ...]`."""

import argparse
import json
from pathlib import Path

import numpy as np

from .common import DEFAULT_MODEL, EXIT_OK, EXIT_USAGE, CliError, find_images, load_sam, numbers, read_images


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="masks from points / boxes (or everything) for an image, folder or glob")
    p.add_argument("source", help="image file, folder or glob pattern (quote it)")
    p.add_argument("--points", nargs="+", type=numbers(2, "X,Y"), metavar="X,Y", help="points of one object")
    p.add_argument("--labels", nargs="+", type=int, choices=(0, 1), metavar="L", help="1 foreground, 0 background")
    p.add_argument("--bboxes", nargs="+", type=numbers(4, "X0,Y0,X1,Y1"), metavar="X0,Y0,X1,Y1", help="one mask each")
    p.add_argument("--multimask", action="store_true", help="three candidate masks per object")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or checkpoint file (default {DEFAULT_MODEL})")
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", required=True, help="OUTPUT/<image>/{masks/N.png, overlay.png, annotations.json}")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..api import prompt_batch
    from ..export import mask_png, unique_names

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
    model = load_sam(args.model, args.device)
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
