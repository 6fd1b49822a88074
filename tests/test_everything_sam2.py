"""Segment everything with a SAM 2 model: the records of sam2's SAM2AutomaticMaskGenerator (fp32).

Twin models hold the same random weights (tests/helpers/sam2_reference.py, the tiny Hiera), their mask
and IoU heads scaled up so that masks and scores vary with the point. Two comparisons:
- the same numbers in both: Meta's generator (its predictor's code) asks our model for embeddings and
  logits, so every record must be identical, pixel for pixel and type for type;
- Meta's generator on its own model end to end: the logits agree to ~1e-6 relative (test_sam2_parity.py),
  so records agree up to pixels that close to the threshold (test_automatic_parity.assert_records_match).
"""

import inspect
from dataclasses import replace
from types import SimpleNamespace
from unittest.mock import patch

import numpy as np
import pytest
import torch
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as MetaGenerator

from sam import automatic_sam2
from sam.amg import LowResMasks
from sam.automatic import SamAutomaticMaskGenerator
from sam.build_sam2 import TINY, drop_video_keys
from sam.deadline import Deadline, TimeLimitError
from tests.helpers.reference import test_image
from tests.helpers.sam2_reference import twin_sam2
from tests.test_automatic import smooth_logits
from tests.test_automatic_parity import assert_identical, assert_records_match

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning:pycocotools")

H, W = 96, 128


@pytest.fixture(scope="module")
def twins():
    """(Meta's SAM2Base, our Sam2) with the same weights, mask logits and IoU logits scaled up."""
    ref, ours = twin_sam2(TINY, seed=1)
    state = ref.state_dict()
    for key in state:
        if key.startswith("sam_mask_decoder.output_hypernetworks_mlps.") and ".layers.2." in key:
            state[key] = state[key] * 300.0
        elif key.startswith("sam_mask_decoder.iou_prediction_head.layers.2."):
            state[key] = state[key] * 30.0
    ref.load_state_dict(state)
    ours.load_state_dict(drop_video_keys(state))
    return ref, ours


@pytest.fixture(scope="module")
def image():
    return test_image(H, W, seed=1)


class MetaCall(torch.nn.Module):
    """Our mask decoder behind the call and the answer of Meta's (which adds mask tokens it returns)."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                multimask_output, repeat_image, high_res_features):  # fmt: skip
        masks, iou, obj = self.decoder(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                                       multimask_output, tuple(high_res_features))  # fmt: skip
        return masks, iou, None, obj


def shared_model(meta: MetaGenerator, model) -> MetaGenerator:
    """Meta's generator asking our model for embeddings and masks (its predictor's code, our numbers)."""
    predictor = meta.predictor
    predictor.model = SimpleNamespace(
        sam_prompt_encoder=model.sam_prompt_encoder, sam_mask_decoder=MetaCall(model.sam_mask_decoder),
        device=model.device,
    )  # fmt: skip

    def set_image(crop: np.ndarray) -> None:
        predictor.reset_predictor()
        x = torch.as_tensor(crop).permute(2, 0, 1)[None].float()
        with torch.no_grad():
            embedding, high_res = model.encode(model.preprocess(x))
        predictor._features = {"image_embed": embedding, "high_res_feats": list(high_res)}
        predictor._orig_hw = [crop.shape[:2]]
        predictor._is_image_set = True

    predictor.set_image = set_image
    return meta


def meta_generator(ref, **kwargs) -> MetaGenerator:
    """Meta's generator on Meta's model, its feature sizes (fixed for 1024 px) set for the model's input."""
    meta = MetaGenerator(ref, **kwargs)
    s = ref.image_size
    meta.predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    return meta


def object_score_gate(meta: MetaGenerator, thresh: float) -> MetaGenerator:
    """Meta's generator with our object-score gate: a prompt whose object-score logit is <= thresh gets
    IoU scores of -inf, so its masks fail pred_iou_thresh before anything else sees them."""
    predictor, predict = meta.predictor, meta.predictor._predict
    scores = []
    hook = predictor.model.sam_mask_decoder.register_forward_hook(lambda m, i, out: scores.append(out[3]))

    def gated(*args, **kwargs):
        masks, iou, low = predict(*args, **kwargs)
        return masks, iou.masked_fill(scores[-1] <= thresh, -torch.inf), low

    predictor._predict = gated
    meta.hook = hook
    return meta


CASES = {
    "defaults": dict(points_per_side=8),
    "thresholds": dict(points_per_side=8, pred_iou_thresh=0.3, stability_score_thresh=0.5),
    # Half the points (31 of 64) have no score above 0.99: their masks are never computed.
    "high IoU threshold": dict(points_per_side=8, pred_iou_thresh=0.99, stability_score_thresh=0.5, box_nms_thresh=1.0),
    "single mask, threshold": dict(
        points_per_side=8, multimask_output=False, pred_iou_thresh=0.9, stability_score_thresh=0.5, box_nms_thresh=1.0
    ),
    # Single masks of these random weights span the image: no NMS, or it keeps one.
    "use_m2m": dict(
        points_per_side=6, use_m2m=True, pred_iou_thresh=0.0, stability_score_thresh=0.9, box_nms_thresh=1.0
    ),
    "single mask": dict(points_per_side=8, multimask_output=False, pred_iou_thresh=0.0, box_nms_thresh=1.0),
    "crops": dict(points_per_side=6, crop_n_layers=1, pred_iou_thresh=0.3, stability_score_thresh=0.5),
    "crops, rle, thresholds": dict(
        points_per_side=4,
        crop_n_layers=1,
        crop_n_points_downscale_factor=2,
        output_mode="uncompressed_rle",
        mask_threshold=1.0,
        stability_score_offset=2.0,
        pred_iou_thresh=0.3,
        stability_score_thresh=0.5,
        box_nms_thresh=0.8,
        points_per_batch=5,
    ),
    "m2m, single mask, coco": dict(
        points_per_side=6,
        use_m2m=True,
        multimask_output=False,
        pred_iou_thresh=0.0,
        box_nms_thresh=1.0,
        output_mode="coco_rle",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_records_identical_to_meta(twins, image, name):
    ref, ours = twins
    kwargs = CASES[name]
    want = shared_model(MetaGenerator(ref, **kwargs), ours).generate(image)
    got = SamAutomaticMaskGenerator(ours, **kwargs).generate(image)
    assert len(want) >= 3
    assert_identical(got, want)
    for a, b in zip(got, want):
        assert [type(v) for v in a["bbox"] + a["crop_box"] + a["point_coords"][0]] == [float] * 10
        for key in ("area", "predicted_iou", "stability_score"):
            assert type(a[key]) is type(b[key])


def test_screen_decodes_only_kept_prompts_and_records_stay_metas(twins, image):
    """With the bf16 screen (sam/screen.py; multimask and single-mask requests) only the prompts it keeps
    are decoded in fp32, and the records are those of the generator without it and of sam2's."""
    _, ours = twins
    decode = automatic_sam2.decode_points
    for kwargs in (dict(pred_iou_thresh=0.99), dict(pred_iou_thresh=0.9, multimask_output=False)):
        kwargs.update(points_per_side=8, stability_score_thresh=0.5, box_nms_thresh=1.0)
        screened = SamAutomaticMaskGenerator(ours, screen=True, **kwargs)
        calls: list[int] = []

        def counted(predictor, points, *args, calls=calls):
            calls.append(len(points))
            return decode(predictor, points, *args)

        with patch.object(automatic_sam2, "decode_points", counted):
            records = screened.generate(image)
        assert screened.screen.screened == 64 and 0 < screened.screen.kept < 64 and sum(calls) == screened.screen.kept
        assert len(records) >= 2
        assert_identical(records, SamAutomaticMaskGenerator(ours, screen=False, **kwargs).generate(image))
        assert_identical(records, shared_model(MetaGenerator(twins[0], **kwargs), ours).generate(image))


def test_object_score_gate(twins, image):
    """Masks of points whose object score says "no object" are dropped before the filters and NMS: the
    records of Meta's generator with that gate added, and fewer than without it."""
    ref, ours = twins
    kwargs = dict(points_per_side=8, pred_iou_thresh=0.3, stability_score_thresh=0.5)
    scores = []
    meta = shared_model(MetaGenerator(ref, **kwargs), ours)
    hook = meta.predictor.model.sam_mask_decoder.register_forward_hook(lambda m, i, out: scores.append(out[3]))
    ungated = meta.generate(image)
    hook.remove()
    scores = torch.cat(scores)[:, 0]
    thresh = float(scores.median())
    assert 0 < int((scores > thresh).sum()) < len(scores)
    meta = object_score_gate(shared_model(MetaGenerator(ref, **kwargs), ours), thresh)
    try:
        want = meta.generate(image)
    finally:
        meta.hook.remove()
    got = SamAutomaticMaskGenerator(ours, object_score_thresh=thresh, **kwargs).generate(image)
    assert 3 <= len(want) < len(ungated)
    assert_identical(got, want)
    assert_identical(SamAutomaticMaskGenerator(ours, object_score_thresh=-np.inf, **kwargs).generate(image), ungated)
    nothing = SamAutomaticMaskGenerator(ours, points_per_side=2, use_m2m=True, object_score_thresh=np.inf)
    assert nothing.generate(image) == []


def test_small_regions_as_metas_kernel(twins, image, monkeypatch):
    """min_mask_region_area: holes and islands of the low-res logits, as Meta's predictor removes them with
    its CUDA kernel (stood in for here by OpenCV's 8-connected components, which the kernel computes)."""
    import cv2
    import sam2.utils.misc

    def components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels, areas = torch.zeros(mask.shape, dtype=torch.int32), torch.zeros(mask.shape, dtype=torch.int32)
        for i, m in enumerate(mask[:, 0].to(torch.uint8).numpy()):
            _, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
            area = np.where(lab > 0, stats[lab, cv2.CC_STAT_AREA], 0)
            labels[i, 0], areas[i, 0] = torch.from_numpy(lab), torch.from_numpy(area)
        return labels, areas

    monkeypatch.setattr(sam2.utils.misc, "get_connected_components", components)
    ref, ours = twins
    for kwargs in (
        dict(points_per_side=8, min_mask_region_area=40, pred_iou_thresh=0.3),
        dict(points_per_side=6, use_m2m=True, min_mask_region_area=20, pred_iou_thresh=0.0, box_nms_thresh=1.0),
    ):
        want = shared_model(MetaGenerator(ref, **kwargs), ours).generate(image)
        without = shared_model(MetaGenerator(ref, **{**kwargs, "min_mask_region_area": 0}), ours).generate(image)
        assert len(want) >= 3
        assert [r["area"] for r in want] != [r["area"] for r in without]  # the setting changed masks
        assert_identical(SamAutomaticMaskGenerator(ours, **kwargs).generate(image), want)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.5, box_nms_thresh=1.0),
        dict(points_per_side=6, use_m2m=True, pred_iou_thresh=0.0, box_nms_thresh=1.0),
    ],
)
def test_records_match_meta_end_to_end(twins, image, kwargs):
    """Meta's own encoder: embeddings agree to ~1e-6, so a pixel may flip; nearly every record is identical."""
    ref, ours = twins
    want = meta_generator(ref, **kwargs).generate(image)
    got = SamAutomaticMaskGenerator(ours, **kwargs).generate(image)
    assert len(want) >= 3
    assert_records_match(got, want)


def test_defaults_are_metas(twins):
    """Every setting left out takes the value of sam2's generator (pred_iou_thresh 0.8, not SAM's 0.88)."""
    ours = SamAutomaticMaskGenerator(twins[1])
    params = inspect.signature(MetaGenerator.__init__).parameters
    names = [n for n in params if n not in ("self", "model", "kwargs", "point_grids", "points_per_side")]
    for name in names:
        assert getattr(ours, name, None) == params[name].default, name
    assert len(ours.point_grids) == 1 and len(ours.point_grids[0]) == params["points_per_side"].default ** 2
    assert ours.pred_iou_thresh == 0.8
    assert SamAutomaticMaskGenerator(twins[1], pred_iou_thresh=0.88).pred_iou_thresh == 0.88


def test_sam2_settings_are_refused_for_sam():
    from tests.helpers.loaders import tiny_model

    for setting in (dict(use_m2m=True), dict(multimask_output=False), dict(object_score_thresh=0.0)):
        with pytest.raises(ValueError, match="settings of SAM 2 models"):
            SamAutomaticMaskGenerator(tiny_model(), **setting)
    assert SamAutomaticMaskGenerator(tiny_model()).pred_iou_thresh == 0.88


@pytest.mark.parametrize("size", [(96, 128), (40, 30), (300, 200), (256, 256), (768, 1024)])
def test_low_res_masks_resize_in_one_step(size):
    """LowResMasks without img_size: Sam2.postprocess_masks' one bilinear resize, thresholded exactly."""
    from sam.build_sam2 import build_sam2

    logits = smooth_logits(6, 64, seed=2) * 30  # some masks by cells, some upsampled whole
    logits[5] = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))  # noisy: upsampled whole
    full = build_sam2(replace(TINY, img_size=256)).postprocess_masks(logits[None], (256, 256), size)[0]
    grid = LowResMasks((64, 64), None, (256, 256), size)
    counts, boxes, dense = grid.stats(logits, (1.0, -1.0, 0.0), box_index=2)
    for t, column in zip((1.0, -1.0, 0.0), counts.T):
        assert torch.equal(column, (full > t).sum((1, 2)))
    for k, mask in enumerate(grid.masks(logits, 0.0, dense)):
        assert torch.equal(mask, full[k] > 0)
    assert bool(dense[5]) and not bool(dense.all())
    assert torch.equal(grid.upsample(logits), full)


def test_progress_deadline_max_masks_and_memory(twins, image):
    """What the SAM path offers works for SAM 2: progress, a deadline, max_masks, logits spilled to disk."""
    _, ours = twins
    kwargs = dict(points_per_side=8, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.5)
    generator = SamAutomaticMaskGenerator(ours, **kwargs)
    calls = []
    records = generator.generate(image, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(16, 64), (32, 64), (48, 64), (64, 64)] and len(records) >= 5
    spilled = SamAutomaticMaskGenerator(ours, logits_memory_mb=0, **kwargs).generate(image)
    assert_identical(spilled, records)
    best = generator.generate(image, max_masks=3)
    top = sorted(range(len(records)), key=lambda i: -records[i]["predicted_iou"])[:3]
    assert_identical(best, [records[i] for i in sorted(top)])
    with pytest.raises(TimeLimitError, match="0 of 64 points done"):
        generator.generate(image, deadline=Deadline(0.0, "segment everything"))
    assert not generator.predictor.is_image_set


@pytest.fixture
def sam2_on_hub(local_hub, checkpoints):
    """sam2.1_t.pt (facebook/sam2.1-hiera-tiny) on the loopback Hub: tiny random weights in Meta's layout."""
    local_hub.add("facebook/sam2.1-hiera-tiny", {"sam2.1_hiera_tiny.pt": checkpoints.sam2_meta()})
    return local_hub


def test_the_facade_segments_everything_with_sam2(sam2_on_hub, image):
    """SAM("sam2.1_t.pt") with no prompt: the generator's records, its SAM 2 settings passed through."""
    from sam import SAM

    model = SAM("sam2.1_t.pt")
    bgr = np.ascontiguousarray(image[..., ::-1])
    settings = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0, use_m2m=True)
    settings["multimask_output"] = False
    r = model(bgr, points_stride=4, verbose=False, **settings)[0]
    records = SamAutomaticMaskGenerator(model.model, points_per_side=4, **settings).generate(image)
    assert len(records) >= 3 and len(r) == len(records)
    np.testing.assert_array_equal(r.masks.data.numpy(), np.stack([rec["segmentation"] for rec in records]))
    np.testing.assert_allclose(r.scores, [rec["predicted_iou"] for rec in records], rtol=1e-6)
    model(bgr, points_stride=4, verbose=False)
    assert model._generator[1].pred_iou_thresh == 0.8  # sam2's default, where SAM's is 0.88


def test_the_cli_segments_everything_with_sam2(sam2_on_hub, image, tmp_path, capsys):
    import json

    from PIL import Image

    from sam import masks
    from sam.cli import main
    from sam.weights import load_model

    Image.fromarray(image).save(tmp_path / "scene.png")
    args = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--use-m2m"]
    args += ["--box-nms-thresh", "1"]
    out = tmp_path / "out"
    code = main(["everything", str(tmp_path / "scene.png"), "--output", str(out), "--model", "sam2.1_t.pt",
                 "--format", "coco", "--single-mask", *args])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    records = json.loads((out / "scene.json").read_text())
    settings = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    model = load_model("sam2.1_t.pt")
    want = SamAutomaticMaskGenerator(model, use_m2m=True, multimask_output=False, **settings).generate(image)
    assert len(records) == len(want) >= 3
    for got, ref in zip(records, want):
        assert got["bbox"] == ref["bbox"] and got["point_coords"] == ref["point_coords"]
        assert np.array_equal(masks.decode_coco_rle(got["segmentation"]), ref["segmentation"])
    code = main(["everything", str(tmp_path / "scene.png"), "--output", str(out), "--overwrite", "--use-m2m",
                 "--model", "random:tiny_vit"])  # fmt: skip
    assert code == 2 and "settings of SAM 2 models" in capsys.readouterr().err
