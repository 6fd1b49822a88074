"""`sam predict SOURCE [--points X,Y ...] [--labels L ...] [--bboxes X0,Y0,X1,Y1 ...] [--output DIR]`, or in
Ultralytics' form, `sam predict model=sam_b.pt source=image.jpg points=[[400,370]] labels=[1]`.

With flags, --points describe one object and each --bboxes box gives a mask. With key=value, the values
are those of the Python call `SAM(model)(source, points=..., labels=..., bboxes=...)`: points=[[x, y], [x, y]]
are two objects, points=[[[x, y], [x, y]]] one. No prompt segments everything. Each image gets
OUTPUT/<image>/{masks/N.png, overlay.png, annotations.json}; OUTPUT is --output, or project/name
(runs/segment/predict, predict2, ... by default, as Ultralytics does).
"""

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    DEFAULT_MODEL,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    find_images,
    load_sam,
    numbers,
    read_images,
    split_pairs,
)

PASSED_OPTIONS = ("conf", "imgsz", "retina_masks")  # call options that key=value hands to the model as they are


@dataclass
class Request:
    source: str
    model: str
    device: str
    prompts: dict[str, Any]  # points, labels, bboxes as the Python call takes them
    multimask: bool
    output: Path | None  # None: project/name, made when the first image is written
    run: dict[str, Any] = field(default_factory=dict)  # project, name, exist_ok
    extra: dict[str, Any] = field(default_factory=dict)  # passed on: conf, imgsz, segment-everything settings
    progress: bool = True


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="masks from points / boxes (or everything) for an image, folder or glob",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument(
        "inputs", nargs="+", metavar="SOURCE | KEY=VALUE",
        help="image file, folder or glob pattern (quote it); or key=value pairs: model=, source=, points=, "
        "labels=, bboxes=, multimask_output=, conf=, device=, project=, name=, exist_ok=, verbose=, and "
        "segment-everything settings (points_stride=, crop_n_layers=, ...)",
    )  # fmt: skip
    p.add_argument("--points", nargs="+", type=numbers(2, "X,Y"), metavar="X,Y", help="points of one object")
    p.add_argument("--labels", nargs="+", type=int, choices=(0, 1), metavar="L", help="1 foreground, 0 background")
    p.add_argument("--bboxes", nargs="+", type=numbers(4, "X0,Y0,X1,Y1"), metavar="X0,Y0,X1,Y1", help="one mask each")
    p.add_argument("--multimask", action="store_true", help="three candidate masks per object")
    p.add_argument("--model", help=f"model name or checkpoint file (default {DEFAULT_MODEL})")
    p.add_argument("--device", help="cpu (default), cuda, cuda:1, 0, ...")
    p.add_argument("--output", help="OUTPUT/<image>/{masks/N.png, overlay.png, annotations.json} "
                   "(default runs/segment/predict, predict2, ...)")  # fmt: skip
    p.set_defaults(func=run)


def _once(name: str, flag: Any, pairs: dict[str, Any], default: Any = None) -> Any:
    """The value of --name or name= (not both), else default."""
    value = pairs.pop(name, None)
    if flag is not None and value is not None:
        raise CliError(f"--{name} and {name}= were both given: give it once", EXIT_USAGE)
    return flag if flag is not None else value if value is not None else default


def flag_prompts(args: argparse.Namespace) -> dict[str, Any]:
    """--points / --labels / --bboxes -> the Python call's prompts (all points describe one object)."""
    points, labels, boxes = args.points, args.labels, args.bboxes
    if labels is not None and points is None:
        raise CliError("--labels needs --points", EXIT_USAGE)
    if labels is not None and len(labels) != len(points):
        raise CliError(f"{len(points)} points but {len(labels)} labels", EXIT_USAGE)
    if points is not None and boxes is not None and len(boxes) > 1:
        raise CliError("--points go with one box; several boxes segment one object each", EXIT_USAGE)
    if points is not None and boxes is None:  # all points describe one object, as clicks in the app
        points, labels = [points], None if labels is None else [labels]
    return dict(points=points, labels=labels, bboxes=boxes)


def parse_request(args: argparse.Namespace) -> Request:
    """The flags and key=value pairs -> one Request; CliError (exit 2) for what cannot be combined or used."""
    from ..arguments import OPTION_NAMES, everything_arguments, split_arguments

    plain, pairs = split_pairs(args.inputs)
    sources = len(plain) + ("source" in pairs)
    if sources != 1:
        raise CliError(f"give one source (a file, folder or glob, or source=...), got {sources}", EXIT_USAGE)
    source = str(pairs.pop("source", plain[0] if plain else None))
    model = str(_once("model", args.model, pairs, DEFAULT_MODEL))
    device = str(_once("device", args.device, pairs, "cpu"))
    kv_prompts = {k: pairs.pop(k) for k in ("points", "labels", "bboxes") if k in pairs}
    flags = flag_prompts(args)
    if kv_prompts and any(v is not None for v in flags.values()):
        raise CliError("give the prompts as flags or as key=value, not both", EXIT_USAGE)
    multimask = bool(args.multimask or pairs.pop("multimask_output", False))
    if pairs.pop("save", True) is not True:
        raise CliError("save=False: the command line always writes its outputs (leave save out)", EXIT_USAGE)
    run = {k: pairs.pop(k) for k in ("project", "name", "exist_ok") if k in pairs}
    if run and args.output is not None:
        raise CliError("--output and project= / name= were both given: give one", EXIT_USAGE)
    progress = bool(pairs.pop("verbose", True))
    try:
        _, everything = split_arguments(pairs)
        taken = [k for k in pairs if k in OPTION_NAMES and k not in PASSED_OPTIONS]
        if taken:
            raise ValueError(f"{taken[0]}= is not taken by `sam predict`, which writes masks, overlay.png and "
                             "annotations.json for each image")  # fmt: skip
        everything_arguments(everything)
    except ValueError as e:
        raise CliError(str(e), EXIT_USAGE) from e
    prompts = kv_prompts or flags
    output = Path(args.output) if args.output is not None else None
    return Request(source, model, device, prompts, multimask, output, run, pairs, progress)


def run(args: argparse.Namespace) -> int:
    from ..api import prompt_batch
    from ..arguments import run_dir
    from ..export import mask_png, unique_names
    from ..sources import Decoded

    req = parse_request(args)
    try:
        if prompt_batch(**req.prompts) is not None and any(k not in PASSED_OPTIONS for k in req.extra):
            raise ValueError(f"{', '.join(req.extra)}: segment-everything settings (no prompt), not for prompts")
    except ValueError as e:
        raise CliError(str(e), EXIT_USAGE) from e
    paths = find_images(req.source)
    model = load_sam(req.model, req.device)
    output = req.output or run_dir(req.run.get("project"), req.run.get("name"), bool(req.run.get("exist_ok")))
    for path, image, stem in read_images(paths, unique_names([p.stem for p in paths]), "predict"):
        try:
            result = model(
                Decoded(image, str(path)), **req.prompts, multimask_output=req.multimask, verbose=False,
                progress=req.progress, **req.extra,
            )[0]  # fmt: skip
        except ValueError as e:  # a prompt off this image, a bad setting value
            raise CliError(f"{path}: {e}", EXIT_USAGE) from e
        folder = output / stem
        (folder / "masks").mkdir(parents=True, exist_ok=True)
        for i, mask in enumerate(result.mask_array()):
            (folder / "masks" / f"{i}.png").write_bytes(mask_png(mask))
        result.save(folder / "overlay.png")
        coco = result.to_coco(file_name=path.name)
        (folder / "annotations.json").write_text(json.dumps(coco), encoding="utf-8")
        scores = " ".join(f"{s:.3f}" for s in np.asarray(result.scores))
        print(f"{path}: {len(result)} masks (scores {scores or '-'}) -> {folder}")
    return EXIT_OK
