"""Meta's SAM 2 model (the `sam2` package) built from its own YAML config with our configuration's values,
and the same random weights in ours."""

from pathlib import Path

import numpy as np
import sam2
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from sam2.modeling.sam2_base import SAM2Base
from sam2.sam2_image_predictor import SAM2ImagePredictor

from sam.build_sam2 import Sam2Config, build_sam2, drop_video_keys
from sam.modeling.sam2 import Sam2
from tests.helpers.reference import random_state_dict

YAMLS = {
    "hiera_tiny": "sam2.1/sam2.1_hiera_t.yaml",
    "hiera_small": "sam2.1/sam2.1_hiera_s.yaml",
    "hiera_base_plus": "sam2.1/sam2.1_hiera_b+.yaml",
    "hiera_large": "sam2.1/sam2.1_hiera_l.yaml",
}


def meta_yaml(name: str) -> DictConfig:
    """The `model` section of one of Meta's configs, read as plain YAML (no Hydra search path)."""
    return OmegaConf.load(Path(sam2.__file__).parent / "configs" / name).model


def meta_sam2(config: Sam2Config, yaml: str = YAMLS["hiera_tiny"]) -> SAM2Base:
    """Meta's SAM2Base from its YAML with the image model's values taken from config, and the decoder
    post-processing settings that Meta's `build_sam2` adds by default."""
    cfg = meta_yaml(yaml)
    enc = config.encoder
    cfg.image_size = config.img_size
    trunk = cfg.image_encoder.trunk
    trunk.embed_dim, trunk.num_heads = enc.embed_dim, enc.num_heads
    trunk.stages, trunk.global_att_blocks = list(enc.stages), list(enc.global_att_blocks)
    trunk.window_spec = list(enc.window_spec)
    trunk.window_pos_embed_bkg_spatial_size = list(enc.window_pos_embed_bkg_spatial_size)
    trunk.q_pool = enc.q_pool
    neck = cfg.image_encoder.neck
    neck.d_model, neck.position_encoding.num_pos_feats = config.hidden_dim, config.hidden_dim
    neck.backbone_channel_list = [enc.embed_dim * 2**i for i in reversed(range(len(enc.stages)))]
    neck.fpn_top_down_levels = list(config.fpn_top_down_levels)
    cfg.image_encoder.scalp = config.scalp
    cfg.sam_mask_decoder_extra_args = {
        "dynamic_multimask_via_stability": config.dynamic_multimask_via_stability,
        "dynamic_multimask_stability_delta": config.dynamic_multimask_stability_delta,
        "dynamic_multimask_stability_thresh": config.dynamic_multimask_stability_thresh,
    }
    return instantiate(cfg, _recursive_=True).eval()


def twin_sam2(config: Sam2Config, seed: int = 0, yaml: str = YAMLS["hiera_tiny"]) -> tuple[SAM2Base, Sam2]:
    """(Meta's model, ours) holding identical random weights; ours loads Meta's state dict strictly once
    the video-only entries are dropped."""
    ref = meta_sam2(config, yaml)
    ref.load_state_dict(random_state_dict(ref, seed))
    ours = build_sam2(config)
    ours.load_state_dict(drop_video_keys(ref.state_dict()))
    return ref, ours


@torch.no_grad()
def meta_features(ref: SAM2Base, image: torch.Tensor) -> list[torch.Tensor]:
    """Meta's neck outputs for a preprocessed Bx3xSxS image, finest first, scalped (before conv_s0/s1)."""
    return ref.image_encoder(image)["backbone_fpn"]


def meta_predictor(ref) -> SAM2ImagePredictor:
    """Meta's predictor, its feature sizes (fixed for 1024 px) set for the model's input size, and a hook
    that keeps the object scores its predict drops."""
    pred = SAM2ImagePredictor(ref)
    s = ref.image_size
    pred._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    pred.object_scores = []
    ref.sam_mask_decoder.register_forward_hook(lambda m, i, out: pred.object_scores.append(out[3]))
    return pred


def meta_predict(pred: SAM2ImagePredictor, **prompt) -> tuple[np.ndarray, ...]:
    """Meta's predict (masks, scores, low-res logits), the object scores and the unthresholded logits."""
    masks, scores, low = pred.predict(**prompt)
    obj = pred.object_scores[-1].squeeze(0).numpy()
    logits, _, _ = pred.predict(**prompt, return_logits=True)
    return masks, scores, low, obj, logits
