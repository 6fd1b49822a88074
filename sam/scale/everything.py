"""Segment everything over a folder: every mask of each image, written as segment-anything's scripts/amg.py.

format "png": OUTPUT/<image>/0.png, 1.png, ... (255 inside the mask) and metadata.csv with amg.py's
columns, written last (a folder with metadata.csv is complete). format "coco": OUTPUT/<image>.json, the
generator's records with COCO RLE masks. The same job runs in this process or on Ray (`engine="ray"`).
"""

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .files import Summary, write_atomic

METADATA_HEADER = (
    "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,stability_score,"
    "crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
)
FORMATS = ("png", "coco")


def write_masks_to_folder(records: list[dict], folder: Path) -> None:
    """N.png per mask and metadata.csv (amg.py's columns, written last), replacing those of an earlier run."""
    from ..export import mask_png

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metadata.csv").unlink(missing_ok=True)  # the folder is incomplete until it is written again
    for old in folder.glob("*.png"):
        if old.stem.isdigit():
            old.unlink()
    rows = [METADATA_HEADER]
    for i, r in enumerate(records):
        write_atomic(folder / f"{i}.png", mask_png(r["segmentation"]))
        values = [i, r["area"], *r["bbox"], *r["point_coords"][0], r["predicted_iou"], r["stability_score"]]
        rows.append(",".join(str(v) for v in [*values, *r["crop_box"]]))
    write_atomic(folder / "metadata.csv", "\n".join(rows))


class EverythingJob:
    """Segment everything for one image at a time (see sam.scale.ray_engine.Job); picklable without its model.

    model: a name or path load_model takes, or a Sam module (pickled to each Ray worker as it is).
    settings: SamAutomaticMaskGenerator's arguments (points_per_side, pred_iou_thresh, ...).
    """

    def __init__(self, model: Any, output: str | Path, format: str = "png", device: str = "cpu", **settings) -> None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        local = isinstance(model, str | Path) and Path(model).expanduser().exists()
        self.model = str(Path(model).expanduser().absolute()) if local else model
        self.output = Path(output).absolute()
        self.format = format
        self.device = device
        self.settings = settings
        self.generator = None

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__, generator=None)  # each worker loads its own

    def targets(self, paths: list[Path]) -> list[str]:
        from ..export import unique_names

        names = unique_names([p.stem for p in paths])
        return [n + ".json" for n in names] if self.format == "coco" else names

    def complete(self, target: str) -> bool:
        if self.format == "coco":
            return (self.output / target).is_file()
        return (self.output / target / "metadata.csv").is_file()

    def load(self) -> None:
        from ..automatic import SamAutomaticMaskGenerator
        from ..weights import load_model

        model = load_model(self.model, device=self.device) if isinstance(self.model, str) else self.model
        mode = "coco_rle" if self.format == "coco" else "binary_mask"
        self.generator = SamAutomaticMaskGenerator(model.to(self.device), output_mode=mode, **self.settings)

    def run(self, path: Path, image: np.ndarray, target: str, progress: Callable | None = None) -> int:
        """Masks of one HxWx3 uint8 RGB image, written under target; returns how many."""
        if self.generator is None:
            self.load()
        records = self.generator.generate(image, progress=progress)
        if self.format == "coco":
            write_atomic(self.output / target, json.dumps(records))
        else:
            write_masks_to_folder(records, self.output / target)
        return len(records)


def run_here(
    job: EverythingJob, paths: list[Path], overwrite: bool, progress: bool, on_image: Callable | None
) -> Summary:
    """The job in this process, image after image; unreadable images are reported and skipped."""
    from tqdm import tqdm

    from ..images import ImageError
    from ..sources import read_file

    start = time.perf_counter()
    summary = Summary(output=str(job.output), engine="local", images=len(paths))
    job.output.mkdir(parents=True, exist_ok=True)
    one = len(paths) == 1
    point_bar = dict(unit="point", leave=False, file=sys.stderr, disable=not (one and progress))
    items = list(zip(paths, job.targets(paths)))
    for path, target in tqdm(items, desc="everything", unit="image", disable=one or not progress, file=sys.stderr):
        if not overwrite and job.complete(target):
            summary.skipped += 1
            continue
        row = {"path": str(path), "masks": 0, "error": "", "target": target}
        try:
            image = read_file(path)
        except ImageError as e:
            row["error"] = str(e)
            summary.failures.append({"path": str(path), "error": str(e)})
        else:
            with tqdm(desc=path.name, **point_bar) as bar:

                def advance(done: int, total: int, bar=bar) -> None:
                    bar.total = total
                    bar.update(done - bar.n)

                row["masks"] = job.run(path, image, target, progress=advance)
            summary.done += 1
        if on_image is not None:
            on_image(row)
    summary.seconds = time.perf_counter() - start
    return summary


def segment_everything(
    source: str | Path,
    output: str | Path,
    model: Any = "sam-vit-base",
    format: str = "png",
    device: str = "cpu",
    overwrite: bool = False,
    engine: str = "local",
    address: str | None = None,
    actors: int | None = None,
    cpus_per_actor: int | None = None,
    progress: bool = False,
    on_image: Callable[[dict[str, Any]], None] | None = None,
    **settings: Any,
) -> Summary:
    """Every mask of each image of source (file, folder or glob), written under output; returns the summary.

    model: a name of the models table, a checkpoint path or a Sam module; settings: the generator's
    (points_per_side=16, crop_n_layers=1, ...). Images whose outputs are complete are skipped unless
    overwrite; an unreadable image is reported in the summary and the others are done.
    engine "ray": on Ray Data (`pip install .[scale]`), at `address` (None: a local Ray started for the job,
    or the one this process has), with `actors` actors of `cpus_per_actor` CPUs; the summary is also
    written to output/_summary.json. on_image gets one dict per image done or failed ({"path", "masks",
    "error", ...}).
    """
    from ..images import list_images

    paths = list_images(source)
    job = EverythingJob(model, output, format, device, **settings)
    if engine == "local":
        return run_here(job, paths, overwrite, progress, on_image)
    if engine != "ray":
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    from .ray_engine import run_job

    return run_job(job, paths, address, actors, cpus_per_actor, overwrite, on_image)
