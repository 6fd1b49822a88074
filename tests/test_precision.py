"""The bf16 encoder path stays close to fp32: embeddings within 1e-2 relative, mask IoU >= 0.99
(pooled over the parity prompts)."""

import copy

import numpy as np
import pytest
import torch

from sam import SamPredictor
from sam.build import SamConfig, ViTConfig, build_sam
from sam.precision import bf16_is_fast, resolve_dtype
from tests.reference import PROMPTS, meta_sam, rel_err, test_image, twin_models

# ViT-B's width and depth at a small input, so the test stays fast on any CPU.
VIT_B_SMALL = SamConfig(ViTConfig(768, 12, 12, (2, 5, 8, 11)), img_size=256)


@pytest.fixture(scope="module")
def predictors():
    _, fp32 = twin_models(VIT_B_SMALL, seed=4)
    bf16 = copy.deepcopy(fp32).set_precision(torch.bfloat16)
    image = test_image(240, 320)
    p32, p16 = SamPredictor(fp32), SamPredictor(bf16)
    p32.set_image(image)
    p16.set_image(image)
    return p32, p16


def test_precision_is_reported(predictors):
    p32, p16 = predictors
    assert p32.model.precision == "float32" and p16.model.precision == "bfloat16"
    assert p16.model.mask_decoder.iou_token.weight.dtype == torch.float32  # decoder stays fp32
    assert p16.features.dtype == torch.float32


def bf16_errors(ref, ours) -> tuple[float, float]:
    """Relative distance from fp32 of Meta's encoder under bf16 autocast and of our bf16 encoder."""
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fp32 = ours.encode(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref_bf16 = ref.image_encoder(x).float()
        bf16 = copy.deepcopy(ours).set_precision(torch.bfloat16).encode(x)
    return rel_err(ref_bf16, fp32), rel_err(bf16, fp32)


def test_bf16_embedding_close_to_fp32():
    """With Meta's own initialisation, within 1e-2 of fp32, and no further than Meta's bf16 autocast."""
    torch.manual_seed(0)
    ref = meta_sam(VIT_B_SMALL)
    ours = build_sam(VIT_B_SMALL)
    ours.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("pixel_")})
    ref_err, err = bf16_errors(ref, ours)
    assert 0 < err < 1e-2  # > 0: the bf16 path really ran
    assert err <= ref_err


def test_bf16_no_worse_than_reference_autocast():
    """Larger random weights amplify rounding; ours still stays at or below the reference's bf16 error."""
    ref_err, err = bf16_errors(*twin_models(VIT_B_SMALL, seed=4))
    assert 0 < err <= ref_err


def test_bf16_masks_match_fp32(predictors):
    """Random weights give smooth logit fields, so the few pixels that flip sit where |logit| is tiny."""
    p32, p16 = predictors
    inter = union = 0
    for kw in PROMPTS.values():
        l32, s32, _ = p32.predict(**kw, return_logits=True)
        l16, s16, _ = p16.predict(**kw, return_logits=True)
        assert np.abs(s32 - s16).max() < 2e-2
        for a, b in zip(l32 > 0, l16 > 0):
            inter, union = inter + (a & b).sum(), union + (a | b).sum()
            assert (a != b).mean() < 1e-2
        decided = np.abs(l32) > 0.02 * np.abs(l32).max()
        assert np.array_equal((l32 > 0)[decided], (l16 > 0)[decided])
    assert union > 0 and inter / union >= 0.99


def test_resolve_dtype():
    assert resolve_dtype("float32") == torch.float32
    assert resolve_dtype("bfloat16") == resolve_dtype("bf16") == torch.bfloat16
    assert resolve_dtype("auto") == (torch.bfloat16 if bf16_is_fast() else torch.float32)
    with pytest.raises(ValueError, match="'auto', 'float32' or 'bfloat16'"):
        resolve_dtype("float16")


def test_load_model_takes_a_dtype():
    from sam.weights import load_model

    assert load_model("random:vit_b", dtype="float32").precision == "float32"
    model = load_model("random:vit_b", dtype="bfloat16")
    assert model.precision == "bfloat16"
    assert model.image_encoder.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert model.image_encoder.pos_embed.dtype == torch.float32  # positions and norms stay fp32
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model("random:vit_b", dtype="half")
