"""Meta's reference model built with the same configuration and the same random weights as ours, and what
the parity tests share: tolerances, prompts, the comparison of two predictions, random weights."""

from functools import partial

import numpy as np
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from sam.build import SamConfig, ViTConfig, build_sam

RTOL = 1e-4  # relative L2 tolerance of embeddings, low-res logits and scores
MASK_TOL = 1e-3  # masks may differ where the reference logit lies within this of 0


def rel_err(ours: "np.typing.ArrayLike | torch.Tensor", ref: "np.typing.ArrayLike | torch.Tensor") -> float:
    """||ours - ref|| / ||ref|| (L2 over all entries, in float64)."""
    ours, ref = torch.as_tensor(np.asarray(ours, dtype=np.float64)), torch.as_tensor(np.asarray(ref, np.float64))
    return float((ours - ref).norm() / ref.norm().clamp_min(1e-12))


def assert_same_prediction(ref_out: tuple, our_out: tuple, ref_logits: np.ndarray, our_masks: np.ndarray) -> None:
    """Two predictors' (masks CxHxW, scores C, low-res logits Cx256x256) agree to RTOL, masks off MASK_TOL.

    our_masks: the masks of a second identical call, which must equal the first.
    """
    ref_masks, ref_scores, ref_low = ref_out
    masks, scores, low = our_out
    assert masks.shape == ref_masks.shape and masks.dtype == ref_masks.dtype == bool
    assert scores.shape == ref_scores.shape and low.shape == ref_low.shape
    assert rel_err(scores, ref_scores) < RTOL
    assert rel_err(low, ref_low) < RTOL
    decided = np.abs(ref_logits) > MASK_TOL
    assert np.array_equal(masks[decided], ref_masks[decided])
    assert np.array_equal(our_masks, masks)


# prompts on a 200x300 (WxH) image, named
PROMPTS = {
    "one point": dict(point_coords=np.array([[120, 80]]), point_labels=np.array([1])),
    "points with negatives": dict(
        point_coords=np.array([[120, 80], [40, 250], [150, 20], [10, 10]]), point_labels=np.array([1, 1, 0, 0])
    ),
    "box": dict(box=np.array([20, 30, 170, 260])),
    "box and points": dict(
        box=np.array([20, 30, 170, 260]), point_coords=np.array([[100, 100], [60, 200]]), point_labels=[1, 0]
    ),
    "single mask": dict(point_coords=np.array([[120, 80]]), point_labels=np.array([1]), multimask_output=False),
    "box single mask": dict(box=np.array([0, 0, 199, 299]), multimask_output=False),
}

TINY = SamConfig(ViTConfig(embed_dim=64, depth=4, num_heads=4, global_attn_indexes=(1, 3), window_size=4), img_size=256)


def meta_sam(config: SamConfig) -> Sam:
    """segment-anything's Sam assembled from one of our ViT configs."""
    enc = config.encoder
    assert isinstance(enc, ViTConfig)
    grid = config.img_size // enc.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=enc.depth,
            embed_dim=enc.embed_dim,
            img_size=config.img_size,
            mlp_ratio=(enc.mlp_dim or 4 * enc.embed_dim) / enc.embed_dim,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=enc.num_heads,
            patch_size=enc.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=enc.global_attn_indexes,
            window_size=enc.window_size,
            out_chans=config.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=config.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_num_heads,
            ),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
    ).eval()


def random_state_dict(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Non-degenerate random weights: every tensor drawn afresh, norms near 1, others small."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in model.state_dict().items():
        noise = torch.randn(t.shape, generator=g)
        if not t.is_floating_point():
            out[name] = t  # BatchNorm's num_batches_tracked
        elif name.endswith("running_var"):
            out[name] = 1.0 + 0.1 * noise.abs()  # a variance must stay positive
        elif name.endswith("running_mean"):
            out[name] = 0.1 * noise
        elif "norm" in name or name.endswith(("neck.1.weight", "neck.3.weight")):
            out[name] = 1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise
        elif "rel_pos" in name or "pos_embed" in name:
            out[name] = 0.5 * noise
        elif "gaussian_matrix" in name:
            out[name] = noise  # spatial frequencies, as Meta initialises them
        elif t.ndim == 1:
            out[name] = 0.02 * noise  # small biases keep masks dependent on the image and prompts
        else:
            fan_in = t[0].numel() if t.ndim > 1 else 1
            out[name] = noise / max(fan_in, 1) ** 0.5
    return out


def random_tinyvit_weights(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Non-degenerate random weights for a MobileSAM-style state dict (BatchNorm variances kept positive)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in model.state_dict().items():
        if not t.is_floating_point():
            out[name] = t
            continue
        noise = torch.randn(t.shape, generator=g)
        if name.endswith("running_var"):
            out[name] = 0.5 + torch.rand(t.shape, generator=g)
        elif name.endswith("running_mean") or name.endswith("bias"):
            out[name] = 0.02 * noise  # small offsets keep the embedding dependent on the image
        elif "norm" in name or ".bn." in name or name.endswith(("neck.1.weight", "neck.3.weight")):
            out[name] = 1.0 + 0.1 * noise
        elif "attention_biases" in name:
            out[name] = 0.5 * noise
        elif "gaussian_matrix" in name:
            out[name] = noise  # spatial frequencies, as Meta initialises them
        else:
            out[name] = noise / max(t[0].numel() if t.ndim > 1 else 1, 1) ** 0.5
    return out


def twin_models(config: SamConfig, seed: int = 0) -> tuple[Sam, torch.nn.Module]:
    """(Meta's model, ours) holding identical random weights."""
    ref = meta_sam(config)
    ref.load_state_dict(random_state_dict(ref, seed), strict=False)
    ours = build_sam(config)
    ours.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("pixel_")})
    return ref, ours


def test_image(h: int = 480, w: int = 640, seed: int = 0) -> np.ndarray:
    """A smooth synthetic picture with a few shapes (HxWx3 uint8)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)
    for _ in range(4):
        cy, cx, r = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w, rng.uniform(0.05, 0.2) * min(h, w)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.integers(0, 255, 3)
    return img.astype(np.uint8)


test_image.__test__ = False  # not a pytest test
