"""Our SAM against the reference implementations, timed side by side in one run on this machine.

    python -m benchmarks.bench_speed [--runs 3] [--bf16]

Rows: ViT-B embedding of a 1024x768 image (Meta's SamPredictor.set_image, transformers' SamModel,
ours; the references also under bf16 autocast where bf16 runs), TinyViT embedding (mobilesam-mirror,
ours), one click -> masks at the original resolution, ViT-B load from the local Hub cache, and peak
resident memory of a process that loads ViT-B and embeds one image. Random weights of the real sizes;
the same weights in Meta's model and ours.
bf16 rows run where the CPU has AMX or AVX512-BF16 (or with --bf16): elsewhere bf16 is emulated and slow.
"""

import argparse
import copy
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.machine import cpu_name
from sam import ImageEmbedding, SamPredictor
from sam.allocator import reuse_freed_memory
from sam.build import CONFIGS, build_sam
from sam.precision import bf16_is_fast
from tests.helpers.reference import random_state_dict, test_image, twin_models

ROOT = Path(__file__).resolve().parents[1]


def timeit(fn, runs: int, warmup: int = 1) -> float:
    """Median wall time of fn in seconds, after warm-up calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def embedding_rows(runs: int, bf16: bool) -> list[tuple[str, str, float]]:
    from segment_anything import SamPredictor as MetaPredictor
    from transformers import SamConfig as HFSamConfig
    from transformers import SamModel

    from benchmarks.bench_sam2 import autocast_bf16, interleaved  # imports bench_speed: not at the top

    image = test_image(768, 1024)
    ref, ours = twin_models(CONFIGS["vit_b"], seed=0)
    meta_pred = MetaPredictor(ref)
    hf = SamModel(HFSamConfig()).eval()
    hf.set_attn_implementation("eager")
    pixels = torch.randn(1, 3, 1024, 1024)
    embed = torch.no_grad()(hf.get_image_embeddings)
    pred, pred16 = SamPredictor(ours), SamPredictor(copy.deepcopy(ours).set_precision(torch.bfloat16))
    fns = {"segment-anything fp32": lambda: meta_pred.set_image(image)}
    if bf16:
        fns["segment-anything bf16 autocast"] = autocast_bf16(lambda: meta_pred.set_image(image))
    fns["transformers fp32 eager"] = lambda: embed(pixels)
    if bf16:
        fns["transformers bf16 autocast eager"] = autocast_bf16(lambda: embed(pixels))
    fns["ours fp32"] = lambda: pred.set_image(image)
    if bf16:
        fns["ours bf16"] = lambda: pred16.set_image(image)
    return [("ViT-B embedding", impl, t) for impl, t in interleaved(fns, runs).items()]


def tinyvit_rows(runs: int, bf16: bool) -> list[tuple[str, str, float]]:
    from mobile_sam import SamPredictor as MobilePredictor
    from mobile_sam import sam_model_registry

    from benchmarks.bench_sam2 import autocast_bf16, interleaved  # imports bench_speed: not at the top

    image = test_image(768, 1024)
    ref = sam_model_registry["vit_t"]().eval()
    ref.load_state_dict(random_state_dict(ref), strict=False)
    ours = build_sam("tiny_vit")
    ours.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("pixel_")})
    meta_pred, pred = MobilePredictor(ref), SamPredictor(ours)
    pred16 = SamPredictor(copy.deepcopy(ours).set_precision(torch.bfloat16))
    fns = {"mobilesam-mirror fp32": lambda: meta_pred.set_image(image)}
    if bf16:
        fns["mobilesam-mirror bf16 autocast"] = autocast_bf16(lambda: meta_pred.set_image(image))
    fns["ours fp32"] = lambda: pred.set_image(image)
    if bf16:
        fns["ours bf16"] = lambda: pred16.set_image(image)
    return [("TinyViT embedding", impl, t) for impl, t in interleaved(fns, runs).items()]


def click_rows(runs: int) -> list[tuple[str, str, float]]:
    from segment_anything import SamPredictor as MetaPredictor

    image = test_image(768, 1024)
    ref, ours = twin_models(CONFIGS["vit_b"], seed=0)
    meta_pred, pred = MetaPredictor(ref), SamPredictor(ours)
    meta_pred.set_image(image)
    pred.set_embedding(ImageEmbedding(meta_pred.features, meta_pred.original_size, meta_pred.input_size))
    point = dict(point_coords=np.array([[500, 400]]), point_labels=np.array([1]))
    n = max(runs * 5, 20)
    return [
        ("click -> 3 masks at 1024x768", "segment-anything predict", timeit(lambda: meta_pred.predict(**point), n, 3)),
        ("click -> 3 masks at 1024x768", "ours predict", timeit(lambda: pred.predict(**point), n, 3)),
    ]


def load_rows(runs: int) -> list[tuple[str, str, float]]:
    """ViT-B from the local Hub cache: transformers' from_pretrained and our load_model on the same files."""
    from huggingface_hub import constants
    from transformers import SamModel

    from sam.weights import load_model
    from tests.helpers.hub import Checkpoints, LocalHub

    with tempfile.TemporaryDirectory() as tmp:
        folder = Checkpoints(Path(tmp)).transformers("vit_b")
        hub = LocalHub()
        hub.add("facebook/sam-vit-base", folder)
        url = hub.start()
        constants.ENDPOINT = url
        constants.HUGGINGFACE_CO_URL_TEMPLATE = url + "/{repo_id}/resolve/{revision}/{filename}"
        constants.HF_HUB_CACHE = str(Path(tmp) / "hub")
        load_model("sam-vit-base")  # fills the cache
        hub.stop()
        constants.HF_HUB_OFFLINE = True
        hf = timeit(lambda: SamModel.from_pretrained("facebook/sam-vit-base", cache_dir=constants.HF_HUB_CACHE), runs)
        ours = timeit(lambda: load_model("sam-vit-base"), runs)
        constants.HF_HUB_OFFLINE = False
        rows = [("ViT-B load from the Hub cache", "transformers from_pretrained", hf)]
        rows.append(("ViT-B load from the Hub cache", "ours load_model", ours))
        rows += memory_rows(folder)
    return rows


MEMORY_SCRIPT = """
import sys, numpy as np, torch
from tests.helpers.reference import test_image
if sys.argv[1] == "ours":
    from sam import ImageEmbedding, SamPredictor
    from sam.weights import load_model
    predictor = SamPredictor(load_model(sys.argv[2], dtype=sys.argv[3]))
else:
    from segment_anything import SamPredictor, sam_model_registry
    predictor = SamPredictor(sam_model_registry["vit_b"]())
predictor.set_image(test_image(768, 1024))
predictor.predict(point_coords=np.array([[500, 400]]), point_labels=np.array([1]))
for line in open("/proc/self/status"):
    if line.startswith("VmHWM"):
        print(int(line.split()[1]) * 1024)
"""


def peak_rss(*args: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return float(out.stdout.split()[-1])


def memory_rows(folder: Path) -> list[tuple[str, str, float]]:
    job = "peak memory, ViT-B + one image (GB)"
    rows = [(job, "segment-anything", peak_rss("meta") / 1e9)]
    rows.append((job, "ours fp32", peak_rss("ours", str(folder), "float32") / 1e9))
    if bf16_is_fast():
        rows.append((job, "ours bf16", peak_rss("ours", str(folder), "bfloat16") / 1e9))
    return rows


def table(rows: list[tuple[str, str, float]], floors: dict[str, dict[str, float]] | None = None) -> str:
    """Markdown table of (job, implementation, value) rows; with floors ({job: {"fp32": s, "bf16": s}}), also
    each embedding row's time over the floor of its precision."""
    head = "| job | implementation | median | vs reference |" + (" vs floor |" if floors else "")
    lines = [head, "| --- | --- | --- | --- |" + (" --- |" if floors else "")]
    first: dict[str, float] = {}
    for job, impl, value in rows:
        first.setdefault(job, value)
        unit = "" if "GB" in job else " s" if value >= 1 else " ms"
        shown = f"{value:.2f}" if unit != " ms" else f"{value * 1000:.1f}"
        ratio = first[job] / value if "GB" not in job else value / first[job]
        line = f"| {job} | {impl} | {shown}{unit} | {ratio:.2f}x |"
        if floors:
            precision = "bf16" if "bf16" in impl else "fp32"
            line += f" {value / floors[job][precision]:.2f}x |" if job in floors else " |"
        lines.append(line)
    return "\n".join(lines)


def embedding_floors(rates: dict[str, float]) -> tuple[list[tuple[str, str, float]], dict[str, dict[str, float]]]:
    """(floor rows, {job: {precision: seconds}}) of the two embeddings at the given matrix-product rates."""
    from benchmarks.bench_floor import flops

    image = torch.zeros(1, 3, 1024, 1024)
    encoders = {"ViT-B embedding": build_sam("vit_b"), "TinyViT embedding": build_sam("tiny_vit")}
    work = {job: flops(functools.partial(model.eval().image_encoder, image)) for job, model in encoders.items()}
    floors = {job: {k: f / rate for k, rate in rates.items()} for job, f in work.items()}
    rows = [(job, f"floor {k} ({work[job] / 1e9:.0f} GFLOP)", t) for job, fl in floors.items() for k, t in fl.items()]
    return rows, floors


def main() -> None:
    from benchmarks.bench_floor import floor_rates

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="time bf16 rows even where bf16 is not fast")
    parser.add_argument("--only", choices=["embedding", "tinyvit", "click", "load"], action="append")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--malloc", choices=["tuned", "default"], default="tuned",
                        help="tuned: sam.allocator.reuse_freed_memory(), for every implementation in the run")
    args = parser.parse_args()
    if args.malloc == "tuned":
        reuse_freed_memory()
    bf16 = args.bf16 or bf16_is_fast()
    jobs = {"embedding": lambda: embedding_rows(args.runs, bf16), "tinyvit": lambda: tinyvit_rows(args.runs, bf16),
            "click": lambda: click_rows(args.runs), "load": lambda: load_rows(args.runs)}
    rates, rows, loads = floor_rates(), [], [os.getloadavg()[0]]
    for name in args.only or jobs:
        rows += jobs[name]()
        loads.append(os.getloadavg()[0])
        print(table(rows[-2:]), flush=True)
    rates = {k: max(v, floor_rates()[k]) for k, v in rates.items()}  # the best of before and after
    floor_rows, floors = embedding_floors(rates)
    rows = [r for job in dict.fromkeys(r[0] for r in rows) for r in rows + floor_rows if r[0] == job]
    print(f"\n{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"bf16 fast: {bf16_is_fast()}, threads {torch.get_num_threads()}, malloc {args.malloc}, "
          f"load average {min(loads):.1f} to {max(loads):.1f}; matrix product {rates['fp32'] / 1e9:.0f} GFLOP/s fp32, "
          f"{rates['bf16'] / 1e9:.0f} GFLOP/s bf16\n")
    print(table(rows, floors))
    print("\nvs reference: speed-up over the first row of the job (memory: ratio to the first row); "
          "vs floor: time over the floor of the row's precision (FLOPs / best matrix-product rate)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
