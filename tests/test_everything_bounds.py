"""Segment everything within bounds: logits beyond a memory budget wait on disk, a cap on the records kept,
bad settings refused, with the records unchanged."""

import numpy as np
import pytest
import torch

from sam.automatic import SamAutomaticMaskGenerator
from sam.logit_store import LogitStore
from tests.helpers.oracle import oracle_sam, region_image


def test_the_store_keeps_rows_in_memory_up_to_its_budget_then_on_disk():
    rows = torch.randn(10, 4, 6)
    store = LogitStore(budget_bytes=3 * 4 * 6 * 4)  # three rows fit in memory
    slots = torch.cat([store.add(rows[:4]), store.add(rows[4:])])
    assert slots.tolist() == list(range(10)) and len(store.rows) == 3 and store.file_rows == 7
    order = torch.tensor([9, 0, 5, 2, 7])
    assert torch.equal(store.get(order), rows[order])
    assert store.get(torch.zeros(0, dtype=torch.int64)).shape == (0, 4, 6)
    store.close()
    assert store.file is None and not store.rows


def records_equal(a: list[dict], b: list[dict]) -> bool:
    same = lambda x, y: np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y  # noqa: E731
    return len(a) == len(b) and all(same(ra[k], rb[k]) for ra, rb in zip(a, b) for k in ra)


@pytest.mark.parametrize("crop_n_layers", [0, 1])
def test_logits_on_disk_give_the_same_records(crop_n_layers):
    image, _ = region_image()
    args = dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, crop_n_layers=crop_n_layers)
    in_memory = SamAutomaticMaskGenerator(oracle_sam(), **args).generate(image)
    on_disk = SamAutomaticMaskGenerator(oracle_sam(), logits_memory_mb=0, **args).generate(image)
    assert len(in_memory) > 5 and records_equal(in_memory, on_disk)


@pytest.mark.parametrize("min_area", [0, 30])
def test_max_masks_keeps_the_best_by_predicted_iou(min_area):
    image, _ = region_image()
    gen = SamAutomaticMaskGenerator(
        oracle_sam(), points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, crop_n_layers=1,
        min_mask_region_area=min_area,
    )
    every = gen.generate(image)
    assert len(every) > 6
    best = sorted(range(len(every)), key=lambda i: -every[i]["predicted_iou"])[:4]
    assert records_equal(gen.generate(image, max_masks=4), [every[i] for i in sorted(best)])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(crop_n_layers=-1), "crop_n_layers must be >= 0"),
        (dict(crop_n_points_downscale_factor=0), "crop_n_points_downscale_factor must be >= 1"),
        (dict(points_per_side=0), "points_per_side must be >= 1"),
        (dict(logits_memory_mb=-1), "logits_memory_mb must be >= 0"),
    ],
)
def test_bad_settings_are_refused_with_their_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamAutomaticMaskGenerator(oracle_sam(), **kwargs)
