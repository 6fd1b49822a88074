"""SAM 2 / 2.1 image model configurations and the builder that assembles a Sam2 from them.

The values are those of Meta's `sam2/configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml`. SAM 2.0 and 2.1 differ
only in the video model's memory settings, so one config serves both for still images.
"""

from dataclasses import asdict, dataclass, field

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


def build_sam2(config: Sam2Config | str) -> Sam2:
    """Build an uninitialised Sam2 (random weights) for a config or a name in CONFIGS."""
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
    )
    model.config = config
    return model.eval()
