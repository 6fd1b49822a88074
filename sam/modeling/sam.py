"""The Sam module: an image encoder, a prompt encoder and a mask decoder, passed in."""

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..precision import resolve_dtype
from .common import EncoderPrecision
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder

if TYPE_CHECKING:  # sam.build imports this module
    from ..build import SamConfig

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(EncoderPrecision, nn.Module):
    mask_threshold: float = 0.0
    image_format: str = "RGB"
    keeps_aspect_ratio: bool = True  # the long side is resized to the input and the rest padded
    config: "SamConfig | None"  # what the parts were built from; None when they were assembled by hand
    weights_source: str  # where the weights came from, in words for people (load_model sets it)

    def __init__(
        self,
        *,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        config: "SamConfig | None" = None,
        weights_source: str = "random initialisation",
    ) -> None:
        super().__init__()
        self.config = config
        self.weights_source = weights_source
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        return self.image_encoder.img_size

    def set_precision(self, dtype: torch.dtype | str) -> "Sam":
        """Run the image encoder in dtype ('float32', 'bfloat16', 'auto' or a torch dtype); the prompt
        encoder and mask decoder stay in fp32."""
        dtype = resolve_dtype(dtype, self.device)
        if hasattr(self.image_encoder, "set_precision"):
            self.image_encoder.set_precision(dtype)
        else:
            self.image_encoder.to(dtype)
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Bx3xSxS fp32 preprocessed pixels -> BxCxhxw fp32 image embedding, stored channels-last.

        Channels-last is the layout the mask decoder reads (a row of C values per position), so no click
        pays for a transposing copy of the embedding.
        """
        mixed = hasattr(self.image_encoder, "set_precision")  # takes fp32 input and casts inside
        features = self.image_encoder(x if mixed else x.to(self.encoder_dtype)).float()
        return features.contiguous(memory_format=torch.channels_last)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW uint8/float pixels (long side already resized) -> normalised, padded Bx3xSxS."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, ...], original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """BxCx(4h)x(4w) low-res logits -> BxCxHxW logits at the original image size.

        Upsamples to the padded model input, crops the padding away, then resizes, as Meta does.
        """
        b, c = masks.shape[:2]
        masks = masks.flatten(0, 1)[:, None]  # B*C one-channel images: the same numbers, ~2.5x faster on a CPU
        masks = F.interpolate(masks, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        if masks.shape[-2:] != tuple(original_size):  # at the same size bilinear is the identity
            masks = F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)
        return masks.view(b, c, *masks.shape[-2:])
