"""What this CPU can do at best: matrix-product throughput, and the work of each job in FLOPs.

Divides each job's FLOPs (torch's FlopCounterMode: matrix products and convolutions) by the best measured
throughput of a large matrix product, fp32 and bf16, on the threads torch uses: the best of torch's own
product (MKL for fp32) and oneDNN's (`sam.modeling.common.linear`), since on AMD processors MKL's fp32
kernels reach about half of what the processor can do. No implementation of a job can be faster than
its floor here, so a target below it needs another CPU.

python -m benchmarks.bench_floor [--size 2048]
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import cpu_name  # noqa: E402
from sam.build import build_sam  # noqa: E402
from sam.modeling.common import linear  # noqa: E402
from sam.precision import bf16_is_fast  # noqa: E402
from sam.predictor import ImageEmbedding, SamPredictor  # noqa: E402


def matmul_flops_per_s(n: int, dtype: torch.dtype, runs: int = 5) -> float:
    """The best rate of an n x n x n product in dtype over runs of torch's matmul and oneDNN's, taking turns."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    products = (lambda: a @ b, lambda: linear(a, b))
    times = []
    with torch.no_grad():
        for product in products:
            product()
        for _ in range(runs):
            for product in products:
                start = time.perf_counter()
                product()
                times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times)  # the best run: a floor must not be too high


def floor_rates(size: int = 2048) -> dict[str, float]:
    """{"fp32": FLOP/s, "bf16": FLOP/s}: the best matrix-product rates of this CPU."""
    fast = bf16_is_fast()  # bf16 products on CPUs without bf16 instructions are ~100x slower: smaller, fewer
    bf16 = matmul_flops_per_s(size if fast else 512, torch.bfloat16, 5 if fast else 2)
    return {"fp32": matmul_flops_per_s(size, torch.float32), "bf16": bf16}


def flops(fn) -> float:
    # the math attention kernel is made of counted matrix products; the fused kernels are not counted
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def jobs() -> list[tuple[str, float]]:
    vit_b, tiny = (build_sam(name).eval().requires_grad_(False) for name in ("vit_b", "tiny_vit"))
    image = torch.zeros(1, 3, 1024, 1024)
    pred = SamPredictor(vit_b)
    pred.set_embedding(ImageEmbedding(torch.zeros(1, 256, 64, 64), (768, 1024), (768, 1024)))
    point = (torch.tensor([[[500.0, 400.0]]]), torch.tensor([[1]]))
    grid = (torch.rand(8, 1, 2) * 1024, torch.ones(8, 1, dtype=torch.int))
    no_masks = flops(lambda: pred.decode(grid, None, None, True, min_iou=float("inf"))) / 8
    return [
        ("ViT-B embedding", flops(lambda: vit_b.image_encoder(image))),
        ("TinyViT embedding", flops(lambda: tiny.image_encoder(image))),
        ("click: decoder, 3 masks", flops(lambda: pred.decode(point, None, None, True))),
        ("segment everything 32x32, no mask upscaled", 1024 * no_masks),
        ("segment everything 32x32, every mask upscaled",
         1024 * flops(lambda: pred.decode(grid, None, None, True)) / 8),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="side of the square matrices timed")
    args = parser.parse_args()
    rates = floor_rates(args.size)
    print(f"{cpu_name()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    for name, rate in rates.items():
        print(f"matrix product, {name}: {rate / 1e9:.1f} GFLOP/s")
    print("\n| job | GFLOP | floor fp32 | floor bf16 |\n| --- | --- | --- | --- |")
    for name, f in jobs():
        fp32, bf16 = f / rates["fp32"], f / rates["bf16"]
        print(f"| {name} | {f / 1e9:.1f} | {fp32 * 1e3:.0f} ms | {bf16 * 1e3:.0f} ms |")


if __name__ == "__main__":
    main()
