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
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

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


def timeit_bf16_autocast(fn, runs: int) -> float:
    """timeit under torch.autocast to bf16: how a reference implementation runs in bf16."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return timeit(fn, runs)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def embedding_rows(runs: int, bf16: bool) -> list[tuple[str, str, float]]:
    from segment_anything import SamPredictor as MetaPredictor
    from transformers import SamConfig as HFSamConfig
    from transformers import SamModel

    image = test_image(768, 1024)
    ref, ours = twin_models(CONFIGS["vit_b"], seed=0)
    meta_pred = MetaPredictor(ref)
    rows = [("ViT-B embedding", "segment-anything fp32", timeit(lambda: meta_pred.set_image(image), runs))]
    if bf16:
        t = timeit_bf16_autocast(lambda: meta_pred.set_image(image), runs)
        rows.append(("ViT-B embedding", "segment-anything bf16 autocast", t))
    hf = SamModel(HFSamConfig()).eval()
    hf.set_attn_implementation("eager")
    pixels = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        embed = hf.get_image_embeddings
        rows.append(("ViT-B embedding", "transformers fp32 eager", timeit(lambda: embed(pixels), runs)))
        if bf16:
            t = timeit_bf16_autocast(lambda: embed(pixels), runs)
            rows.append(("ViT-B embedding", "transformers bf16 autocast eager", t))
    pred = SamPredictor(ours)
    rows.append(("ViT-B embedding", "ours fp32", timeit(lambda: pred.set_image(image), runs)))
    if bf16:
        ours.set_precision(torch.bfloat16)
        rows.append(("ViT-B embedding", "ours bf16", timeit(lambda: pred.set_image(image), runs)))
    return rows


def tinyvit_rows(runs: int, bf16: bool) -> list[tuple[str, str, float]]:
    from mobile_sam import SamPredictor as MobilePredictor
    from mobile_sam import sam_model_registry

    image = test_image(768, 1024)
    ref = sam_model_registry["vit_t"]().eval()
    ref.load_state_dict(random_state_dict(ref), strict=False)
    ours = build_sam("tiny_vit")
    ours.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("pixel_")})
    meta_pred, pred = MobilePredictor(ref), SamPredictor(ours)
    rows = [("TinyViT embedding", "mobilesam-mirror fp32", timeit(lambda: meta_pred.set_image(image), runs))]
    if bf16:
        t = timeit_bf16_autocast(lambda: meta_pred.set_image(image), runs)
        rows.append(("TinyViT embedding", "mobilesam-mirror bf16 autocast", t))
    rows.append(("TinyViT embedding", "ours fp32", timeit(lambda: pred.set_image(image), runs)))
    if bf16:
        ours.set_precision(torch.bfloat16)
        rows.append(("TinyViT embedding", "ours bf16", timeit(lambda: pred.set_image(image), runs)))
    return rows


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


def table(rows: list[tuple[str, str, float]]) -> str:
    lines = ["| job | implementation | median | vs reference |", "| --- | --- | --- | --- |"]
    first: dict[str, float] = {}
    for job, impl, value in rows:
        first.setdefault(job, value)
        unit = "" if "GB" in job else " s" if value >= 1 else " ms"
        shown = f"{value:.2f}" if unit != " ms" else f"{value * 1000:.1f}"
        ratio = first[job] / value if "GB" not in job else value / first[job]
        lines.append(f"| {job} | {impl} | {shown}{unit} | {ratio:.2f}x |")
    return "\n".join(lines)


def main() -> None:
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
    rows = []
    for name in args.only or jobs:
        rows += jobs[name]()
        print(table(rows[-2:]), flush=True)
    print(f"\n{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"bf16 fast: {bf16_is_fast()}, threads {torch.get_num_threads()}, malloc {args.malloc}\n")
    print(table(rows))
    print("\nvs reference: speed-up over the first row of the job (memory: ratio to the first row)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
