"""Model configurations, the builder that assembles a Sam from them, and configurations read from files.

`config_from_transformers` reads a transformers SamModel config.json, `config_from_state_dict` the shapes
of a Meta-named state dict; `check_config` refuses sizes outside the published family's before anything
is built (a config.json asking for 100,000 blocks would otherwise take minutes and gigabytes to fail).
"""

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from .hub import WeightsError
from .modeling.image_encoder import ImageEncoderViT
from .modeling.mask_decoder import MaskDecoder
from .modeling.prompt_encoder import PromptEncoder
from .modeling.sam import Sam
from .modeling.transformer import TwoWayTransformer


@dataclass(frozen=True)
class ViTConfig:
    embed_dim: int = 768  # token width
    depth: int = 12  # number of blocks
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)  # blocks with global attention; others windowed
    mlp_dim: int | None = None  # None means 4 * embed_dim; SlimSAM prunes it
    window_size: int = 14
    patch_size: int = 16


@dataclass(frozen=True)
class TinyViTConfig:
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    patch_size: int = 16  # total stride of the encoder


@dataclass(frozen=True)
class SamConfig:
    encoder: ViTConfig | TinyViTConfig = field(default_factory=ViTConfig)
    img_size: int = 1024  # long side of the model input
    prompt_embed_dim: int = 256  # encoder output channels and decoder width
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    @property
    def name(self) -> str:
        if isinstance(self.encoder, TinyViTConfig):
            return "tiny_vit"
        return {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}.get(self.encoder.embed_dim, "vit")


CONFIGS: dict[str, SamConfig] = {
    "vit_b": SamConfig(ViTConfig(768, 12, 12, (2, 5, 8, 11))),
    "vit_l": SamConfig(ViTConfig(1024, 24, 16, (5, 11, 17, 23))),
    "vit_h": SamConfig(ViTConfig(1280, 32, 16, (7, 15, 23, 31))),
    "tiny_vit": SamConfig(TinyViTConfig()),
}


def build_image_encoder(config: SamConfig) -> nn.Module:
    enc = config.encoder
    if isinstance(enc, TinyViTConfig):
        from .modeling.tiny_vit import TinyViT

        return TinyViT(
            img_size=config.img_size,
            embed_dims=enc.embed_dims,
            depths=enc.depths,
            num_heads=enc.num_heads,
            window_sizes=enc.window_sizes,
            mlp_ratio=enc.mlp_ratio,
            out_chans=config.prompt_embed_dim,
        )
    return ImageEncoderViT(
        img_size=config.img_size,
        patch_size=enc.patch_size,
        embed_dim=enc.embed_dim,
        depth=enc.depth,
        num_heads=enc.num_heads,
        mlp_dim=enc.mlp_dim,
        out_chans=config.prompt_embed_dim,
        window_size=enc.window_size,
        global_attn_indexes=enc.global_attn_indexes,
    )


def build_sam(config: SamConfig | str, *, weights_source: str = "random initialisation") -> Sam:
    """Build an uninitialised Sam (random weights) for a config or a name in CONFIGS.

    weights_source: what the model will say its weights are, for a caller that loads them next.
    """
    if isinstance(config, str):
        config = CONFIGS[config]
    grid = config.img_size // config.encoder.patch_size
    model = Sam(
        image_encoder=build_image_encoder(config),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=config.prompt_embed_dim,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                num_heads=config.decoder_num_heads,
                mlp_dim=config.decoder_mlp_dim,
            ),
            num_multimask_outputs=config.num_multimask_outputs,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        config=config,
        weights_source=weights_source,
    )
    return model.eval()


# ----------------------------------------------------------------------------- configurations from files


def config_from_transformers(config: dict) -> SamConfig:
    """SamConfig from the contents of a transformers SamModel config.json (not yet checked: see check_config)."""
    if config.get("model_type", "sam") != "sam":
        raise WeightsError(f"config.json describes a {config.get('model_type')!r} model, not SAM ('sam')")
    v = config.get("vision_config") or {}
    p = config.get("prompt_encoder_config") or {}
    d = config.get("mask_decoder_config") or {}
    unsupported = {k: v[k] for k in ("use_rel_pos", "use_abs_pos", "qkv_bias") if v.get(k) is False}
    if d.get("attention_downsample_rate", 2) != 2:
        unsupported["attention_downsample_rate"] = d["attention_downsample_rate"]
    if p.get("image_size", v.get("image_size", 1024)) != v.get("image_size", 1024):
        unsupported["prompt_encoder_config.image_size"] = p["image_size"]
    if unsupported:
        raise WeightsError(f"config.json has settings this package does not implement: {unsupported}")
    hidden = v.get("hidden_size", 768)
    mlp_dim = v.get("mlp_dim")
    if mlp_dim is None and isinstance(hidden, int):
        mlp_dim = int(hidden * v.get("mlp_ratio", 4.0))
    encoder = ViTConfig(
        embed_dim=hidden,
        depth=v.get("num_hidden_layers", 12),
        num_heads=v.get("num_attention_heads", 12),
        global_attn_indexes=tuple(v.get("global_attn_indexes", (2, 5, 8, 11))),
        mlp_dim=None if mlp_dim == 4 * hidden else mlp_dim,
        window_size=v.get("window_size", 14),
        patch_size=v.get("patch_size", 16),
    )
    return SamConfig(
        encoder,
        img_size=v.get("image_size", 1024),
        prompt_embed_dim=v.get("output_channels", 256),
        **decoder_fields(p, d),
    )


def decoder_fields(prompt_encoder: dict, mask_decoder: dict) -> dict:
    """The prompt encoder's and mask decoder's sizes from a transformers config.json (SAM and SAM 2 alike)."""
    p, d = prompt_encoder, mask_decoder
    return dict(
        mask_in_chans=p.get("mask_input_channels", 16),
        decoder_depth=d.get("num_hidden_layers", 2),
        decoder_mlp_dim=d.get("mlp_dim", 2048),
        decoder_num_heads=d.get("num_attention_heads", 8),
        num_multimask_outputs=d.get("num_multimask_outputs", 3),
        iou_head_depth=d.get("iou_head_depth", 3),
        iou_head_hidden_dim=d.get("iou_head_hidden_dim", 256),
    )


def count_indices(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of distinct indices N among keys `prefix.N.*`."""
    n = len(prefix) + 1
    return len({k[n:].split(".")[0] for k in state_dict if k.startswith(prefix + ".")})


def agreed_dim(sd: dict[str, torch.Tensor], where: list[tuple[str, int]], fallback: int) -> int:
    """The size most of the (key, axis) places agree on: one mis-shaped tensor does not set the width of
    the whole model, so the strict check that follows names that tensor instead of every other one."""
    sizes = [sd[k].shape[a] for k, a in where if k in sd and sd[k].ndim > a]
    return Counter(sizes).most_common(1)[0][0] if sizes else fallback


def config_from_state_dict(sd: dict[str, torch.Tensor]) -> SamConfig:
    """Read the architecture off a Meta-named state dict's shapes (the decoder's 8 heads are assumed).

    A missing key falls back to SAM's default for what it would tell, so that the strict check that
    follows names every missing key instead of stopping at the first.
    """
    if not any(k.startswith("image_encoder.") for k in sd):
        raise WeightsError(f"this is not a SAM checkpoint: no image_encoder keys (it starts with {list(sd)[:3]})")
    default, vit = SamConfig(), ViTConfig()

    def dim(key: str, axis: int, fallback: int) -> int:
        return sd[key].shape[axis] if key in sd and sd[key].ndim > axis else fallback

    width = [("mask_decoder.iou_token.weight", 1), ("mask_decoder.mask_tokens.weight", 1)]
    width += [("prompt_encoder.no_mask_embed.weight", 1), ("prompt_encoder.not_a_point_embed.weight", 1)]
    width += [("image_encoder.neck.0.weight", 0), ("mask_decoder.transformer.norm_final_attn.weight", 0)]
    decoder = dict(
        prompt_embed_dim=agreed_dim(sd, width, default.prompt_embed_dim),
        mask_in_chans=dim("prompt_encoder.mask_downscaling.3.weight", 0, default.mask_in_chans),
        decoder_depth=count_indices(sd, "mask_decoder.transformer.layers") or default.decoder_depth,
        decoder_mlp_dim=dim("mask_decoder.transformer.layers.0.mlp.lin1.weight", 0, default.decoder_mlp_dim),
        num_multimask_outputs=dim("mask_decoder.mask_tokens.weight", 0, default.num_multimask_outputs + 1) - 1,
        iou_head_depth=count_indices(sd, "mask_decoder.iou_prediction_head.layers") or default.iou_head_depth,
        iou_head_hidden_dim=dim("mask_decoder.iou_prediction_head.layers.0.weight", 0, default.iou_head_hidden_dim),
    )
    if any(k.startswith("image_encoder.layers.") for k in sd):
        return SamConfig(TinyViTConfig(), **decoder)
    embed_dim = dim("image_encoder.patch_embed.proj.weight", 0, vit.embed_dim)
    patch = dim("image_encoder.patch_embed.proj.weight", 3, vit.patch_size)
    grid = dim("image_encoder.pos_embed", 1, default.img_size // patch)
    depth = count_indices(sd, "image_encoder.blocks") or vit.depth
    rel_pos = [dim(f"image_encoder.blocks.{i}.attn.rel_pos_h", 0, 0) for i in range(depth)]
    head_dim = dim("image_encoder.blocks.0.attn.rel_pos_h", 1, embed_dim // vit.num_heads)
    global_blocks = tuple(i for i, n in enumerate(rel_pos) if n == 2 * grid - 1) or vit.global_attn_indexes
    windows = [n for i, n in enumerate(rel_pos) if i not in global_blocks and n > 0]
    mlp_dim = dim("image_encoder.blocks.0.mlp.lin1.weight", 0, 4 * embed_dim)
    encoder = ViTConfig(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=max(embed_dim // max(head_dim, 1), 1),
        global_attn_indexes=global_blocks,
        mlp_dim=None if mlp_dim == 4 * embed_dim else mlp_dim,
        window_size=(windows[0] + 1) // 2 if windows else vit.window_size,
        patch_size=patch,
    )
    return SamConfig(encoder, img_size=grid * patch, **decoder)


# ----------------------------------------------------------------------------- the family's sizes

# (field of SamConfig, its name in a transformers config.json, least, most): the most is the largest
# published model's (ViT-H's, for the encoder), so anything beyond is not a SAM checkpoint.
VIT_LIMITS = (
    ("encoder.embed_dim", "vision_config.hidden_size", 1, 1280),
    ("encoder.depth", "vision_config.num_hidden_layers", 1, 32),
    ("encoder.num_heads", "vision_config.num_attention_heads", 1, 16),
    ("encoder.window_size", "vision_config.window_size", 1, 14),
    ("encoder.patch_size", "vision_config.patch_size", 1, 16),
)
DECODER_LIMITS = (
    ("img_size", "vision_config.image_size", 32, 1024),
    ("mask_in_chans", "prompt_encoder_config.mask_input_channels", 4, 16),
    ("decoder_depth", "mask_decoder_config.num_hidden_layers", 1, 2),
    ("decoder_mlp_dim", "mask_decoder_config.mlp_dim", 1, 2048),
    ("decoder_num_heads", "mask_decoder_config.num_attention_heads", 1, 8),
    ("num_multimask_outputs", "mask_decoder_config.num_multimask_outputs", 1, 3),
    ("iou_head_depth", "mask_decoder_config.iou_head_depth", 1, 3),
    ("iou_head_hidden_dim", "mask_decoder_config.iou_head_hidden_dim", 1, 256),
)


def _get(config: object, path: str) -> object:
    for part in path.split("."):
        config = getattr(config, part)
    return config


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def range_problems(config: object, limits: tuple[tuple[str, str, int, int], ...]) -> list[str]:
    """'<field> (<config.json name>) is <value>; allowed <least>..<most>' for each size outside its range."""
    problems = []
    for path, hf_name, least, most in limits:
        value = _get(config, path)
        if not (_is_int(value) and least <= value <= most):
            problems.append(f"{path} ({hf_name}) is {value!r}; allowed {least}..{most}")
    return problems


def width_problems(width: object, heads: object) -> list[str]:
    """The decoder's width: a multiple of 8 up to 256, which its attention heads divide."""
    if not (_is_int(width) and 8 <= width <= 256 and width % 8 == 0):
        return [f"the decoder width is {width!r}; allowed 8..256, a multiple of 8"]
    if _is_int(heads) and heads > 0 and (width // 2) % heads:
        return [f"the decoder width {width} over 2 is not a multiple of its {heads} attention heads"]
    return []


def check_config(config: SamConfig) -> None:
    """Raise ValueError naming every size outside the SAM family's range (ViT-B/L/H, SlimSAM, MobileSAM)."""
    problems = range_problems(config, DECODER_LIMITS)
    problems += width_problems(config.prompt_embed_dim, config.decoder_num_heads)
    enc = config.encoder
    if isinstance(enc, ViTConfig):
        problems += range_problems(config, VIT_LIMITS)
        if enc.mlp_dim is not None and not (_is_int(enc.mlp_dim) and 1 <= enc.mlp_dim <= 5120):
            problems.append(f"encoder.mlp_dim (vision_config.mlp_dim) is {enc.mlp_dim!r}; allowed 1..5120")
        if not problems:
            if enc.embed_dim % enc.num_heads:
                problems.append(f"encoder.embed_dim {enc.embed_dim} is not a multiple of its {enc.num_heads} heads")
            if config.img_size % enc.patch_size or config.img_size // enc.patch_size > 64:
                problems.append(f"img_size {config.img_size} must be a multiple of patch_size {enc.patch_size}, "
                                "at most 64 patches a side")
            if not all(_is_int(i) and 0 <= i < enc.depth for i in enc.global_attn_indexes):
                problems.append(f"encoder.global_attn_indexes {enc.global_attn_indexes} must be blocks "
                                f"0..{enc.depth - 1}")
    if problems:
        raise ValueError("; ".join(problems))
