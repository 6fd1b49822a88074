"""SAM 2 / 2.1 image model configurations, the builder that assembles a Sam2 from them, and configurations
read from files.

The values are those of Meta's `sam2/configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml`. SAM 2.0 and 2.1 differ
only in the video model's memory settings, so one config serves both for still images. A Meta checkpoint
holds no config (its YAML does), and its shapes do not tell the attention heads or which blocks attend
globally: `config_from_state_dict` recognises the published layouts by their widths and block counts.
A transformers config.json says everything (`config_from_transformers`). `check_config` refuses sizes
outside the published family's before anything is built.
"""

from dataclasses import asdict, dataclass, field, replace

import torch

from .build import DECODER_LIMITS, agreed_dim, count_indices, decoder_fields, range_problems, width_problems
from .hub import WeightsError
from .modeling.hiera import FpnNeck, Hiera, HieraImageEncoder
from .modeling.sam2 import Sam2
from .modeling.sam2_decoder import Sam2MaskDecoder, Sam2PromptEncoder, sam2_transformer


@dataclass(frozen=True)
class HieraConfig:
    embed_dim: int = 96  # width of the first stage; doubles at each stage
    num_heads: int = 1  # heads of the first stage; doubles at each stage
    stages: tuple[int, ...] = (2, 3, 16, 3)  # blocks per stage
    global_att_blocks: tuple[int, ...] = (12, 16, 20)  # blocks with global attention; others windowed
    window_spec: tuple[int, ...] = (8, 4, 14, 7)  # attention window of each stage
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14)  # background position embedding grid
    q_pool: int = 3  # number of stage changes that pool the queries (halve the map)


@dataclass(frozen=True)
class Sam2Config:
    encoder: HieraConfig = field(default_factory=HieraConfig)
    img_size: int = 1024  # side of the square model input
    hidden_dim: int = 256  # neck width, prompt embedding and decoder width
    fpn_top_down_levels: tuple[int, ...] = (2, 3)  # neck levels that add the coarser level's output
    scalp: int = 1  # coarsest neck levels dropped
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    # A single-mask request falls back to the best multimask output when its mask is unstable; Meta's
    # `build_sam2` sets these for every predictor it builds.
    dynamic_multimask_via_stability: bool = True
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98

    @property
    def backbone_stride(self) -> int:
        return 4 * 2 ** (len(self.encoder.stages) - 1 - self.scalp)

    @property
    def name(self) -> str:
        """The config's name in CONFIGS, or "hiera" for another."""
        return next((name for name, config in CONFIGS.items() if config == self), "hiera")


CONFIGS: dict[str, Sam2Config] = {
    "hiera_tiny": Sam2Config(HieraConfig(96, 1, (1, 2, 7, 2), (5, 7, 9), window_pos_embed_bkg_spatial_size=(7, 7))),
    "hiera_small": Sam2Config(HieraConfig(96, 1, (1, 2, 11, 2), (7, 10, 13), window_pos_embed_bkg_spatial_size=(7, 7))),
    "hiera_base_plus": Sam2Config(HieraConfig(112, 2)),
    "hiera_large": Sam2Config(HieraConfig(144, 2, (2, 6, 36, 4), (23, 33, 43), (8, 4, 16, 8), (7, 7))),
}

# A few-block Hiera at 256 px for fast tests (random weights only): it still has every kind of block
# (query pooling, windows that need padding, global attention).
TINY = Sam2Config(
    HieraConfig(16, 1, (1, 2, 3, 2), (4,), window_pos_embed_bkg_spatial_size=(7, 7)), img_size=256, hidden_dim=64
)

# State-dict entries of Meta's SAM 2 checkpoints that only the video model uses (memory attention, memory
# encoder, object pointers); an image model drops them and loads the rest strictly.
VIDEO_ONLY_KEYS = (
    "memory_attention.",
    "memory_encoder.",
    "mask_downsample.",
    "obj_ptr_proj.",
    "obj_ptr_tpos_proj.",
    "maskmem_tpos_enc",
    "no_mem_pos_enc",
    "no_obj_ptr",
    "no_obj_embed_spatial",
)


def drop_video_keys(state_dict: dict) -> dict:
    """Meta's SAM 2 state dict (its `model` entry) without the video-only entries."""
    return {k: v for k, v in state_dict.items() if not k.startswith(VIDEO_ONLY_KEYS)}


def build_image_encoder(config: Sam2Config) -> HieraImageEncoder:
    trunk = Hiera(**asdict(config.encoder))  # HieraConfig's fields are Hiera's arguments
    neck = FpnNeck(
        d_model=config.hidden_dim,
        backbone_channel_list=trunk.channel_list,
        fpn_top_down_levels=config.fpn_top_down_levels,
    )
    return HieraImageEncoder(trunk=trunk, neck=neck, scalp=config.scalp)


def build_sam2(config: Sam2Config | str, *, weights_source: str = "random initialisation") -> Sam2:
    """Build an uninitialised Sam2 (random weights) for a config or a name in CONFIGS.

    weights_source: what the model will say its weights are, for a caller that loads them next.
    """
    if isinstance(config, str):
        config = CONFIGS[config]
    grid = config.img_size // config.backbone_stride
    model = Sam2(
        image_encoder=build_image_encoder(config),
        prompt_encoder=Sam2PromptEncoder(
            embed_dim=config.hidden_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=Sam2MaskDecoder(
            transformer_dim=config.hidden_dim,
            transformer=sam2_transformer(
                depth=config.decoder_depth,
                embedding_dim=config.hidden_dim,
                num_heads=config.decoder_num_heads,
                mlp_dim=config.decoder_mlp_dim,
            ),
            num_multimask_outputs=config.num_multimask_outputs,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
            dynamic_multimask_via_stability=config.dynamic_multimask_via_stability,
            dynamic_multimask_stability_delta=config.dynamic_multimask_stability_delta,
            dynamic_multimask_stability_thresh=config.dynamic_multimask_stability_thresh,
        ),
        img_size=config.img_size,
        config=config,
        weights_source=weights_source,
    )
    return model.eval()


# ----------------------------------------------------------------------------- configurations from files

# Layouts a Meta checkpoint is recognised by: (first-stage width, blocks per stage) -> config. TINY is there
# so that the tests' random checkpoints load like the published ones.
LAYOUTS: dict[tuple[int, tuple[int, ...]], Sam2Config] = {
    (c.encoder.embed_dim, c.encoder.stages): c for c in (*CONFIGS.values(), TINY)
}
_TRUNK = "image_encoder.trunk."


def is_sam2_state_dict(sd: dict[str, torch.Tensor]) -> bool:
    """A Meta-named SAM 2 state dict (video model or image model)."""
    return any(k.startswith((_TRUNK, "sam_mask_decoder.")) for k in sd)


def config_from_state_dict(sd: dict[str, torch.Tensor]) -> Sam2Config:
    """The published layout a Meta-named SAM 2 state dict has (its trunk's width and blocks per stage).

    Only the trunk decides, so a mis-shaped tensor elsewhere is named by the strict check that follows.
    """
    width = [(_TRUNK + "patch_embed.proj.weight", 0), (_TRUNK + "pos_embed", 1), (_TRUNK + "pos_embed_window", 1)]
    width += [(_TRUNK + "blocks.0.norm1.weight", 0)]
    embed_dim = agreed_dim(sd, width, 0)
    n = count_indices(sd, _TRUNK + "blocks")
    # a stage's first block widens the channels (a `proj` of its shortcut); block 0 starts the first
    starts = [0] + [i for i in range(1, n) if f"{_TRUNK}blocks.{i}.proj.weight" in sd]
    stages = tuple(b - a for a, b in zip(starts, [*starts[1:], n]))
    config = LAYOUTS.get((embed_dim, stages))
    if config is None:
        known = ", ".join(f"{c.name} ({w} wide, stages {s})" for (w, s), c in LAYOUTS.items() if c.name != "hiera")
        raise WeightsError(
            f"a Hiera trunk {embed_dim} wide with stages {stages} is none of the published SAM 2 layouts ({known}); "
            "its attention heads and global blocks are not in the file: load it with a transformers config.json"
        )
    return config


def _pair(value: object, name: str) -> int:
    """A square size given as n or [n, n]."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if isinstance(value, (list, tuple)):
        raise WeightsError(f"config.json: {name} is {value}; only square sizes are supported")
    return value


def config_from_transformers(config: dict) -> Sam2Config:
    """Sam2Config from a transformers Sam2Model or Sam2VideoModel config.json (checked by check_config next)."""
    v = config.get("vision_config") or {}
    b = v.get("backbone_config") or {}
    p = config.get("prompt_encoder_config") or {}
    d = config.get("mask_decoder_config") or {}
    dim, heads = b.get("hidden_size", 96), b.get("num_attention_heads", 1)
    stages = tuple(b.get("blocks_per_stage", (1, 2, 7, 2)))
    img_size = _pair(b.get("image_size", 1024), "vision_config.backbone_config.image_size")
    expected = {
        "patch_kernel_size": [7, 7], "patch_stride": [4, 4], "patch_padding": [3, 3], "query_stride": [2, 2],
        "mlp_ratio": 4.0, "num_channels": 3, "hidden_act": "gelu",
        "embed_dim_per_stage": [dim * 2**i for i in range(len(stages))] if isinstance(dim, int) else None,
        "num_attention_heads_per_stage": [heads * 2**i for i in range(len(stages))] if isinstance(heads, int) else None,
    }
    unsupported = {k: b[k] for k, want in expected.items() if k in b and list_of(b[k]) != list_of(want)}
    for key, want in {"fpn_kernel_size": 1, "fpn_stride": 1, "fpn_padding": 0, "num_feature_levels": 3}.items():
        if v.get(key, want) != want:
            unsupported[key] = v[key]
    if d.get("attention_downsample_rate", 2) != 2:
        unsupported["attention_downsample_rate"] = d["attention_downsample_rate"]
    if _pair(p.get("image_size", img_size), "prompt_encoder_config.image_size") != img_size:
        unsupported["prompt_encoder_config.image_size"] = p["image_size"]
    if unsupported:
        raise WeightsError(f"config.json has settings this package does not implement: {unsupported}")
    encoder = HieraConfig(
        embed_dim=dim,
        num_heads=heads,
        stages=stages,
        global_att_blocks=tuple(b.get("global_attention_blocks", (5, 7, 9))),
        window_spec=tuple(b.get("window_size_per_stage", (8, 4, 14, 7))),
        window_pos_embed_bkg_spatial_size=tuple(b.get("window_positional_embedding_background_size", (7, 7))),
        q_pool=b.get("num_query_pool_stages", 3),
    )
    return replace(
        Sam2Config(encoder),
        img_size=img_size,
        hidden_dim=v.get("fpn_hidden_size", 256),
        fpn_top_down_levels=tuple(v.get("fpn_top_down_levels", (2, 3))),
        **decoder_fields(p, d),
        dynamic_multimask_via_stability=bool(d.get("dynamic_multimask_via_stability", True)),
        dynamic_multimask_stability_delta=float(d.get("dynamic_multimask_stability_delta", 0.05)),
        dynamic_multimask_stability_thresh=float(d.get("dynamic_multimask_stability_thresh", 0.98)),
    )


def list_of(value: object) -> object:
    return list(value) if isinstance(value, (list, tuple)) else value


# (field, config.json name, least, most): the most is the largest published model's (Hiera-L's).
HIERA_LIMITS = (
    ("encoder.embed_dim", "backbone_config.hidden_size", 8, 144),
    ("encoder.num_heads", "backbone_config.num_attention_heads", 1, 2),
    ("encoder.q_pool", "backbone_config.num_query_pool_stages", 3, 3),
    ("hidden_dim", "vision_config.fpn_hidden_size", 8, 256),
)


def check_config(config: Sam2Config) -> None:
    """Raise ValueError naming every size outside the SAM 2 family's range (Hiera tiny .. large)."""
    enc = config.encoder
    problems = range_problems(config, HIERA_LIMITS + DECODER_LIMITS)
    problems += width_problems(config.hidden_dim, config.decoder_num_heads)
    if isinstance(config.img_size, int) and config.img_size % 32:
        problems.append(f"img_size {config.img_size} must be a multiple of 32")
    per_stage = {"stages": (enc.stages, 1, 36), "window_spec": (enc.window_spec, 1, 16)}
    per_stage["window_pos_embed_bkg_spatial_size"] = (enc.window_pos_embed_bkg_spatial_size, 1, 14)
    for name, (values, least, most) in per_stage.items():
        want = 2 if name.startswith("window_pos") else 4
        if len(values) != want or not all(isinstance(x, int) and least <= x <= most for x in values):
            problems.append(f"encoder.{name} is {values}; allowed {want} values, each {least}..{most}")
    if not problems and sum(enc.stages) > 48:
        problems.append(f"encoder.stages has {sum(enc.stages)} blocks; allowed at most 48 (Hiera-L's)")
    if not problems and not all(isinstance(i, int) and 0 <= i < sum(enc.stages) for i in enc.global_att_blocks):
        problems.append(f"encoder.global_att_blocks {enc.global_att_blocks} must be blocks 0..{sum(enc.stages) - 1}")
    if problems:
        raise ValueError("; ".join(problems))
