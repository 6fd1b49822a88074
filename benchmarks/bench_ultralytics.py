"""The Ultralytics docs' headline job, `SAM("sam_b.pt")(ASSETS)`, ours beside Ultralytics' in one run.

Segment everything (no prompt) on Ultralytics' two sample images (bus.jpg 810x1080, zidane.jpg 1280x720)
for sam_b.pt and mobile_sam.pt, with the same random weights in both (Meta's state dicts, which is what
Ultralytics' files hold), each implementation with its own defaults for segment everything (both: a 32x32
grid, predicted IoU >= 0.88, stability >= 0.95 (offset 1.0 in ours as in Meta's, 0.95 in theirs), box NMS
0.7, no crops). Their docs report 49.4 s per image
for SAM-b and 25.4 s for MobileSAM on an Apple M4 Pro. The implementations take turns image by image; each
time is the whole call (embedding, decoder, filtering, masks at the image's size). With random weights the
number of masks kept differs between the two (both are printed): real weights keep more, and the time of
both grows with it. Both run on every core (`--threads`): Ultralytics otherwise sets torch to one
thread fewer than the cores at each predictor setup, which is one thread on a 2-core machine.

Ultralytics is AGPL-3.0 and only this benchmark uses it; install it beside the project, in a separate
environment that sees the project's packages:

    python -m venv --system-site-packages .venv-ultralytics
    .venv-ultralytics/bin/pip install ultralytics
    .venv-ultralytics/bin/python benchmarks/bench_ultralytics.py [--rounds 1] [--models sam_b.pt mobile_sam.pt]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_name  # noqa: E402
from sam.allocator import reuse_freed_memory  # noqa: E402
from sam.api import SAM  # noqa: E402
from sam.weights import load_model  # noqa: E402
from tests.helpers.hub import write_meta, write_mobile_sam  # noqa: E402

WRITERS = {"sam_b.pt": lambda p: write_meta(p, "vit_b"), "mobile_sam.pt": write_mobile_sam}


def ultralytics_sam(path: Path, threads: int):
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import SAM as UltralyticsSAM
    from ultralytics import settings
    from ultralytics.utils import torch_utils

    torch_utils.NUM_THREADS = threads  # its predictor sets torch's threads to this (cores - 1) at every setup

    settings.update({"sync": False})  # no analytics calls from a benchmark
    return UltralyticsSAM(str(path))


def timed(run, image: Path, threads: int) -> tuple[float, int]:
    start = time.perf_counter()
    results = run(image)
    seconds = time.perf_counter() - start
    assert torch.get_num_threads() == threads, f"ran on {torch.get_num_threads()} threads, not {threads}"
    masks = results[0].masks
    return seconds, 0 if masks is None else len(masks.data)


def run_model(name: str, folder: Path, images: list[Path], rounds: int, threads: int) -> list[dict]:
    path = WRITERS[name](folder / name)
    ours = {dtype: SAM(load_model(str(path), dtype=dtype)) for dtype in ("float32", "auto")}
    theirs = ultralytics_sam(path, threads)
    runners = {
        "ultralytics": lambda image: theirs(str(image), verbose=False, save=False),
        "ours fp32": lambda image: ours["float32"](str(image)),
        f"ours {ours['auto'].model.precision}": lambda image: ours["auto"](str(image)),
    }
    rows = []
    for image in images:
        times: dict[str, list[float]] = {k: [] for k in runners}
        counts: dict[str, int] = {}
        for r in range(rounds):
            order = list(runners) if r % 2 == 0 else list(reversed(runners))
            for label in order:
                seconds, counts[label] = timed(runners[label], image, threads)
                times[label].append(seconds)
                print(f"{name} {image.name} {label}: {seconds:.2f} s, {counts[label]} masks", file=sys.stderr)
        base = min(times["ultralytics"])
        for label, t in times.items():
            rows.append({"model": name, "image": image.name, "implementation": label, "best_s": round(min(t), 2),
                         "masks": counts[label], "speedup": round(base / min(t), 2)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(WRITERS), choices=list(WRITERS))
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for both")
    parser.add_argument("--rounds", type=int, default=1, help="calls per implementation and image (best is kept)")
    args = parser.parse_args()
    from ultralytics.utils import ASSETS

    torch.set_num_threads(args.threads)  # importing ultralytics sets it to (cores - 1): 1 on a 2-core machine
    reuse_freed_memory()
    torch.manual_seed(0)
    images = sorted(Path(ASSETS).glob("*.jpg"))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for name in args.models for row in run_model(name, Path(tmp), images, args.rounds, args.threads)]
    machine = (f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
               f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(json.dumps({"machine": machine, "rows": rows}, indent=1))
    print(f"\n{machine}\n\n| model | image | implementation | time | masks | vs Ultralytics |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['image']} | {r['implementation']} | {r['best_s']:.2f} s | {r['masks']} | "
              f"{r['speedup']:.2f}x |")
    per_model = {}
    for r in rows:
        per_model.setdefault((r["model"], r["implementation"]), []).append(r["best_s"])
    for (model, impl), t in per_model.items():
        print(f"{model} {impl}: {np.mean(t):.2f} s per image", file=sys.stderr)


if __name__ == "__main__":
    main()
