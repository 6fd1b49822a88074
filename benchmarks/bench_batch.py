"""Batch jobs: images per second in one process against Ray Data with 1 and 2 actors (docs/scale.md).

ViT-B and MobileSAM with random weights saved as checkpoint files (each Ray actor loads its own copy, as in
a real run), 1024x768 synthetic images, two jobs: boxes (auto_annotate from YOLO box labels, 3 boxes an
image) and everything (segment everything, COCO output). One process runs the job as auto_annotate and
segment_everything do (`job.load()`, then `job.run()` per image); the Ray runs use one local Ray (started
once, its start timed apart) and `run_job`, with the machine's CPUs split between the actors. Prints a
markdown table, best of --rounds runs: wall time of the job (model loads included), images per second, the
median seconds an image takes in a worker, and the load average before each run (on a shared machine other
work moves the numbers, by 10x for a few seconds at a time: hence the rounds, in rotating order).

    python benchmarks/bench_batch.py                         # 4 images, 16x16 points for everything
    python benchmarks/bench_batch.py --images 8 --points-per-side 32 --models tiny_vit
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_name  # noqa: E402
from sam.allocator import reuse_freed_memory  # noqa: E402
from sam.annotate import AnnotateJob  # noqa: E402
from sam.build import build_sam  # noqa: E402
from sam.scale.everything import EverythingJob  # noqa: E402
from sam.scale.ray_engine import connect, run_job  # noqa: E402
from tests.helpers.reference import test_image  # noqa: E402

MODELS = {"vit_b": "ViT-B", "tiny_vit": "MobileSAM"}
BOXES = "0 0.30 0.40 0.25 0.30\n1 0.65 0.50 0.30 0.40\n0 0.50 0.75 0.60 0.20\n"  # YOLO: class cx cy w h


def make_data(root: Path, images: int, models: list[str]) -> None:
    """root/images/*.png, root/boxes/*.txt and root/<model>.pth (random weights, seed 0)."""
    (root / "images").mkdir()
    (root / "boxes").mkdir()
    for i in range(images):
        Image.fromarray(test_image(768, 1024, seed=i)).save(root / "images" / f"im{i:03d}.png")
        (root / "boxes" / f"im{i:03d}.txt").write_text(BOXES)
    for name in models:
        torch.manual_seed(0)
        torch.save(build_sam(name).state_dict(), root / f"{name}.pth")


def make_job(task: str, root: Path, model: str, out: Path, points: int):
    checkpoint = str(root / f"{model}.pth")
    if task == "boxes":
        return AnnotateJob(out, root / "boxes", checkpoint, "cpu")
    return EverythingJob(checkpoint, out, "coco", "cpu", points_per_side=points)


def one_process(job, paths: list[Path]) -> tuple[float, list[float]]:
    """(wall seconds, seconds per image) of the job in this process, all cores to torch."""
    from sam.sources import read_file

    start = time.perf_counter()
    job.output.mkdir(parents=True)
    job.load()
    per_image = []
    for path, target in zip(paths, job.targets(paths)):
        t = time.perf_counter()
        job.run(path, read_file(path), target)
        per_image.append(time.perf_counter() - t)
    return time.perf_counter() - start, per_image


def on_ray(job, paths: list[Path], actors: int, cpus: int) -> tuple[float, list[float]]:
    rows = []
    start = time.perf_counter()
    summary = run_job(job, paths, actors=actors, cpus_per_actor=cpus, on_image=rows.append)
    assert summary.done == len(paths), summary.failures
    return time.perf_counter() - start, [r["seconds"] for r in rows]


def run_all(root: Path, args: argparse.Namespace, cores: int) -> tuple[dict, float]:
    """{(model, job, engine, workers): [(wall, seconds per image, load average) per round]}; Ray's start time.

    Each round runs the three engines of a model and job one after the other, starting with the next engine
    each round, so that a burst of other work on the machine does not always fall on the same one.
    """
    make_data(root, args.images, args.models)
    paths = sorted((root / "images").iterdir())
    start = time.perf_counter()
    connect(num_cpus=cores)
    ray_start = time.perf_counter() - start
    engines = [("one process", None, cores), ("Ray, 1 actor", 1, cores), ("Ray, 2 actors", 2, max(1, cores // 2))]
    runs: dict[tuple, list] = {}
    for r in range(args.rounds):
        for model in args.models:
            for task in args.tasks:
                for engine, actors, cpus in engines[r % 3 :] + engines[: r % 3]:
                    out = root / f"out_{model}_{task}_{actors}_{r}"
                    job = make_job(task, root, model, out, args.points_per_side)
                    load = os.getloadavg()[0]
                    wall, per_image = one_process(job, paths) if actors is None else on_ray(job, paths, actors, cpus)
                    key = (MODELS[model], task, engine, f"{actors or 1} x {cpus}")
                    runs.setdefault(key, []).append((wall, per_image, load))
                    print(f"round {r + 1}, {key}: {wall:.1f} s", file=sys.stderr, flush=True)
    return runs, ray_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each engine; the best is shown")
    parser.add_argument("--points-per-side", type=int, default=16, help="segment everything's grid")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--tasks", nargs="+", choices=("boxes", "everything"), default=["boxes", "everything"])
    args = parser.parse_args()
    reuse_freed_memory()  # as the command line does (and each Ray actor)
    cores = os.cpu_count() or 1
    root = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        runs, ray_start = run_all(root, args, cores)
    finally:
        shutil.rmtree(root)
    print(
        f"\nBatch jobs, {args.images} images of 1024x768, random weights, fp32; everything: "
        f"{args.points_per_side}x{args.points_per_side} points, COCO output; boxes: 3 boxes an image."
    )
    print(
        f"CPU: {cpu_name()}, {cores} cores, torch {torch.__version__}; local Ray started in {ray_start:.1f} s "
        f"(not in the times below). Best of {args.rounds} rounds; the load average before each run (a shared "
        "machine) in the last column.\n"
    )
    print("| model | job | engine | workers x threads | wall (loads included) | images/s | s per image | load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (model, task, engine, workers), results in runs.items():
        wall, per_image, _ = min(results, key=lambda run: run[0])
        loads = "/".join(f"{load:.1f}" for _, _, load in results)
        rate, median = len(per_image) / wall, statistics.median(per_image)
        print(f"| {model} | {task} | {engine} | {workers} | {wall:.1f} s | {rate:.2f} | {median:.2f} s | {loads} |")


if __name__ == "__main__":
    main()
