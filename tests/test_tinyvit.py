"""MobileSAM (TinyViT encoder) parity with mobilesam-mirror's `vit_t`: same random weights, same numbers.

mobile_sam's TinyViT only runs at its published size (1024 input, 64x64 embedding), so the parity
runs are full size. Tolerances as in tests/reference.py: 1e-4 relative (L2) on embeddings, low-res
logits and scores, masks equal except where the reference logit is within MASK_TOL of 0. The bf16
checks run on a 128-pixel encoder to stay fast on CPUs without native bf16.
"""

import copy
import warnings

import numpy as np
import pytest
import torch

from sam import SamPredictor, build_sam
from sam.modeling import tiny_vit
from sam.modeling.tiny_vit import TinyViT
from sam.transforms import ResizeLongestSide
from tests.helpers.reference import RTOL, assert_same_prediction, random_tinyvit_weights, rel_err, test_image

with warnings.catch_warnings():  # mobile_sam imports timm's deprecated module paths
    warnings.simplefilter("ignore")
    import mobile_sam
    from mobile_sam.utils.transforms import ResizeLongestSide as RefResize

EMBED_ATOL = 1e-4  # largest allowed absolute difference of an embedding entry (entries are O(1))


@pytest.fixture(scope="module")
def twins():
    """(mobile_sam's vit_t, our tiny_vit) with identical random weights, in eval mode."""
    ref = mobile_sam.sam_model_registry["vit_t"]()
    ref.load_state_dict(random_tinyvit_weights(ref, seed=3))
    ref.eval()  # mobile_sam caches its attention biases in eval(): call it after loading
    ours = build_sam("tiny_vit")
    ours.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("pixel_")}, strict=True)
    return ref, ours


@pytest.fixture(scope="module")
def predictors(twins):
    ref, ours = twins
    image = test_image(480, 640, seed=3)
    meta, pred = mobile_sam.SamPredictor(ref), SamPredictor(ours)
    meta.set_image(image)
    pred.set_image(image)
    return meta, pred


def test_checkpoint_keys_are_mobile_sams(twins):
    ref, ours = twins
    assert set(ours.state_dict()) == set(ref.state_dict()) - {"pixel_mean", "pixel_std"}
    assert {"image_encoder.head.weight", "image_encoder.norm_head.bias"} <= set(ours.state_dict())
    assert ours.image_encoder.img_size == 1024


def test_resize_matches_torchvision():
    """mobile_sam resizes with torchvision on a PIL image, we with PIL directly: same pixels."""
    for h, w in [(480, 640), (333, 500), (1200, 97)]:
        image = test_image(h, w, seed=h)
        assert np.array_equal(RefResize(1024).apply_image(image), ResizeLongestSide(1024).apply_image(image))


def test_embedding_matches(predictors):
    meta, pred = predictors
    assert pred.features.shape == meta.features.shape == (1, 256, 64, 64)
    assert pred.original_size == meta.original_size and pred.input_size == meta.input_size
    assert rel_err(pred.features, meta.features) < RTOL
    assert (pred.features - meta.features).abs().max() < EMBED_ATOL
    assert meta.features.std() > 0.1  # weights are not degenerate


PROMPTS = {
    "one point": dict(point_coords=np.array([[320, 240]]), point_labels=np.array([1])),
    "points with a negative": dict(point_coords=np.array([[320, 240], [100, 400], [500, 60]]), point_labels=[1, 1, 0]),
    "box": dict(box=np.array([80, 60, 520, 400])),
    "box and points": dict(
        box=np.array([80, 60, 520, 400]), point_coords=np.array([[300, 200], [90, 70]]), point_labels=[1, 0]
    ),
    "one point, single mask": dict(point_coords=np.array([[320, 240]]), point_labels=[1], multimask_output=False),
    "box, single mask": dict(box=np.array([0, 0, 639, 479]), multimask_output=False),
}


@pytest.mark.parametrize("name", list(PROMPTS))
def test_prompt_matches(predictors, name):
    meta, pred = predictors
    kw = PROMPTS[name]
    ref = meta.predict(**kw)
    ref_logits = meta.predict(**kw, return_logits=True)[0]
    ours = pred.predict(**kw)
    assert ours[1].shape == ((1,) if kw.get("multimask_output") is False else (3,))
    assert_same_prediction(ref, ours, ref_logits, pred.predict(**kw)[0])
    assert rel_err(pred.predict(**kw, return_logits=True)[0], ref_logits) < RTOL


@pytest.mark.parametrize("name", ["one point", "box and points"])
def test_refinement_with_mask_input(predictors, name):
    meta, pred = predictors
    kw = PROMPTS[name]
    first = meta.predict(**kw)
    mask_input = first[2][np.argmax(first[1])][None]
    ref = meta.predict(**kw, mask_input=mask_input)
    ref_logits = meta.predict(**kw, mask_input=mask_input, return_logits=True)[0]
    ours = pred.predict(**kw, mask_input=mask_input)
    assert_same_prediction(ref, ours, ref_logits, ours[0])
    assert rel_err(ours[2], first[2]) > 1e-3  # the mask input really changed the answer


@pytest.fixture(scope="module")
def small_encoder():
    """The full-width TinyViT at 128 pixels (8x8 embedding) with random weights, two inputs, fp32 outputs."""
    model = TinyViT(img_size=128).eval()
    model.load_state_dict(random_tinyvit_weights(model, seed=4))
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 128, 128, generator=g)
    with torch.no_grad():
        return model, x, model(x)


def test_any_input_size_and_batch(small_encoder):
    model, x, y = small_encoder
    assert y.shape == (2, 256, 8, 8) and y.is_contiguous() and torch.isfinite(y).all()
    with torch.no_grad():
        assert rel_err(model(x[1:]), y[1:]) < 1e-5  # images in a batch are independent
    assert rel_err(y[1], y[0]) > 0.2  # the embedding depends on the image: the weights are not degenerate


def test_batchnorm_folding_equals_conv_then_batchnorm():
    model = TinyViT(img_size=64, depths=(1, 1, 1, 1)).eval()
    model.load_state_dict(random_tinyvit_weights(model, seed=5))
    conv = model.layers[0].blocks[0].conv2
    x = torch.randn(2, conv.c.in_channels, 9, 9)
    with torch.no_grad():
        assert rel_err(conv(x), conv.bn(conv.c(x))) < 1e-6  # BatchNorm2d in eval mode: running statistics


# bf16 rounds every activation to 8 bits of mantissa; over TinyViT's ~40 layers with these random weights
# that moves the embedding by about 1.5e-2 (autocast) and 2e-2 (weights cast). mobile_sam's own TinyViT
# under autocast moves its stage outputs by 1.7e-2 on the same weights and input.
BF16_RTOL = 2.5e-2


def test_bf16_weights_close_to_fp32(small_encoder):
    model, x, y = small_encoder
    model16 = copy.deepcopy(model).to(torch.bfloat16)
    with torch.no_grad():
        y16 = model16(x[:1].to(torch.bfloat16))
    assert y16.dtype == torch.bfloat16 and y16.shape == y[:1].shape
    assert 0 < rel_err(y16.float(), y[:1]) < BF16_RTOL


def test_bf16_autocast_close_to_fp32(small_encoder):
    model, x, y = small_encoder
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = model(x[:1])
    assert 0 < rel_err(y16.float(), y[:1]) < BF16_RTOL  # > 0: bf16 really ran


@pytest.mark.parametrize("out_dim", [16, 320])  # mobile_sam merges with stride 2, or stride 1 into 320 channels
def test_banded_conv_stacks_match_mobile_sam(monkeypatch, out_dim):
    """MBConv and PatchMerging computed one output row at a time equal mobile_sam's whole-image modules."""
    from mobile_sam.modeling.tiny_vit_sam import MBConv as RefMBConv
    from mobile_sam.modeling.tiny_vit_sam import PatchMerging as RefMerging

    monkeypatch.setattr(tiny_vit, "BAND_BYTES", 1)
    x = torch.randn(2, 8, 13, 11, generator=torch.Generator().manual_seed(6))  # BxCxHxW, odd sizes
    ref_mb, ref_merge = RefMBConv(8, 8, 4.0, torch.nn.GELU, 0.0), RefMerging((13, 11), 8, out_dim, torch.nn.GELU)
    mb, merge = tiny_vit.MBConv(8, 4.0), tiny_vit.PatchMerging(8, out_dim, 1 if out_dim == 320 else 2)
    for ref, ours in [(ref_mb, mb), (ref_merge, merge)]:
        ref.load_state_dict(random_tinyvit_weights(ref, seed=6))
        ours.load_state_dict(ref.state_dict())
        ref.eval()
    with torch.no_grad():
        assert rel_err(mb(x.permute(0, 2, 3, 1)), ref_mb(x).permute(0, 2, 3, 1)) < 1e-6
        y = merge(x.permute(0, 2, 3, 1))
        assert y.shape[1:3] == ((13, 11) if out_dim == 320 else (7, 6))
        assert rel_err(y.flatten(1, 2), ref_merge(x)) < 1e-6
