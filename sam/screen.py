"""Screening segment-everything's prompts with a bf16 copy of the mask decoder (SAM or SAM 2).

Meta's generators keep a mask only if its predicted IoU is above pred_iou_thresh. A bf16 decoder predicts
the IoU of every grid point at about half the cost of the fp32 one; only the points where one of the
bf16 predictions is within `margin` of the threshold (or above it) are decoded again in fp32, which
then decides exactly as Meta's code does. A point is missed only if bf16 moves its IoU by more than the
margin: on ViT-B with segment-anything's random initialisation (IoU predictions spanning -0.85 to 1.12)
the largest move over 3,072 predictions was 0.021, on SAM 2.1 Hiera-T's decoder (sigmoid scores from
0.30 to 0.69) 0.004 over 768, and 0.028 with its IoU head scaled tenfold (scores from 0.0002 to 0.9997);
the margin is 0.1.

Where most points survive the screen (it then costs more than it saves) it turns itself off for the rest
of the run: after `probe` points, if more than `max_kept` of them were kept.
"""

import copy
import weakref
from collections.abc import Callable

import torch
from torch import nn

from .modeling.common import Stamp, same_stamp, stamp
from .modeling.mask_decoder import MaskDecoder
from .modeling.sam import Sam
from .modeling.sam2 import Sam2
from .precision import bf16_is_fast

MARGIN = 0.1

_copies: "weakref.WeakKeyDictionary[nn.Module, tuple[Stamp, nn.Module]]" = weakref.WeakKeyDictionary()


def bf16_copy(decoder: nn.Module) -> nn.Module:
    """A bf16 copy of the decoder, made once per decoder (the app builds a generator per request) and made
    again when its weights have been replaced or changed in place since (`stamp`)."""
    weights = stamp(decoder)
    cached = _copies.get(decoder)
    if cached is None or not same_stamp(cached[0], weights):
        cached = _copies[decoder] = (weights, copy.deepcopy(decoder).to(torch.bfloat16))
    return cached[1]


class Screen:
    def __init__(self, model: Sam | Sam2, margin: float = MARGIN, probe: int = 64, max_kept: float = 0.4) -> None:
        sam2 = isinstance(model, Sam2)
        self.prompt_encoder = model.sam_prompt_encoder if sam2 else model.prompt_encoder
        self.decoder = bf16_copy(model.sam_mask_decoder if sam2 else model.mask_decoder)
        self.margin, self.probe, self.max_kept = margin, probe, max_kept
        self.start()

    @staticmethod
    def wanted(model: object, pred_iou_thresh: float, device: torch.device) -> bool:
        """Whether screening can pay: SAM's or SAM 2's decoder, a threshold that drops prompts, fast bf16 products."""
        sam = (isinstance(model, Sam) and isinstance(model.mask_decoder, MaskDecoder)) or isinstance(model, Sam2)
        return sam and pred_iou_thresh > 0.0 and bf16_is_fast(device)

    def start(self) -> None:
        """A new run: count again from zero, screening on."""
        self.screened = self.kept = 0

    @property
    def on(self) -> bool:
        return self.screened < self.probe or self.kept <= self.max_kept * self.screened

    @torch.no_grad()
    def iou(self, features: torch.Tensor, points: torch.Tensor, batch: int = 16) -> torch.Tensor:
        """features 1xCxhxw, points Bx2 (model-input pixels), one positive point each -> bf16 IoU predictions
        Bxnum_mask_tokens (the single-mask output first, then the three multimask ones), as float32."""
        pe = self.prompt_encoder.get_dense_pe().to(torch.bfloat16)
        features = features.to(torch.bfloat16)
        no_mask = self.prompt_encoder.no_mask_embed.weight.to(torch.bfloat16)
        rows = self.decoder.image_rows(features, pe, no_mask)  # the image side, made once for all the batches
        out = []
        for chunk in points.split(batch):
            labels = torch.ones(len(chunk), 1, dtype=torch.int, device=chunk.device)
            sparse, dense = self.prompt_encoder(points=(chunk[:, None, :], labels), boxes=None, masks=None)
            # the no-mask dense embedding is in the rows already: dense is not read
            out.append(self.decoder.predict_iou(features, pe, sparse.to(torch.bfloat16), dense, rows).float())
        return torch.cat(out)

    def decode(
        self,
        features: torch.Tensor,
        points: torch.Tensor,
        thresh: float,
        decode: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
        multimask: bool = True,
        extras: int = 0,
    ) -> tuple[torch.Tensor, ...]:
        """A generator's fp32 decode with the screen: features 1xCxhxw, points Bx2 -> what `decode` gives for
        the kept prompts: low-res logits BxMx4hx4w and IoU BxM (M = 3 with multimask, else 1), then `extras`
        per-prompt values B (SAM 2's object scores). The other prompts get -inf logits and extras, and
        their bf16 IoU, at least `margin` below thresh: the three multimask ones, or for a single mask the
        best of all four, since SAM 2 returns its single mask when it is stable and else the best of three."""
        scores = self.iou(features, points).to(points.device)
        scores = scores[:, 1:] if multimask else scores
        live = self.keep(scores, thresh)
        n, (h, w) = len(points), features.shape[-2:]
        out = (
            torch.full((n, 3 if multimask else 1, 4 * h, 4 * w), -torch.inf, device=points.device),
            scores if multimask else scores.max(1, keepdim=True).values,
            *(torch.full((n,), -torch.inf, device=points.device) for _ in range(extras)),
        )
        if live.any():
            for whole, kept in zip(out, decode(points[live]), strict=True):
                whole[live] = kept
        return out

    def keep(self, iou: torch.Tensor, thresh: float) -> torch.Tensor:
        """Screened IoU BxM -> B bools: the prompts whose fp32 IoU may pass thresh (counted for `on`)."""
        live = (iou > thresh - self.margin).any(1)
        self.screened += len(live)
        self.kept += int(live.sum())
        return live
