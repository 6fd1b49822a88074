"""The automatic mask generator: its helpers against Meta's and torchvision's, and the whole pipeline on an
oracle model that knows the regions of a synthetic image (flat-coloured rectangles).

The oracle (`oracle_sam`) is a Sam whose encoder passes the preprocessed image through and whose decoder
answers a point with the flat-colour region holding it, at low resolution, as logits +-20, plus two
variants: the region with a small island and the region with a small hole. A 128x128 image on a 256
model is enlarged 2x (4x in the 64x64 crops of crop layer 1); at those scales the bilinear upsampling
of a +-20 low-res region is exactly the region (every pixel inside weighs at least 0.5625 on it), so
every record can be checked pixel for pixel.
"""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from segment_anything.utils import amg as meta_amg

from sam import masks
from sam.amg import (
    LowResMasks,
    batched_nms,
    build_all_layer_point_grids,
    generate_crop_boxes,
    is_box_near_crop_edge,
    remove_small_regions,
)
from sam.automatic import SamAutomaticMaskGenerator
from sam.build import build_sam
from sam.transforms import ResizeLongestSide
from tests.helpers.oracle import RECTS, oracle_sam, region_image
from tests.helpers.reference import TINY

CROPS = [[0, 0, 128, 128], [0, 0, 64, 64], [0, 64, 64, 128], [64, 0, 128, 64], [64, 64, 128, 128]]  # overlap 0
EXPECTED_CROP = [1, 3, 0, 2, 4, 0]  # the crop each rectangle's record comes from (NMS prefers small crops)
def meta_box(x0: int, y0: int, x1: int, y1: int) -> list[int]:
    """Meta's XYWH bbox of the pixels [x0, x1) x [y0, y1): width and height are last - first."""
    return [x0, y0, x1 - 1 - x0, y1 - 1 - y0]


@pytest.mark.parametrize("crop_n_layers", [0, 1])
def test_oracle_every_region_exactly_once(crop_n_layers):
    image, labels = region_image()
    gen = SamAutomaticMaskGenerator(
        oracle_sam(), points_per_side=16, crop_n_layers=crop_n_layers, crop_overlap_ratio=0.0, min_mask_region_area=100
    )
    records = gen.generate(image)
    assert len(records) == len(RECTS) + 1
    by_label = {}
    for r in records:
        seg = r["segmentation"]
        assert seg.shape == (128, 128) and seg.dtype == bool
        found = np.unique(labels[seg])
        assert len(found) == 1, "a mask spans several regions"
        by_label[int(found[0])] = r
        assert np.array_equal(seg, labels == found[0]), "mask differs from its region"
        assert r["area"] == int(seg.sum())
        x, y = r["point_coords"][0]
        assert labels[int(y), int(x)] == found[0]
        assert r["stability_score"] == 1.0 and r["predicted_iou"] in (pytest.approx(0.95), pytest.approx(0.96))
    assert sorted(by_label) == list(range(len(RECTS) + 1))
    assert by_label[0]["bbox"] == [0, 0, 127, 127] and by_label[0]["crop_box"] == [0, 0, 128, 128]
    for i, rect in enumerate(RECTS):
        r = by_label[i + 1]
        assert r["bbox"] == meta_box(*rect)
        assert r["area"] == (rect[2] - rect[0]) * (rect[3] - rect[1])
        crop = CROPS[EXPECTED_CROP[i] if crop_n_layers else 0]
        assert r["crop_box"] == [crop[0], crop[1], crop[2] - crop[0], crop[3] - crop[1]]


def test_oracle_without_postprocessing_keeps_islands_and_holes():
    image, labels = region_image()
    records = SamAutomaticMaskGenerator(oracle_sam(), points_per_side=16).generate(image)
    # Region with a hole (IoU 0.96) wins NMS over the plain region; the island variant's box is larger.
    holes = [r for r in records if r["predicted_iou"] == pytest.approx(0.96)]
    assert len(holes) == len(RECTS) + 1
    for r in holes:
        label = np.bincount(labels[r["segmentation"]]).argmax()
        assert 0 < (labels == label).sum() - r["area"] <= 4  # a 2x2 hole
    islands = [r for r in records if r["predicted_iou"] == pytest.approx(0.94)]
    assert islands and all(remove_small_regions(r["segmentation"], 100, "islands")[1] for r in islands)


@pytest.mark.parametrize("output_mode", ["uncompressed_rle", "coco_rle"])
def test_output_modes_encode_the_binary_masks(output_mode):
    image, _ = region_image()
    binary = SamAutomaticMaskGenerator(oracle_sam(), points_per_side=8).generate(image)
    encoded = SamAutomaticMaskGenerator(oracle_sam(), points_per_side=8, output_mode=output_mode).generate(image)
    assert len(binary) == len(encoded) > 0
    for b, e in zip(binary, encoded):
        assert e["segmentation"]["size"] == [128, 128]
        assert np.array_equal(masks.decode_coco_rle(e["segmentation"]), b["segmentation"])
        assert {k: v for k, v in b.items() if k != "segmentation"} == {
            k: v for k, v in e.items() if k != "segmentation"
        }
    if output_mode == "coco_rle":
        from pycocotools import mask as coco

        for b, e in zip(binary, encoded):
            assert isinstance(e["segmentation"]["counts"], str)
            assert np.array_equal(
                coco.decode({**e["segmentation"], "counts": e["segmentation"]["counts"].encode()}), b["segmentation"]
            )


def test_given_embedding_and_progress():
    image, _ = region_image()
    model = oracle_sam()
    gen = SamAutomaticMaskGenerator(model, points_per_side=8)
    gen.predictor.set_image(image)
    embedding = gen.predictor.embedding
    calls = []
    records = gen.generate(image, embedding=embedding, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(64, 64)]
    assert [r["bbox"] for r in records] == [r["bbox"] for r in gen.generate(image)]
    with pytest.raises(ValueError, match="embedding"):
        gen.generate(image[:64], embedding=embedding)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(points_per_side=None), "exactly one"),
        (dict(point_grids=[np.zeros((4, 2))]), "exactly one"),
        (dict(output_mode="png"), "output_mode"),
        (dict(points_per_side=None, point_grids=[np.zeros((4, 2))], crop_n_layers=1), "point_grids"),
        (dict(points_per_batch=0), "points_per_batch"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamAutomaticMaskGenerator(oracle_sam(), **kwargs)


def test_bad_image():
    gen = SamAutomaticMaskGenerator(oracle_sam(), points_per_side=4)
    for bad in (np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 4), np.uint8)):
        with pytest.raises(ValueError, match="HxWx3 uint8"):
            gen.generate(bad)


def random_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, 60, (n, 2), generator=g)
    wh = torch.randint(0, 30, (n, 2), generator=g)
    boxes = torch.cat([xy, xy + wh], 1).float()
    boxes[: n // 10] = boxes[n // 10 : 2 * (n // 10)]  # exact duplicates
    return boxes


@pytest.mark.parametrize("n", [0, 1, 50, 1500])
def test_nms_equals_torchvision(n):
    boxes = random_boxes(n, seed=n)
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 5, (n,), generator=g).float()  # many ties
    for categories in (torch.zeros(n), torch.randint(0, 3, (n,), generator=g)):
        for thresh in (0.0, 0.3, 0.7):
            ours = batched_nms(boxes, scores, categories, thresh)
            ref = torchvision.ops.batched_nms(boxes, scores, categories, thresh)
            assert set(ours.tolist()) == set(ref.tolist())
            if n * 4 <= 4000:  # torchvision orders ties by index there (by an unstable sort above)
                assert ours.tolist() == ref.tolist()
            assert torch.all(scores[ours][1:] <= scores[ours][:-1])


def test_helpers_equal_meta():
    for size, layers, ratio in [((768, 1024), 2, 512 / 1500), ((300, 200), 1, 0.5), ((256, 256), 1, 0.0)]:
        assert generate_crop_boxes(size, layers, ratio) == meta_amg.generate_crop_boxes(size, layers, ratio)
    for grids, ref in zip(build_all_layer_point_grids(32, 2, 2), meta_amg.build_all_layer_point_grids(32, 2, 2)):
        assert np.array_equal(grids, ref)
    boxes = random_boxes(200, seed=3).long() * 4
    for crop in ([0, 0, 256, 256], [100, 50, 300, 250]):
        ours = is_box_near_crop_edge(boxes, crop, [0, 0, 300, 250])
        assert torch.equal(ours, meta_amg.is_box_near_crop_edge(boxes, crop, [0, 0, 300, 250]))
    rng = np.random.default_rng(0)
    mask = (
        F.interpolate(torch.as_tensor(rng.normal(size=(1, 1, 12, 16))), (60, 80), mode="bilinear")[0, 0].numpy() > 0.3
    )
    for mode in ("holes", "islands"):
        for area in (5, 50, 5000):
            ours, changed = remove_small_regions(mask, area, mode)
            ref, ref_changed = meta_amg.remove_small_regions(mask, area, mode)
            assert changed == ref_changed and np.array_equal(ours, ref)


def smooth_logits(k: int, low: int, seed: int, noise: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(k, 1, 4, 4, generator=g) * 10
    return F.interpolate(coarse, (low, low), mode="bicubic")[:, 0] + noise * torch.randn(k, low, low, generator=g)


def meta_postprocess(logits: torch.Tensor, img_size: int, input_size, original_size) -> torch.Tensor:
    """What Meta's generator thresholds: Sam.postprocess_masks of the low-res logits."""
    x = F.interpolate(logits[:, None], (img_size, img_size), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, original_size, mode="bilinear", align_corners=False)[:, 0]


@pytest.mark.parametrize(
    "img_size, original_size",
    [(1024, (768, 1024)), (1024, (1500, 2000)), (1024, (300, 200)), (256, (172, 172)), (256, (37, 256))],
)
@pytest.mark.parametrize("path", ["cells", "whole"])
def test_low_res_masks_equal_full_resolution(img_size, original_size, path):
    """Counts, boxes and masks from LowResMasks equal Meta's full-resolution ones, by cells or upsampled whole."""
    low = img_size // 4
    input_size = ResizeLongestSide.get_preprocess_shape(*original_size, img_size)
    logits = smooth_logits(6, low, seed=sum(original_size), noise=0.1)
    grid = LowResMasks((low, low), img_size, input_size, original_size)
    grid.dense_fraction = 1.1 if path == "cells" else -1.0
    full = meta_postprocess(logits, img_size, input_size, original_size)
    thresholds = (1.0, -1.0, 0.0)
    counts, boxes, dense = grid.stats(logits, thresholds, box_index=2)
    assert dense.tolist() == [path == "whole"] * len(logits)
    tol = 1e-4  # pixels this close to a threshold may round either way
    for n, t in enumerate(thresholds):
        near = ((full - t).abs() < tol).flatten(1).sum(1)
        assert torch.all((counts[:, n] - (full > t).flatten(1).sum(1)).abs() <= near)
    ref_stability = meta_amg.calculate_stability_score(full, 0.0, 1.0)
    assert torch.allclose(counts[:, 0].int() / counts[:, 1].int(), ref_stability, atol=1e-4, equal_nan=True)
    assert torch.equal(boxes, meta_amg.batched_mask_to_box(full > 0))
    lower, upper = grid.count_bounds(logits, thresholds)
    assert torch.all(lower <= counts) and torch.all(counts <= upper)
    for i, mask in enumerate(grid.masks(logits, 0.0, dense)):
        assert mask.shape == original_size
        assert torch.all((mask == (full[i] > 0)) | ((full[i]).abs() < tol))
        assert torch.equal(meta_amg.batched_mask_to_box(mask), boxes[i])  # the record's bbox is its mask's


def test_low_res_masks_of_no_masks():
    grid = LowResMasks((64, 64), 256, (192, 256), (96, 128))
    counts, boxes, dense = grid.stats(torch.zeros(0, 64, 64), (1.0, -1.0, 0.0), box_index=2)
    assert counts.shape == (0, 3) and boxes.shape == (0, 4) and dense.shape == (0,)
    lower, upper = grid.count_bounds(torch.zeros(0, 64, 64), (1.0, -1.0))
    assert lower.shape == upper.shape == (0, 2)


def run_cli(*args: str, cwd):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "sam", "everything", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_png_and_coco(tmp_path):
    import csv
    import json

    from PIL import Image

    from tests.helpers.reference import test_image

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(test_image(48, 64)).save(images / "scene.png")
    (images / "broken.jpg").write_bytes(b"not an image")
    settings = [
        "--model",
        "random:tiny_vit",
        "--points-per-side",
        "2",
        "--pred-iou-thresh",
        "0",
        "--stability-score-thresh",
        "0",
    ]
    done = run_cli(str(images), "--output", "out", *settings, cwd=tmp_path)
    assert done.returncode == 4, done.stderr  # one image could not be read; the other is done
    assert "warning: cannot read image" in done.stderr and "error: 1 of 2 images" in done.stderr
    folder = tmp_path / "out" / "scene"
    rows = list(csv.DictReader((folder / "metadata.csv").open()))
    assert rows and list(rows[0])[:6] == ["id", "area", "bbox_x0", "bbox_y0", "bbox_w", "bbox_h"]
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(f"{r['id']}.png" for r in rows)
    for r in rows:
        mask = np.asarray(Image.open(folder / f"{r['id']}.png")) > 0
        assert mask.shape == (48, 64) and int(mask.sum()) == int(r["area"])
    assert f"{len(rows)} masks" in done.stdout

    again = run_cli(str(images / "scene.png"), "--output", "out", *settings, cwd=tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    coco = run_cli(str(images / "scene.png"), "--output", "out", "--format", "coco", *settings, cwd=tmp_path)
    assert coco.returncode == 0, coco.stderr
    records = json.loads((tmp_path / "out" / "scene.json").read_text())  # another random model: other masks
    assert records and set(records[0]) == {
        "segmentation",
        "area",
        "bbox",
        "predicted_iou",
        "point_coords",
        "stability_score",
        "crop_box",
    }
    for record in records:
        mask = masks.decode_coco_rle(record["segmentation"])
        assert mask.shape == (48, 64) and masks.area(mask) == record["area"]


def test_cli_errors(tmp_path, capsys):
    from sam.cli import main

    def run(*args: str) -> tuple[int, str]:
        code = main(["everything", *args])
        return code, capsys.readouterr().err

    code, err = run(str(tmp_path / "nothing"), "--output", str(tmp_path / "out"))
    assert code == 4 and err.startswith("error: no such file")
    (tmp_path / "a.png").write_bytes(b"")
    code, err = run(str(tmp_path / "a.png"), "--output", str(tmp_path / "out"), "--model", "random:nope")
    assert code == 3 and err.startswith("error: cannot load model 'random:nope'")
    with pytest.raises(SystemExit) as exit_info:
        run(str(tmp_path / "a.png"), "--output", str(tmp_path / "out"), "--points-per-side", "0")
    assert exit_info.value.code == 2
    assert "--points-per-side: expected an integer >= 1, got '0'" in capsys.readouterr().err


@pytest.mark.parametrize("original_size", [(768, 1024), (1024, 1024), (1500, 2000), (300, 200)])
def test_postprocess_masks_equals_metas(original_size):
    """Sam.postprocess_masks gives Meta's numbers exactly, also where it skips the same-size resize."""
    input_size = ResizeLongestSide.get_preprocess_shape(*original_size, 1024)
    logits = smooth_logits(3, 256, seed=1, noise=0.1)
    model = build_sam(dataclasses.replace(TINY, img_size=1024))
    ours = model.postprocess_masks(logits[None], input_size, original_size)[0]
    assert torch.equal(ours, meta_postprocess(logits, 1024, input_size, original_size))
