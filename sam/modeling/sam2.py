"""The Sam2 module for still images: a Hiera image encoder, SAM 2's prompt encoder and mask decoder,
passed in, and the no-memory embedding that image prediction adds to the coarsest features.

Names follow Meta's `SAM2Base` (`image_encoder`, `sam_prompt_encoder`, `sam_mask_decoder`,
`no_mem_embed`); the video model's memory modules are not built (see `build_sam2.VIDEO_ONLY_KEYS`).
"""

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..precision import resolve_dtype
from .common import EncoderPrecision
from .hiera import HieraImageEncoder
from .mask_decoder import ImageRows
from .sam2_decoder import Sam2MaskDecoder, Sam2PromptEncoder

if TYPE_CHECKING:  # sam.build_sam2 imports this module
    from ..build_sam2 import Sam2Config

PIXEL_MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics of pixels scaled to [0, 1]
PIXEL_STD = (0.229, 0.224, 0.225)


class Sam2(EncoderPrecision, nn.Module):
    """The same calls as `Sam` where they mean the same (preprocess, postprocess_masks, precision), and SAM
    2's own encode and decode: the embedding comes with high-resolution features, a box is two corner
    points, and the decoder also scores whether the object is there at all."""

    mask_threshold: float = 0.0
    image_format: str = "RGB"
    keeps_aspect_ratio: bool = False  # the image is resized to the square input (SAM pads instead)
    config: "Sam2Config | None"  # what the parts were built from; None when they were assembled by hand
    weights_source: str  # where the weights came from, in words for people (load_model sets it)

    def __init__(
        self,
        *,
        image_encoder: HieraImageEncoder,
        prompt_encoder: Sam2PromptEncoder,
        mask_decoder: Sam2MaskDecoder,
        img_size: int = 1024,
        config: "Sam2Config | None" = None,
        weights_source: str = "random initialisation",
    ) -> None:
        super().__init__()
        self.config = config
        self.weights_source = weights_source
        self.image_encoder = image_encoder
        self.sam_prompt_encoder = prompt_encoder
        self.sam_mask_decoder = mask_decoder
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, mask_decoder.transformer_dim))
        self.img_size = img_size
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)

    @property
    def prompt_encoder(self) -> Sam2PromptEncoder:
        return self.sam_prompt_encoder

    @property
    def mask_decoder(self) -> Sam2MaskDecoder:
        return self.sam_mask_decoder

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def set_precision(self, dtype: torch.dtype | str) -> "Sam2":
        """Run the image encoder's matrix products in dtype ('float32', 'bfloat16', 'auto' or a torch
        dtype); its norms and residual stream, the prompt encoder and the mask decoder stay in fp32."""
        self.image_encoder.set_precision(resolve_dtype(dtype, self.device))
        return self

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW pixels in [0, 255] (any size) -> Bx3xSxS: resized to the square input (the aspect ratio
        is not kept), antialiased, then normalised, as Meta's `SAM2Transforms` does."""
        x = F.interpolate(
            x / 255.0, (self.img_size, self.img_size), mode="bilinear", align_corners=False, antialias=True
        )
        return (x - self.pixel_mean) / self.pixel_std

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Bx3xSxS fp32 preprocessed pixels -> (image embedding BxCx(S/16)x(S/16) with the no-memory
        embedding added, high-resolution features (BxC/8x(S/4)x(S/4), BxC/4x(S/8)x(S/8)) through
        conv_s0/conv_s1), all fp32; the embedding is stored channels-last, the layout the decoder reads."""
        s0, s1, embedding = self.image_encoder(x)
        decoder = self.sam_mask_decoder
        high_res = (decoder.conv_s0(s0), decoder.conv_s1(s1))
        embedding = embedding + self.no_mem_embed.view(1, -1, 1, 1)
        return embedding.contiguous(memory_format=torch.channels_last), high_res

    def decode(
        self,
        image_embedding: torch.Tensor,
        high_res_features: tuple[torch.Tensor, torch.Tensor],
        *,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        min_iou: float | None = None,
        rows: ImageRows | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks for B prompts on one image (the embedding and features of `encode`, batch 1).

        point_coords: BxNx2 (x, y) in input-image pixels (0..S); point_labels: BxN (1 fg, 0 bg, -1 pad);
        boxes: Bx4 (x0, y0, x1, y1) in the same pixels, passed as two corner points ahead of the points;
        mask_input: Bx1x(S/4)x(S/4) low-res logits. Returns low-res logits Bx{1,3}x(S/4)x(S/4), IoU
        scores Bx{1,3} and object-score logits Bx1. With min_iou, the masks of prompts with no score above it
        are not computed: their logits are -inf. rows: the decoder's image side of this image, with the
        mask inputs folded in (`SamPredictor.image_rows`, `MaskDecoder.rows_with_mask`); mask_input is then
        None.
        """
        if rows is not None and mask_input is not None:
            raise ValueError("rows carry the mask input already: pass mask_input=None with them")
        points = None
        if point_coords is not None:
            points = (point_coords, point_labels)
        if boxes is not None:
            corners = boxes.reshape(-1, 2, 2)
            corner_labels = torch.tensor([[2, 3]], device=boxes.device).expand(corners.shape[0], -1)
            if points is not None:
                corners = torch.cat([corners, points[0]], dim=1)
                corner_labels = torch.cat([corner_labels, points[1].to(corner_labels.dtype)], dim=1)
            points = (corners, corner_labels)
        sparse, dense = self.sam_prompt_encoder(points, None, mask_input)
        pe = self.sam_prompt_encoder.get_dense_pe() if rows is None else None
        return self.sam_mask_decoder(
            image_embedding, pe, sparse, dense, multimask_output, high_res_features, min_iou, rows
        )

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, ...], original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """BxCx(S/4)x(S/4) low-res logits -> BxCxHxW logits at the original size, in one bilinear step as
        Meta's `SAM2Transforms` (input_size, always SxS here, is taken for the same call as `Sam`'s)."""
        b, c = masks.shape[:2]
        masks = F.interpolate(masks.flatten(0, 1)[:, None], tuple(original_size), mode="bilinear", align_corners=False)
        return masks.view(b, c, *masks.shape[-2:])
