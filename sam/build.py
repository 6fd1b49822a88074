"""Model configurations and the builder that assembles a Sam from them."""

from dataclasses import dataclass, field

from torch import nn

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
