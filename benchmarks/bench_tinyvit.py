"""MobileSAM's TinyViT image encoder: mobilesam-mirror against ours, timed side by side in one run.

    python benchmarks/bench_tinyvit.py [--runs 7] [--bf16-runs 3] [--bf16] [--threads N]

The same random weights in both, one preprocessed 1x3x1024x1024 input, the encoder alone (no resizing).
Each row is the median wall time of its runs after one warm-up call. bf16: mobile_sam under
torch.autocast; ours with its weights cast to bf16 (what Sam.set_precision does) and under autocast.
bf16 rows run where the CPU has AMX or AVX512-BF16, or with --bf16: elsewhere PyTorch emulates bf16,
which takes minutes per run.
Prints a markdown table with the ratios, the CPU, the thread count and the torch version.
"""

import argparse
import copy
import statistics
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_name  # noqa: E402
from sam.build import build_sam  # noqa: E402
from sam.precision import bf16_is_fast  # noqa: E402
from tests.helpers.reference import random_tinyvit_weights  # noqa: E402

with warnings.catch_warnings():  # mobile_sam imports timm's deprecated module paths
    warnings.simplefilter("ignore")
    import mobile_sam


@torch.no_grad()
def timed(encoder: torch.nn.Module, x: torch.Tensor, runs: int, autocast: bool) -> tuple[float, torch.Tensor]:
    """(median seconds over runs after one warm-up call, output as fp32)."""
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()
    with ctx:
        out = encoder(x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            encoder(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times), out.float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed fp32 runs per row")
    parser.add_argument("--bf16-runs", type=int, default=3, help="timed bf16 runs per row")
    parser.add_argument("--bf16", action="store_true", help="time bf16 even where the CPU emulates it")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ref = mobile_sam.sam_model_registry["vit_t"]()
    ref.load_state_dict(random_tinyvit_weights(ref, seed=0))
    ref.eval()  # mobile_sam caches its attention biases in eval(), so after loading
    ours = build_sam("tiny_vit")
    ours.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("pixel_")})
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))

    cases = [  # (implementation, precision, encoder, input, runs, autocast)
        ("mobilesam-mirror", "fp32", ref.image_encoder, x, args.runs, False),
        ("ours", "fp32", ours.image_encoder, x, args.runs, False),
    ]
    if args.bf16 or bf16_is_fast():
        ours16 = copy.deepcopy(ours.image_encoder).to(torch.bfloat16)
        cases += [
            ("mobilesam-mirror", "bf16 autocast", ref.image_encoder, x, args.bf16_runs, True),
            ("ours", "bf16 autocast", ours.image_encoder, x, args.bf16_runs, True),
            ("ours", "bf16 weights", ours16, x.to(torch.bfloat16), args.bf16_runs, False),
        ]
    results = []
    for name, precision, encoder, inp, runs, autocast in cases:
        seconds, out = timed(encoder, inp, runs, autocast)
        results.append((name, precision, seconds, out))
        print(f"{name} {precision}: {seconds * 1e3:.0f} ms", file=sys.stderr)

    ref_fp32 = results[0][3]
    base = {p: s for n, p, s, _ in results if n == "mobilesam-mirror"}
    print(f"TinyViT encoder, 1x3x1024x1024, {cpu_name()}, {args.threads} threads, torch {torch.__version__}, ", end="")
    print(f"bf16 {'native' if bf16_is_fast() else 'emulated (no AMX / AVX512-BF16)'}\n")
    print("| implementation | precision | median ms | vs mobilesam fp32 | vs mobilesam bf16 | rel. L2 error |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, precision, seconds, out in results:
        err = float((out - ref_fp32).norm() / ref_fp32.norm())
        vs16 = f"{base['bf16 autocast'] / seconds:.2f}x" if "bf16 autocast" in base and precision != "fp32" else ""
        print(f"| {name} | {precision} | {seconds * 1e3:.0f} | {base['fp32'] / seconds:.2f}x | {vs16} | {err:.1e} |")
    print("\nRatios: speed-up (reference time / this time). Error: relative L2 distance to mobilesam's fp32 embedding.")


if __name__ == "__main__":
    main()
