"""Segment everything: Meta's generator against ours, same weights, same image.

ViT-B (segment-anything's SamAutomaticMaskGenerator) or, with --model hiera_tiny, SAM 2.1 Hiera-T (sam2's
SAM2AutomaticMaskGenerator), random weights (the same in both), a 1024x768 image, a 32x32 point grid,
fp32. Each side's image embedding is computed once and handed to its generator, so the times are the
generator's own work (decoder, thresholds, NMS, masks). Prints a markdown table: median times, the ratio,
the record count of each and how many records are identical (bbox, area and mask). Meta's generator takes
minutes on a 2-core CPU: --meta-runs 1 is the default, and its single time is reported as its median.

    python benchmarks/bench_everything.py                  # default thresholds
    python benchmarks/bench_everything.py --thresholds zero --runs 1
    python benchmarks/bench_everything.py --model hiera_tiny
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segment_anything import SamAutomaticMaskGenerator as MetaGenerator  # noqa: E402

from benchmarks.bench_floor import floor_rates, flops  # noqa: E402
from benchmarks.machine import cpu_name  # noqa: E402
from sam import automatic_sam2  # noqa: E402
from sam.allocator import reuse_freed_memory  # noqa: E402
from sam.automatic import DECODER_BATCH, SamAutomaticMaskGenerator  # noqa: E402
from sam.build import CONFIGS  # noqa: E402
from sam.predictor import ImageEmbedding, SamPredictor  # noqa: E402
from tests.helpers.reference import test_image, twin_models  # noqa: E402

THRESHOLDS = {
    "default": {},  # each generator's own: pred_iou_thresh 0.88 (SAM) or 0.8 (SAM 2), stability_score_thresh 0.95
    "zero": dict(pred_iou_thresh=0.0, stability_score_thresh=0.0),
}
MODELS = {"vit_b": "ViT-B", "hiera_tiny": "SAM 2.1 Hiera-T"}


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def give_meta_the_embedding(generator: MetaGenerator, features: torch.Tensor, image: np.ndarray) -> None:
    """Meta's generator embeds each crop with predictor.set_image; hand it the precomputed features instead."""
    predictor = generator.predictor

    def set_image(crop: np.ndarray, image_format: str = "RGB") -> None:
        assert crop.shape == image.shape, "only the whole-image crop has a precomputed embedding"
        predictor.reset_image()
        predictor.original_size = crop.shape[:2]
        predictor.input_size = tuple(predictor.transform.get_preprocess_shape(*crop.shape[:2], 1024))
        predictor.features = features
        predictor.is_image_set = True

    predictor.set_image = set_image


def give_meta_sam2_its_embedding(generator, image: np.ndarray) -> float:
    """sam2's generator embeds each crop with predictor.set_image: embed the image once (returns the
    seconds) and hand those features back on every call."""
    predictor = generator.predictor
    t, _ = timed(lambda: predictor.set_image(image))
    features, orig_hw = predictor._features, predictor._orig_hw

    def set_image(crop: np.ndarray) -> None:
        assert crop.shape == image.shape, "only the whole-image crop has a precomputed embedding"
        predictor.reset_predictor()
        predictor._features, predictor._orig_hw, predictor._is_image_set = features, orig_hw, True

    predictor.set_image = set_image
    return t


def grid_points(generator: SamAutomaticMaskGenerator, embedding: ImageEmbedding) -> tuple[np.ndarray, torch.Tensor]:
    """Hands the embedding to the generator's predictor; returns its whole-image grid in image pixels (Px2) and
    as SAM's model-input points (Px2)."""
    generator.predictor.set_embedding(embedding)
    grid = generator.point_grids[0] * np.array(embedding.original_size)[None, ::-1]
    return grid, torch.as_tensor(generator.predictor.transform.apply_coords(grid, embedding.original_size))


def decoder_time(generator: SamAutomaticMaskGenerator, embedding: ImageEmbedding) -> float:
    """Seconds the mask decoder alone takes for the generator's points, in its batches.

    With pred_iou_thresh 0 every mask is computed: the floor of ours when no prompt can be skipped.
    """
    predictor = generator.predictor
    grid, points = grid_points(generator, embedding)
    if generator.is_sam2:
        points = automatic_sam2.input_points(grid, embedding.original_size, predictor.model.img_size)[1]
    start = time.perf_counter()
    with torch.no_grad():
        for batch in points.split(generator.points_per_batch):
            if generator.is_sam2:
                automatic_sam2.decode_points(predictor, batch, None, True, DECODER_BATCH)
            else:
                generator.predict_low_res(batch, [0, 0, *embedding.original_size[::-1]])
    predictor.reset_image()
    return time.perf_counter() - start


def decoder_flops(
    generator: SamAutomaticMaskGenerator, embedding: ImageEmbedding, every_mask: bool, sample: int = 64
) -> float:
    """FLOPs of the decoder's work on the generator's points: the transformer and IoU head every point needs,
    and with every_mask the upscaling of all three masks, counted on the first `sample` points in the
    generator's batches and scaled to all of them."""
    predictor = generator.predictor
    _, points = grid_points(generator, embedding)
    labels = torch.ones(sample, 1, dtype=torch.int)
    work = flops(
        lambda: [
            predictor.decode(
                (p[:, None], labels[: len(p)]), None, None, True, min_iou=None if every_mask else float("inf")
            )
            for p in points[:sample].split(DECODER_BATCH)
        ]
    )
    predictor.reset_image()
    return work * len(points) / sample


def identical(a: dict, b: dict) -> bool:
    return a["bbox"] == b["bbox"] and a["area"] == b["area"] and np.array_equal(a["segmentation"], b["segmentation"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=list(MODELS), default="vit_b")
    parser.add_argument("--thresholds", choices=("default", "zero", "both"), default="default")
    parser.add_argument("--runs", type=int, default=3, help="runs of ours (median)")
    parser.add_argument("--meta-runs", type=int, default=1, help="runs of segment-anything's generator (median)")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--malloc",
        choices=["tuned", "default"],
        default="tuned",
        help="tuned: sam.allocator.reuse_freed_memory(), for every implementation in the run",
    )
    args = parser.parse_args()
    if args.malloc == "tuned":
        reuse_freed_memory()

    torch.manual_seed(args.seed)
    sam2 = args.model != "vit_b"
    if sam2:
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        from sam.build_sam2 import CONFIGS as SAM2_CONFIGS
        from tests.helpers.sam2_reference import twin_sam2

        ref_model, our_model = twin_sam2(SAM2_CONFIGS[args.model], seed=args.seed)
    else:
        ref_model, our_model = twin_models(CONFIGS["vit_b"], seed=args.seed)
    our_model.requires_grad_(False)  # inference only (and FlopCounterMode's module hooks want no autograd)
    image = test_image(768, 1024, seed=args.seed)
    load_before = os.getloadavg()
    if sam2:
        predictor = SamPredictor(our_model)
        embed_s, _ = timed(lambda: predictor.set_image(image))
        embedding = predictor.embedding
    else:
        start = time.perf_counter()
        with torch.no_grad():
            x = our_model.preprocess(torch.as_tensor(image).permute(2, 0, 1)[None].float())
            features = our_model.image_encoder(x)
        embed_s = time.perf_counter() - start
        embedding = ImageEmbedding(features, (768, 1024), (768, 1024))

    every_mask = SamAutomaticMaskGenerator(our_model, points_per_side=args.points_per_side, pred_iou_thresh=0.0)
    decoder_s = decoder_time(every_mask, embedding)
    print(f"decoder alone: {decoder_s:.1f} s", file=sys.stderr, flush=True)
    work = {} if sam2 else {masks: decoder_flops(every_mask, embedding, masks) for masks in (False, True)}
    rates = floor_rates()
    reference = "sam2" if sam2 else "segment-anything"
    meta_embed_s = 0.0
    rows = []
    for name in ("default", "zero") if args.thresholds == "both" else (args.thresholds,):
        settings = dict(points_per_side=args.points_per_side, **THRESHOLDS[name])
        if sam2:
            meta = SAM2AutomaticMaskGenerator(ref_model, **settings)
            meta_embed_s = give_meta_sam2_its_embedding(meta, image)
        else:
            meta = MetaGenerator(ref_model, **settings)
            give_meta_the_embedding(meta, features, image)
        ours = SamAutomaticMaskGenerator(our_model, **settings)
        plain = SamAutomaticMaskGenerator(our_model, **settings, screen=False) if ours.screen else None
        meta_times, our_times, plain_times = [], [], []
        for _ in range(args.meta_runs):
            t, ref_records = timed(lambda g=meta: g.generate(image))
            meta_times.append(t)
            print(f"[{name}] {reference}: {t:.1f} s, {len(ref_records)} records", file=sys.stderr, flush=True)
        for _ in range(args.runs):  # with and without the bf16 screen, taking turns
            t, our_records = timed(lambda g=ours: g.generate(image, embedding=embedding))
            our_times.append(t)
            kept = f", screen kept {ours.screen.kept} of {ours.screen.screened} points" if ours.screen else ""
            print(f"[{name}] ours: {t:.1f} s, {len(our_records)} records{kept}", file=sys.stderr, flush=True)
            if plain is not None:
                t, plain_records = timed(lambda g=plain: g.generate(image, embedding=embedding))
                plain_times.append(t)
                print(f"[{name}] ours, no screen: {t:.1f} s, {len(plain_records)} records", file=sys.stderr, flush=True)
        same = sum(any(identical(a, b) for b in ref_records) for a in our_records)
        m, o = statistics.median(meta_times), statistics.median(our_times)
        p = statistics.median(plain_times) if plain_times else None
        kept = (ours.screen.kept, ours.screen.screened) if ours.screen else None
        rows.append(
            (name, m, len(meta_times), o, len(our_times), m / o, len(ref_records), len(our_records), same, p, kept)
        )

    print(
        f"\nSegment everything, {MODELS[args.model]} (random weights, same in both), 1024x768, {args.points_per_side}x"
        f"{args.points_per_side} grid, fp32, embedding excluded (computed once: {embed_s:.1f} s"
        + (f"; sam2's own: {meta_embed_s:.1f} s)." if sam2 else ").")
    )
    print(
        f"CPU: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"malloc {args.malloc}; "
        f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after (a shared machine).\n"
    )
    print(
        f"| thresholds | {reference} | ours | speed-up | records ({reference} / ours / identical) "
        "| ours, no bf16 screen |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, m, mn, o, on, ratio, nr, no, same, p, kept in rows:
        times = f"{m:.1f} s (median of {mn}) | {o:.2f} s (median of {on})"
        screen = f"{p:.2f} s (screen kept {kept[0]} of {kept[1]} points)" if p is not None else "no screen run"
        print(f"| {name} | {times} | {ratio:.1f}x | {nr} / {no} / {same} | {screen} |")
    if work:
        print(
            f"\nFloor: the decoder's FLOPs at the best matrix-product rate of this run ({rates['fp32'] / 1e9:.0f} "
            f"GFLOP/s fp32, {rates['bf16'] / 1e9:.0f} bf16); with pred_iou_thresh > 0 the work every point needs "
            "(no mask upscaled), with 0 every mask upscaled.\n"
        )
        print(
            "| thresholds | decoder work | floor fp32 | floor bf16 | ours / fp32 floor | ours / bf16 floor "
            "| no screen / fp32 floor |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, _, _, o, _, _, _, _, _, p, _ in rows:
            flop = work[name == "zero"]
            fp32, bf16 = flop / rates["fp32"], flop / rates["bf16"]
            nos = "" if p is None else f"{p / fp32:.2f}x"
            floors = f"{flop / 1e9:.0f} GFLOP | {fp32:.2f} s | {bf16:.2f} s"
            print(f"| {name} | {floors} | {o / fp32:.2f}x | {o / bf16:.2f}x | {nos} |")


if __name__ == "__main__":
    main()
