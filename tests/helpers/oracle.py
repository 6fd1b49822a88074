"""An oracle Sam for the automatic generator's tests: it knows the regions of a synthetic image.

The encoder passes the preprocessed image through; the decoder answers a point with the flat-colour
region holding it, at low resolution, as logits +-20, plus two variants: the region with a small island
and the region with a small hole (see tests/test_automatic.py for why every record can then be checked
pixel for pixel).
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sam.modeling.sam import PIXEL_MEAN, PIXEL_STD, Sam

# (x0, y0, x1, y1), exclusive ends, on multiples of 8 (grid points are 4 px from any edge); background elsewhere.
RECTS = [
    (8, 8, 40, 32),  # inside the top-left crop, more than 20 px from its inner edges
    (88, 8, 120, 40),  # inside the top-right crop
    (48, 48, 80, 88),  # across the centre: only the whole image sees it whole
    (8, 88, 40, 120),  # inside the bottom-left crop
    (96, 96, 112, 112),  # small, inside the bottom-right crop
    (112, 48, 128, 80),  # on the right edge, across two crops
]
PALETTE = np.array(
    [[30, 60, 90], [200, 40, 40], [40, 200, 40], [40, 40, 200], [220, 220, 40], [40, 220, 220], [220, 40, 220]]
)


def region_image() -> tuple[np.ndarray, np.ndarray]:
    """128x128x3 uint8 image of flat rectangles on a flat background, and its label map (0 = background)."""
    labels = np.zeros((128, 128), dtype=np.int64)
    for i, (x0, y0, x1, y1) in enumerate(RECTS):
        labels[y0:y1, x0:x1] = i + 1
    return PALETTE[labels].astype(np.uint8), labels


class PassThroughEncoder(nn.Module):
    """The 'embedding' is the preprocessed, padded image itself (1x3xSxS), times a unit weight."""

    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.gain = nn.Parameter(torch.ones(()))  # a parameter gives the model its dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain


class PointPassThrough(nn.Module):
    """Prompt encoder handing the points (BxNx2, model-input pixels) to the decoder unchanged."""

    def forward(self, points, boxes, masks):
        return points[0], torch.zeros(1)

    def get_dense_pe(self) -> torch.Tensor:
        return torch.zeros(1)


class RegionDecoder(nn.Module):
    """Low-res logits (S/4) of the flat-colour region holding each point, and two variants.

    Each input pixel takes the nearest palette colour (enlarging blends colours next to edges; the
    nearest colour puts the edge half-way, where it was); a low-res pixel belongs to the region when
    most of its 4x4 input pixels do. Masks: the region (IoU 0.95), the region plus a 2x2 island away
    from it (0.94), the region minus one low-res pixel inside it (0.96).
    """

    def __init__(self) -> None:
        super().__init__()
        palette = (torch.tensor(PALETTE, dtype=torch.float) - torch.tensor(PIXEL_MEAN)) / torch.tensor(PIXEL_STD)
        self.register_buffer("palette", palette, persistent=False)

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, *args, **kw):
        # multimask_output is always true in segment-everything; min_iou only lets a decoder skip work
        image = image_embeddings[0].float()
        size = image.shape[-1]
        low = size // 4
        nearest = ((image.permute(1, 2, 0)[:, :, None] - self.palette) ** 2).sum(-1).argmin(-1)  # S x S
        xy = sparse_prompt_embeddings[:, 0].floor().long().clamp(0, size - 1)
        same = nearest[None] == nearest[xy[:, 1], xy[:, 0]][:, None, None]
        region = F.avg_pool2d(same.float()[:, None], 4)[:, 0] > 0.5
        near = F.max_pool2d(region.float()[:, None], 5, stride=1, padding=2)[:, 0] > 0
        inner = -F.max_pool2d(-region.float()[:, None], 3, stride=1, padding=1)[:, 0] > 0
        island, hole = torch.zeros_like(region), torch.zeros_like(region)
        for b in range(len(region)):
            iy, ix = (xy[b, 1] // 4 + low // 2) % (low - 4) + 1, (xy[b, 0] // 4 + low // 3) % (low - 4) + 1
            if not near[b, iy - 1 : iy + 3, ix - 1 : ix + 3].any():
                island[b, iy : iy + 2, ix : ix + 2] = True
            if inner[b].any():
                hole.view(len(region), -1)[b, int(inner[b].flatten().int().argmax())] = True
        logits = torch.stack([region, region | island, region & ~hole], 1).float() * 40 - 20
        iou = torch.tensor([[0.95, 0.94, 0.96]]).expand(len(region), -1)
        return logits, iou


def oracle_sam(model_cls=Sam, img_size: int = 256) -> nn.Module:
    """Our Sam (or Meta's, model_cls) built around the region oracle."""
    return model_cls(
        image_encoder=PassThroughEncoder(img_size), prompt_encoder=PointPassThrough(), mask_decoder=RegionDecoder()
    ).eval()
