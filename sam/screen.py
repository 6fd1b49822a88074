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
from collections.abc import Callable

import torch

from .modeling.mask_decoder import MaskDecoder
from .modeling.sam import Sam
from .modeling.sam2 import Sam2
from .precision import bf16_is_fast

MARGIN = 0.1


class Screen:
    def __init__(self, model: Sam | Sam2, margin: float = MARGIN, probe: int = 64, max_kept: float = 0.4) -> None:
        sam2 = isinstance(model, Sam2)
        self.prompt_encoder = model.sam_prompt_encoder if sam2 else model.prompt_encoder
        self.decoder = copy.deepcopy(model.sam_mask_decoder if sam2 else model.mask_decoder).to(torch.bfloat16)
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
        out = []
        for chunk in points.split(batch):
            labels = torch.ones(len(chunk), 1, dtype=torch.int, device=chunk.device)
            sparse, dense = self.prompt_encoder(points=(chunk[:, None, :], labels), boxes=None, masks=None)
            dense = dense[:1].to(torch.bfloat16)  # the same no-mask embedding for every prompt
            out.append(self.decoder.predict_iou(features, pe, sparse.to(torch.bfloat16), dense).float())
        return torch.cat(out)

    def decode(
        self,
        features: torch.Tensor,
        points: torch.Tensor,
        thresh: float,
        decode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The generator's predict_low_res with the screen: features 1xCxhxw, points Bx2 -> low-res logits
        Bx3x4hx4w and IoU Bx3, where `decode` (fp32) gives them for the kept prompts; the others have -inf
        logits and their bf16 IoU, at least `margin` below thresh."""
        iou = self.iou(features, points)[:, 1:]
        live = self.keep(iou, thresh)
        h, w = features.shape[-2:]
        logits = torch.full((len(points), 3, 4 * h, 4 * w), -torch.inf, device=points.device)
        if live.any():
            logits[live], iou[live] = decode(points[live])
        return logits, iou

    def keep(self, iou: torch.Tensor, thresh: float) -> torch.Tensor:
        """Screened IoU BxM -> B bools: the prompts whose fp32 IoU may pass thresh (counted for `on`)."""
        live = (iou > thresh - self.margin).any(1)
        self.screened += len(live)
        self.kept += int(live.sum())
        return live
