"""The bf16 screen of segment everything (sam/screen.py): records stay Meta's, fp32 decodes only kept prompts."""

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator as MetaGenerator

from sam import screen as screen_module
from sam.automatic import SamAutomaticMaskGenerator
from sam.automatic_sam2 import decode_points
from sam.build import CONFIGS
from sam.build_sam2 import CONFIGS as SAM2_CONFIGS
from sam.weights import load_model
from tests.helpers.reference import test_image, twin_models
from tests.helpers.sam2_reference import twin_sam2
from tests.test_automatic_parity import assert_records_match, scaled_twins

KWARGS = dict(points_per_side=8, stability_score_thresh=0.0, box_nms_thresh=1.0)


def best_iou_per_point(model, image) -> list[float]:
    records = SamAutomaticMaskGenerator(model, pred_iou_thresh=-1.0, **KWARGS).generate(image)
    best: dict[tuple, float] = {}
    for r in records:
        point = tuple(r["point_coords"][0])
        best[point] = max(best.get(point, -np.inf), r["predicted_iou"])
    return sorted(best.values())


def counting_decodes(generator: SamAutomaticMaskGenerator) -> list[int]:
    """Wraps the generator's fp32 decode: the list receives the number of prompts of each call."""
    calls, decode = [], generator._decode

    def counted(points, min_iou):
        calls.append(len(points))
        return decode(points, min_iou)

    generator._decode = counted
    return calls


def test_screen_decodes_only_kept_prompts_and_records_stay_meta():
    ref_model, our_model = scaled_twins(1)
    image = test_image(96, 128, seed=1)
    ranked = best_iou_per_point(our_model, image)
    k = 3 * len(ranked) // 4  # a quarter of the points pass; halfway between two scores, none is near it
    thresh = float(ranked[k - 1] + ranked[k]) / 2
    screened = SamAutomaticMaskGenerator(our_model, pred_iou_thresh=thresh, screen=True, **KWARGS)
    calls = counting_decodes(screened)
    records = screened.generate(image)

    assert screened.screen.screened == 64
    assert 0 < screened.screen.kept < 48 and sum(calls) == screened.screen.kept
    plain = SamAutomaticMaskGenerator(our_model, pred_iou_thresh=thresh, screen=False, **KWARGS).generate(image)
    assert len(records) >= 10
    assert_records_match(records, plain)  # the kept prompts batched otherwise: scores may move by ~1e-7
    assert_records_match(records, MetaGenerator(ref_model, pred_iou_thresh=thresh, **KWARGS).generate(image))


def test_screen_turns_off_where_most_prompts_are_kept():
    _, our_model = scaled_twins(1)
    image = test_image(96, 128, seed=1)
    thresh = 1e-3
    assert np.mean(np.array(best_iou_per_point(our_model, image)) > thresh - screen_module.MARGIN) > 0.6
    generator = SamAutomaticMaskGenerator(our_model, pred_iou_thresh=thresh, points_per_batch=16, screen=True, **KWARGS)
    generator.screen.probe = 16
    calls = counting_decodes(generator)
    records = generator.generate(image)
    assert generator.screen.screened == 16 and generator.screen.kept > 0.4 * 16  # the first batch, then no more
    assert sum(calls) == 64
    plain = SamAutomaticMaskGenerator(our_model, pred_iou_thresh=thresh, screen=False, **KWARGS).generate(image)
    assert_records_match(records, plain)
    generator.generate(image)  # a new run screens again
    assert generator.screen.screened == 16


def test_bf16_iou_moves_less_than_the_margin_on_vit_b():
    """The screen's premise, on ViT-B's decoder with segment-anything's random initialisation."""
    _, model = twin_models(CONFIGS["vit_b"], seed=0)
    generator = SamAutomaticMaskGenerator(model, screen=False)
    features = model.image_encoder.neck[3](torch.randn(1, 256, 64, 64))  # an embedding's scale: layer-normed
    points = torch.rand(48, 2, generator=torch.Generator().manual_seed(0)) * 1024
    generator.predictor.features = features
    with torch.no_grad():  # as the generator runs it
        _, fp32 = generator._decode(points, min_iou=float("inf"))
    bf16 = screen_module.Screen(model).iou(features, points)[:, 1:]
    assert float(fp32.std()) > 0.1  # predictions spread over the range a threshold cuts
    assert float((bf16 - fp32).abs().max()) < screen_module.MARGIN / 2


@pytest.mark.parametrize(("iou_head_scale", "spread"), [(1.0, 0.05), (10.0, 0.3)])
def test_bf16_iou_moves_less_than_the_margin_on_hiera_t(iou_head_scale, spread):
    """The same for SAM 2.1 Hiera-T's decoder (sigmoid scores): sam2's random initialisation puts the
    scores near 0.5; the IoU head scaled tenfold spreads them over nearly all of 0 to 1."""

    _, model = twin_sam2(SAM2_CONFIGS["hiera_tiny"], seed=0)
    head = model.sam_mask_decoder.iou_prediction_head.layers[-1]
    with torch.no_grad():
        head.weight.mul_(iou_head_scale), head.bias.mul_(iou_head_scale)
    generator = SamAutomaticMaskGenerator(model, screen=False)
    generator.predictor.set_image(test_image(192, 256, seed=0))
    points = torch.rand(48, 2, generator=torch.Generator().manual_seed(0)) * 1024
    with torch.no_grad():
        _, multi, _ = decode_points(generator.predictor, points, None, True, 8, min_iou=float("inf"))
        _, single, _ = decode_points(generator.predictor, points, None, False, 8, min_iou=float("inf"))
    bf16 = screen_module.Screen(model).iou(generator.predictor.features, points)
    assert float(multi.std()) > spread
    assert float((bf16[:, 1:] - multi).abs().max()) < screen_module.MARGIN / 2
    assert float((bf16 - single).abs().min(1).values.max()) < screen_module.MARGIN / 2  # one of them is returned


def test_screen_settings():
    model = load_model("random:vit_b")
    assert SamAutomaticMaskGenerator(model, screen=False).screen is None
    assert SamAutomaticMaskGenerator(model, pred_iou_thresh=0.0).screen is None  # nothing to drop
    with pytest.raises(ValueError, match="pred_iou_thresh > 0"):
        SamAutomaticMaskGenerator(model, pred_iou_thresh=0.0, screen=True)
    with pytest.raises(ValueError, match="no use_m2m"):
        SamAutomaticMaskGenerator(load_model("random:hiera_t"), use_m2m=True, screen=True)
    assert SamAutomaticMaskGenerator(load_model("random:hiera_t"), screen=True).screen is not None


@pytest.mark.parametrize("name", ["vit_b", "hiera_t"])
def test_screen_is_on_by_default_only_where_bf16_is_fast(monkeypatch, name):
    model = load_model(f"random:{name}")
    monkeypatch.setattr(screen_module, "bf16_is_fast", lambda device: True)
    assert SamAutomaticMaskGenerator(model).screen is not None
    if name == "hiera_t":  # use_m2m refines every candidate: nothing to skip
        assert SamAutomaticMaskGenerator(model, use_m2m=True).screen is None
    monkeypatch.setattr(screen_module, "bf16_is_fast", lambda device: False)
    assert SamAutomaticMaskGenerator(model).screen is None


def test_the_bf16_decoder_is_made_once_per_model_and_again_when_its_weights_change():
    model = load_model("random:vit_b")
    first = SamAutomaticMaskGenerator(model, screen=True).screen.decoder
    assert SamAutomaticMaskGenerator(model, screen=True).screen.decoder is first
    assert first.iou_token.weight.dtype == torch.bfloat16
    with torch.no_grad():
        model.mask_decoder.iou_token.weight.add_(1.0)
    again = SamAutomaticMaskGenerator(model, screen=True).screen.decoder
    assert again is not first
    torch.testing.assert_close(again.iou_token.weight, model.mask_decoder.iou_token.weight.bfloat16())
    assert screen_module.Screen(load_model("random:vit_b")).decoder is not again  # another model, its own copy


def test_a_model_made_under_inference_mode_is_screened_and_keeps_its_image_rows():
    """Inference tensors have no version counter: the bf16 copy and the predictor's image rows are still kept."""
    with torch.inference_mode():
        model = load_model("random:vit_b")
        generator = SamAutomaticMaskGenerator(model, screen=True, points_per_side=4)
        assert SamAutomaticMaskGenerator(model, screen=True).screen.decoder is generator.screen.decoder
        generator.generate(test_image(64, 96))
        predictor = generator.predictor
        predictor.set_image(test_image(64, 96))
        assert predictor.image_rows() is predictor.image_rows()
