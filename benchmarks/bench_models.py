"""The models a small CPU server can offer, side by side in one run: embedding and one click.

    python -m benchmarks.bench_models [--runs 3] [--bf16] [--only mobile-sam --only sam2.1-hiera-tiny]

For each model (random weights of the real sizes, built by `load_model("random:NAME")`): the median time
of embedding a 1024x768 image with `SamPredictor.set_image`, in fp32 and in bf16 (what `--precision
auto` picks where the CPU has AMX or AVX512-BF16; elsewhere bf16 is emulated and slow, so its rows run
only with --bf16), and of one click to three masks at 1024x768 with `predict`. The models take turns run
by run (bench_sam2.interleaved), so load from other processes falls on all of them alike; the load
average is printed before and after. The last column, seconds per TFLOP of the embedding (FLOPs from
sam.app.timings.GFLOP), shows how far the app's estimates for models not yet run can be off: the rate
differs between architectures.
"""

import argparse
import os

import numpy as np
import torch

from benchmarks.bench_sam2 import interleaved
from benchmarks.machine import cpu_name
from sam import SamPredictor
from sam.allocator import reuse_freed_memory
from sam.app.timings import gflop
from sam.precision import bf16_is_fast
from sam.weights import load_model
from tests.helpers.reference import test_image

MODELS = ("sam-vit-base", "mobile-sam", "sam2.1-hiera-tiny", "sam2.1-hiera-small")


def predictors(names: list[str], bf16: bool) -> dict[tuple[str, str], SamPredictor]:
    """(name, precision) -> a predictor on random weights of that model, seed 0 for every precision."""
    out = {}
    for name in names:
        for precision in ("float32", "bfloat16") if bf16 else ("float32",):
            torch.manual_seed(0)
            out[name, precision] = SamPredictor(load_model(f"random:{name}", dtype=precision))
    return out


def measure(names: list[str], runs: int, bf16: bool) -> tuple[dict, dict]:
    """({(name, precision): embedding seconds}, {name: click seconds}), medians."""
    image = test_image(768, 1024)
    preds = predictors(names, bf16)
    embed = interleaved({key: (lambda p=p: p.set_image(image)) for key, p in preds.items()}, runs)
    point = dict(point_coords=np.array([[500, 400]]), point_labels=np.array([1]))
    fp32 = {name: preds[name, "float32"] for name in names}
    for p in fp32.values():
        p.set_image(image)
    click = interleaved({name: (lambda p=p: p.predict(**point)) for name, p in fp32.items()}, max(10 * runs, 20))
    return embed, click


def table(names: list[str], embed: dict, click: dict, bf16: bool) -> str:
    precisions = ("float32", "bfloat16") if bf16 else ("float32",)
    short = {"float32": "fp32", "bfloat16": "bf16"}
    head = ["model", "GFLOP", *(f"embedding {short[p]}" for p in precisions), "click (fp32)",
            *(f"s per TFLOP {short[p]}" for p in precisions)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name in names:
        work = gflop(name)
        cells = [name, f"{work:.0f}", *(f"{embed[name, p]:.2f} s" for p in precisions), f"{click[name] * 1000:.0f} ms"]
        cells += [f"{embed[name, p] / work * 1000:.1f}" for p in precisions]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="time bf16 rows even where bf16 is not fast")
    parser.add_argument("--only", choices=MODELS, action="append")
    args = parser.parse_args()
    reuse_freed_memory()  # as the app does
    bf16 = args.bf16 or bf16_is_fast()
    names = args.only or list(MODELS)
    before = os.getloadavg()[0]
    embed, click = measure(names, args.runs, bf16)
    print(f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"bf16 fast: {bf16_is_fast()}; load average {before:.1f} before, {os.getloadavg()[0]:.1f} after; "
          f"median of {args.runs} embeddings after a warm-up, taking turns\n")
    print(table(names, embed, click, bf16))


if __name__ == "__main__":
    main()
