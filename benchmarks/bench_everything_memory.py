"""Peak memory of segment everything as the app runs it, for 16/32/64 points per side, thresholds default and 0.

    python benchmarks/bench_everything_memory.py [--model vit_b] [--sides 16 32 64]

Each setting runs in a fresh process that loads the model (random weights of the real size) and an
embedding computed once beforehand, then calls the generator as sam.app.everything.everything does
(uncompressed RLE, at most 255 masks, logits beyond 256 MB on disk). Reported: resident memory before
the run, the peak during it (the high-water mark, reset once the model is loaded), their difference,
the time, the records. Linux only (/proc/self).
"""

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
from sam.allocator import reuse_freed_memory
reuse_freed_memory()
from sam.automatic import SamAutomaticMaskGenerator
from sam.build import build_sam
from sam.predictor import ImageEmbedding

def status_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

config, emb_path, side, zero = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
model = build_sam(config).eval()
model.load_state_dict(torch.load(emb_path.replace(".pt", ".weights"), weights_only=True))
saved = torch.load(emb_path, weights_only=True)
embedding = ImageEmbedding(saved["features"], tuple(saved["original_size"]), tuple(saved["input_size"]))
image = saved["image"].numpy()
thresholds = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0) if zero else {}
gen = SamAutomaticMaskGenerator(model, points_per_side=side, output_mode="uncompressed_rle", **thresholds)
before = status_mb("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # the high-water mark starts again here: loading is not counted
    f.write("5")
start = time.perf_counter()
records = gen.generate(image, embedding=embedding, max_masks=255)
seconds = time.perf_counter() - start
peak = status_mb("VmHWM")
print(json.dumps({"before_mb": before, "peak_mb": peak, "seconds": seconds, "records": len(records)}))
"""


def embed(config: str, path: Path) -> None:
    """An embedding of a test image by the model with seed-0 random weights, saved for the runs."""
    import numpy as np
    import torch

    from sam import SamPredictor
    from sam.build import build_sam

    torch.manual_seed(0)
    model = build_sam(config).eval()
    torch.save(model.state_dict(), path.with_suffix(".weights"))
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(120, 60, (768, 1024, 3)), 0, 255).astype(np.uint8)
    predictor = SamPredictor(model)
    predictor.set_image(image)
    e = predictor.embedding
    torch.save({"features": e.features, "original_size": list(e.original_size), "input_size": list(e.input_size),
                "image": torch.from_numpy(image)}, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b", help="a name in sam.build.CONFIGS")
    parser.add_argument("--sides", type=int, nargs="+", default=[16, 32, 64])
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from benchmarks.machine import cpu_name

    print(f"# {cpu_name()}, {platform.python_version()}, model {args.model} (random weights), image 1024x768")
    print("| points per side | thresholds | RSS before | peak RSS | peak - before | time | records |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        emb = Path(tmp) / "embedding.pt"
        embed(args.model, emb)
        for side in args.sides:
            for zero in (False, True):
                cmd = [sys.executable, "-c", CHILD, str(ROOT), args.model, str(emb), str(side), "1" if zero else "0"]
                out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                print(
                    f"| {side} | {'0 and 0' if zero else 'default'} | {out['before_mb']:.0f} MB | "
                    f"{out['peak_mb']:.0f} MB | {out['peak_mb'] - out['before_mb']:.0f} MB | "
                    f"{out['seconds']:.1f} s | {out['records']} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
