"""The bf16 encoder path stays close to fp32: embeddings within 1e-2 relative, mask IoU >= 0.99
(pooled over the parity prompts), for the ViT encoders, MobileSAM's TinyViT and SAM 2's Hiera."""

import copy
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from sam import SamPredictor
from sam.build import SamConfig, TinyViTConfig, ViTConfig, build_sam
from sam.build_sam2 import CONFIGS as SAM2_CONFIGS
from sam.build_sam2 import build_sam2, drop_video_keys
from sam.precision import bf16_is_fast, resolve_dtype
from sam.weights import load_model
from tests.helpers.reference import (
    PROMPTS,
    TINY,
    meta_sam,
    random_tinyvit_weights,
    rel_err,
    test_image,
    twin_models,
)

# ViT-B's width and depth, and MobileSAM's whole TinyViT, at a small input, so the tests stay fast on any CPU.
VIT_B_SMALL = SamConfig(ViTConfig(768, 12, 12, (2, 5, 8, 11)), img_size=256)
TINYVIT_SMALL = SamConfig(TinyViTConfig(), img_size=256)
HIERA_T_SMALL = replace(SAM2_CONFIGS["hiera_tiny"], img_size=256)  # SAM 2's Hiera-T, the same way


def random_tinyvit(seed: int = 4) -> torch.nn.Module:
    """Our MobileSAM at TINYVIT_SMALL with random weights (fp32)."""
    model = build_sam(TINYVIT_SMALL)
    model.load_state_dict(random_tinyvit_weights(model, seed=seed))
    return model


@pytest.fixture(scope="module", params=["vit_b", "tiny_vit", "hiera_t"])
def predictors(request):
    if request.param == "hiera_t":
        from tests.helpers.sam2_reference import twin_sam2

        fp32 = twin_sam2(HIERA_T_SMALL, seed=4)[1]
    else:
        fp32 = twin_models(VIT_B_SMALL, seed=4)[1] if request.param == "vit_b" else random_tinyvit()
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
    assert all(t.dtype == torch.float32 for t in p16.high_res_features)  # SAM 2's


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


def tinyvit_bf16_error(model: torch.nn.Module) -> float:
    """Relative distance of the bf16 embedding from the fp32 one (1x256x16x16, random 256-pixel input)."""
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return rel_err(copy.deepcopy(model).set_precision(torch.bfloat16).encode(x), model.encode(x))


@pytest.mark.parametrize("seed", [2, 4, 7])
def test_tinyvit_bf16_embedding_close_to_fp32(seed):
    """Random weights: casting the whole TinyViT to bf16 moved these embeddings 2.2e-2 to 3e-2; now 0.6e-2 to 0.9e-2."""
    err = tinyvit_bf16_error(random_tinyvit(seed))
    assert 0 < err < 1e-2  # > 0: the bf16 path really ran


def test_tinyvit_bf16_close_to_fp32_with_mobile_sams_initialisation():
    with warnings.catch_warnings():  # mobile_sam imports timm's deprecated module paths
        warnings.simplefilter("ignore")
        import mobile_sam

    torch.manual_seed(0)
    ref = mobile_sam.sam_model_registry["vit_t"]()  # its own init: truncated-normal Linears, identity BatchNorms
    model = build_sam(TINYVIT_SMALL)
    model.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("pixel_")})
    assert 0 < tinyvit_bf16_error(model) < 1e-2


def test_tinyvit_set_precision_keeps_the_checkpoint_layout():
    """Which weights run in bf16; BatchNorms stay fp32; keys, strict loading and the way back to fp32 unchanged."""
    model = random_tinyvit()
    weights = model.state_dict()
    enc = model.set_precision(torch.bfloat16).image_encoder
    assert model.precision == "bfloat16"
    mbconv, block = enc.layers[0].blocks[0], enc.layers[1].blocks[0]
    assert mbconv.conv1.c.weight.dtype == block.attn.qkv.weight.dtype == block.mlp.fc1.weight.dtype == torch.bfloat16
    assert mbconv.conv1.bn.running_var.dtype == block.attn.attention_biases.dtype == torch.float32
    assert mbconv.conv2.c.weight.dtype == block.local_conv.c.weight.dtype == torch.float32  # depthwise
    assert block.attn.proj.weight.dtype == enc.layers[2].blocks[0].mlp.fc1.weight.dtype == torch.float32
    assert model.state_dict().keys() == weights.keys()
    model.load_state_dict(weights, strict=True)  # a checkpoint loads into the bf16 model ...
    model.set_precision(torch.float32)
    assert model.precision == "float32" and all(p.dtype == torch.float32 for p in model.parameters())
    model.load_state_dict(weights, strict=True)  # ... and back in fp32 gives the fp32 numbers again
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model.encode(x), random_tinyvit().encode(x))


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


def test_set_precision_takes_a_name():
    """'float32' once raised "Invalid device string" (the name went to Module.to as a device)."""
    model = build_sam(TINY)
    assert model.set_precision("bfloat16").precision == "bfloat16"
    assert model.image_encoder.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert model.set_precision("float32").precision == "float32"
    assert model.set_precision("auto").precision == ("bfloat16" if bf16_is_fast() else "float32")
    with pytest.raises(ValueError, match="unknown dtype"):
        model.set_precision("half")


def test_load_model_takes_a_dtype():
    assert load_model("random:vit_b", dtype="float32").precision == "float32"
    model = load_model("random:vit_b", dtype="bfloat16")
    assert model.precision == "bfloat16"
    assert model.image_encoder.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert model.image_encoder.pos_embed.dtype == torch.float32  # positions and norms stay fp32
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model("random:vit_b", dtype="half")


# ---- SAM 2's Hiera ------------------------------------------------------------------------------------------

def hiera_bf16_errors(ref, ours) -> tuple[float, list[float]]:
    """Relative distance from fp32 of Meta's encoder under bf16 autocast (its image embedding) and of each
    of our bf16 levels (image embedding, then the two high-resolution features)."""
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        embedding, high_res = ours.encode(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref_bf16 = ref.forward_image(x)["backbone_fpn"][-1].float() + ref.no_mem_embed.view(1, -1, 1, 1)
        bf16, bf16_high_res = copy.deepcopy(ours).set_precision("bfloat16").encode(x)
    errors = [rel_err(a, b) for a, b in zip((bf16, *bf16_high_res), (embedding, *high_res))]
    return rel_err(ref_bf16, embedding), errors


def test_hiera_bf16_embedding_close_to_fp32():
    """With Meta's own initialisation (8.3e-3 here, 8.1e-3 at 1024 pixels) and with random weights: every
    level within 1e-2 of fp32, and the embedding no further than Meta's bf16 autocast (1.1e-2)."""
    from tests.helpers.sam2_reference import meta_sam2, twin_sam2

    torch.manual_seed(0)
    meta_init = meta_sam2(HIERA_T_SMALL)
    ours = build_sam2(HIERA_T_SMALL)
    ours.load_state_dict(drop_video_keys(meta_init.state_dict()))
    for pair in ((meta_init, ours), twin_sam2(HIERA_T_SMALL, seed=4)):
        ref_err, errors = hiera_bf16_errors(*pair)
        assert all(0 < e < 1e-2 for e in errors), errors  # > 0: the bf16 path really ran
        assert errors[0] <= ref_err


def test_hiera_set_precision_keeps_the_checkpoint_layout():
    model = build_sam2(HIERA_T_SMALL)
    weights = model.state_dict()
    model.set_precision(torch.bfloat16)
    trunk, decoder = model.image_encoder.trunk, model.sam_mask_decoder
    assert model.precision == "bfloat16" and trunk.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert model.image_encoder.neck.convs[0].conv.weight.dtype == trunk.patch_embed.proj.weight.dtype == torch.bfloat16
    assert trunk.blocks[0].norm1.weight.dtype == trunk.pos_embed.dtype == torch.float32
    assert decoder.conv_s0.weight.dtype == decoder.iou_token.weight.dtype == torch.float32  # the decoder stays
    assert model.state_dict().keys() == weights.keys()
    model.set_precision("float32").load_state_dict(weights)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    fresh = build_sam2(HIERA_T_SMALL)
    fresh.load_state_dict(weights)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model.encode(x)[1], fresh.encode(x)[1]))


def test_load_model_runs_hiera_in_bf16():
    model = load_model("random:hiera_t", dtype="bfloat16")
    assert model.precision == "bfloat16" and model.sam_mask_decoder.conv_s1.weight.dtype == torch.float32


# ---- the encoders' products through oneDNN -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_matches_torch(dtype):
    """sam.modeling.common.linear (oneDNN on CPU) against F.linear + GELU, and the aten route where it must go."""
    from torch.utils.flop_counter import FlopCounterMode

    from sam.modeling.common import linear, onednn_dtypes, onednn_ok

    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g).to(dtype) for s in ((2, 5, 7, 64), (96, 64), (96,)))
    with torch.no_grad():
        avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")  # else MKL's fp32, no bf16 in oneDNN
        has_dtype = torch.ops.mkldnn._is_mkldnn_bf16_supported() if dtype == torch.bfloat16 else avx512
        assert onednn_ok(x, w) == (torch.backends.mkldnn.is_available() and has_dtype)
        assert (dtype in onednn_dtypes()) == has_dtype
        assert not onednn_ok(x, w.t().contiguous().t())  # strided weight: aten
        for gelu in (False, True):
            ref = torch.nn.functional.linear(x.float(), w.float(), b.float())
            ref = torch.nn.functional.gelu(ref) if gelu else ref
            out = linear(x, w, b, gelu=gelu)
            assert out.dtype == dtype and out.shape == (2, 5, 7, 96)
            assert rel_err(out.float(), ref) < (1e-6 if dtype == torch.float32 else 1e-2)
        with FlopCounterMode(display=False) as counter:  # the counter sees the product
            linear(x, w, b)
        assert counter.get_total_flops() == 2 * 70 * 64 * 96
    assert not onednn_ok(x, w.requires_grad_())  # autograd: aten (oneDNN's op has no backward)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_products_without_onednn(monkeypatch, dtype):
    """On an AVX2-only CPU oneDNN has no bf16 products (creating one fails) and MKL's fp32 ones are faster:
    those products go to torch's, with the same numbers."""
    from sam.modeling import common

    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g).to(dtype) for s in ((3, 64), (96, 64), (96,)))
    monkeypatch.setattr(common, "onednn_dtypes", lambda: ())
    assert not common.onednn_ok(x, w)
    with torch.no_grad():
        out = common.linear(x, w, b, gelu=True)
    ref = torch.nn.functional.gelu(torch.nn.functional.linear(x.float(), w.float(), b.float()))
    assert out.dtype == dtype and rel_err(out.float(), ref) < (1e-6 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("kind", ["vit", "hiera"])
def test_encoder_blocks_get_contiguous_channels_last_tensors(kind):
    """The patch embedding hands the blocks a BxHxWxC tensor laid out that way in memory: a permuted view of the
    convolution's BxCxHxW output made every residual sum keep that layout, and each norm and product copy it."""
    if kind == "hiera":
        encoder = build_sam2("hiera_tiny").image_encoder.trunk
    else:
        encoder = build_sam(SamConfig(ViTConfig(64, 2, 4, (1,), window_size=4), img_size=256)).image_encoder
    seen = []
    for block in encoder.blocks:
        block.register_forward_hook(lambda _m, args, _out: seen.append(args[0].is_contiguous()))
    with torch.no_grad():
        encoder(torch.randn(1, 3, 256, 256))
    assert seen == [True] * len(encoder.blocks)
