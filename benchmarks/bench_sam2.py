"""Our SAM 2 beside Meta's `sam2` package, timed side by side in one run on this machine, with the CPU's floor.

    python -m benchmarks.bench_sam2 [--runs 5] [--bf16] [--only hiera_tiny]

Rows, for Hiera-T and Hiera-S (SAM 2.1 sizes, random weights, the same in both): the embedding of a
1024x768 image (`SAM2ImagePredictor.set_image` against our `SamPredictor.set_image`, in fp32 and in bf16:
sam2's own code under `torch.autocast`, ours with `set_precision("bfloat16")`), one click to three masks
at 1024x768, and the floor of the embedding: its FLOPs (torch's FlopCounterMode) over the best measured
rate of a large matrix product on this CPU, fp32 and bf16, measured in the same run (best of before and
after). The implementations of a job take turns run by run, so load from other processes falls on all.
bf16 rows run where the CPU has AMX or AVX512-BF16 (or with --bf16): elsewhere bf16 is emulated and slow.
"""

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.bench_floor import flops, matmul_flops_per_s
from benchmarks.bench_speed import table
from benchmarks.machine import cpu_name
from sam import SamPredictor
from sam.allocator import reuse_freed_memory
from sam.build_sam2 import CONFIGS
from sam.precision import bf16_is_fast
from tests.helpers.reference import test_image
from tests.helpers.sam2_reference import YAMLS, twin_sam2

LABELS = {"hiera_tiny": "Hiera-T", "hiera_small": "Hiera-S"}


def matrix_rates() -> dict[str, float]:
    """Best FLOP/s of a large matrix product, fp32 and bf16 (smaller where bf16 is emulated: ~100x slower)."""
    fast = bf16_is_fast()
    return {
        "fp32": matmul_flops_per_s(2048, torch.float32),
        "bf16": matmul_flops_per_s(2048 if fast else 512, torch.bfloat16, 5 if fast else 2),
    }


def interleaved(fns: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median wall time of each fn in seconds, the fns taking turns (the order rotating) after one warm-up
    call each: on a shared machine, load that comes and goes then falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    names = list(fns)
    for r in range(runs):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def autocast_bf16(fn: Callable[[], object]) -> Callable[[], object]:
    """fn under torch.autocast to bf16: how sam2's own code runs in bf16."""

    def run() -> object:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn()

    return run


def model_rows(name: str, runs: int, bf16: bool) -> tuple[list[tuple[str, str, float]], list, float]:
    """(embedding rows, click rows, FLOPs of one embedding) for one of CONFIGS."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    image = test_image(768, 1024)
    ref, ours = twin_sam2(CONFIGS[name], seed=0, yaml=YAMLS[name])
    meta, pred = SAM2ImagePredictor(ref), SamPredictor(ours)
    embed = {"sam2 fp32": lambda: meta.set_image(image)}
    if bf16:
        embed["sam2 bf16 autocast"] = autocast_bf16(lambda: meta.set_image(image))
    embed["ours fp32"] = lambda: pred.set_image(image)
    if bf16:
        pred16 = SamPredictor(copy.deepcopy(ours).set_precision("bfloat16"))
        embed["ours bf16"] = lambda: pred16.set_image(image)
    job = f"{LABELS[name]} embedding"
    rows = [(job, impl, t) for impl, t in interleaved(embed, runs).items()]
    meta.set_image(image)  # fp32 embeddings for the clicks (the decoders run in fp32 either way)
    pred.set_image(image)
    point = dict(point_coords=np.array([[500, 400]]), point_labels=np.array([1]))
    click = {"sam2 predict": lambda: meta.predict(**point), "ours predict": lambda: pred.predict(**point)}
    clicks = [(f"{LABELS[name]} click -> 3 masks at 1024x768", impl, t)
              for impl, t in interleaved(click, max(runs * 10, 30)).items()]
    x = torch.zeros(1, 3, ours.img_size, ours.img_size)
    return rows, clicks, flops(lambda: ours.image_encoder(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="time bf16 rows even where bf16 is not fast")
    parser.add_argument("--only", choices=list(LABELS), action="append")
    args = parser.parse_args()
    reuse_freed_memory()  # for both implementations, as bench_speed does
    bf16 = args.bf16 or bf16_is_fast()
    rates = matrix_rates()
    measured = {}
    for name in args.only or LABELS:
        measured[name] = model_rows(name, args.runs, bf16)
        print(table(measured[name][0] + measured[name][1]), flush=True)
    rates = {k: max(v, matrix_rates()[k]) for k, v in rates.items()}  # the best of before and after
    rows = []
    for embedding, clicks, work in measured.values():
        floors = [(embedding[0][0], f"floor {k} ({work / 1e9:.0f} GFLOP)", work / r) for k, r in rates.items()]
        rows += embedding + floors[: 1 + bf16] + clicks
    print(f"\n{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, bf16 fast: {bf16_is_fast()}, "
          f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}; matrix product "
          f"{rates['fp32'] / 1e9:.0f} GFLOP/s fp32, {rates['bf16'] / 1e9:.0f} GFLOP/s bf16\n")
    print(table(rows))
    print("\nvs reference: speed-up over the first row of the job (sam2's fp32); floor: FLOPs / best matrix rate")


if __name__ == "__main__":
    main()
