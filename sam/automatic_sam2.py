"""Segment everything with a SAM 2 model: the candidates of Meta's `SAM2AutomaticMaskGenerator`.

`SamAutomaticMaskGenerator` takes SAM and SAM 2 models; what SAM 2 does differently lives here. Meta's
SAM 2 generator differs from SAM's in how a batch of grid points becomes candidate masks:
- points are scaled to the square input in float32 (x / W * S, y / H * S), as `SAM2Transforms`;
- `multimask_output=False` asks for one mask per point (SAM 2's decoder then falls back to the best of its
  three when that mask is unstable);
- `use_m2m` decodes every candidate again, its clamped low-res logits as the mask prompt with its point,
  one mask each, and the IoU and stability filters judge the refined masks;
- with `min_mask_region_area`, Meta's predictor fills background regions and drops foreground regions of
  at most that many low-res pixels (8-connected) in the logits before they are upsampled (Meta does this
  with a CUDA kernel and skips it, with a warning, where the kernel is missing; here it runs everywhere);
- the low-res logits go to the crop size in one bilinear step (`Sam2.postprocess_masks`).
One setting is ours: `object_score_thresh` drops the masks of prompts whose object-score logit is not
above it (SAM 2 treats a logit <= 0 as "no object" when it tracks video); Meta's generator has no such gate.
"""

import numpy as np
import torch

from .modeling.sam2 import Sam2
from .predictor import SamPredictor
from .screen import Screen

PRED_IOU_THRESH = 0.8  # Meta's SAM 2 default (SAM's is 0.88); the other defaults are SAM's


def input_points(points: np.ndarray, crop_size: tuple[int, int], img_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nx2 (x, y) crop pixels -> the same points as float32 (what the records report) and in model-input
    pixels, computed in float32 in Meta's order."""
    pts = torch.as_tensor(points, dtype=torch.float32)
    h, w = crop_size
    scaled = pts.clone()
    scaled[:, 0] = scaled[:, 0] / w
    scaled[:, 1] = scaled[:, 1] / h
    return pts, scaled * img_size


def decode_points(
    predictor: SamPredictor,
    points: torch.Tensor,
    mask_input: torch.Tensor | None,
    multimask_output: bool,
    batch: int,
    min_iou: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One positive point per prompt: Nx2 model-input points (and Nx1xhxw mask prompts) -> low-res logits
    NxMxhxw, IoU scores NxM and object-score logits N, `batch` prompts per decoder call. With min_iou the
    masks of prompts with no score above it are not computed (-inf logits)."""
    model: Sam2 = predictor.model
    out: list[list[torch.Tensor]] = [[], [], []]
    for start in range(0, len(points), batch):
        chunk = points[start : start + batch].to(predictor.device)
        low, iou, obj = model.decode(
            predictor.features,
            predictor.high_res_features,
            point_coords=chunk[:, None, :],
            point_labels=torch.ones(len(chunk), 1, dtype=torch.int, device=chunk.device),
            mask_input=None if mask_input is None else mask_input[start : start + batch].to(predictor.device),
            multimask_output=multimask_output,
            min_iou=min_iou,
        )
        for acc, t in zip(out, (low, iou, obj[:, 0])):
            acc.append(t.float().cpu())
    return tuple(torch.cat(acc) for acc in out)


def candidates(
    predictor: SamPredictor,
    points: np.ndarray,
    crop_size: tuple[int, int],
    *,
    multimask_output: bool,
    use_m2m: bool,
    object_score_thresh: float | None,
    min_region_area: int,
    batch: int,
    pred_iou_thresh: float = 0.0,
    screen: Screen | None = None,
) -> dict[str, torch.Tensor]:
    """A batch of Nx2 grid points (crop pixels) -> candidates before the filters: logits Kxhxw, iou K and
    points Kx2 (float32, crop pixels), K = N x masks per point, fewer with the object-score gate.

    The logits of prompts whose scores cannot pass pred_iou_thresh (> 0) are -inf, not computed: the
    IoU filter drops them first. With use_m2m every candidate's logits prompt its refinement, so all are.
    With a screen (sam/screen.py) only the prompts it keeps are decoded in fp32.
    """
    pts, in_pts = input_points(points, crop_size, predictor.model.img_size)
    min_iou = pred_iou_thresh if pred_iou_thresh > 0.0 and not use_m2m else None
    if screen is not None and screen.on and min_iou is not None:
        def decode(kept: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return decode_points(predictor, kept, None, multimask_output, batch, min_iou)

        low, iou, obj = screen.decode(predictor.features, in_pts, min_iou, decode, multimask_output, extras=1)
    else:
        low, iou, obj = decode_points(predictor, in_pts, None, multimask_output, batch, min_iou)
    if object_score_thresh is not None:
        live = obj > object_score_thresh
        pts, in_pts, low, iou = pts[live], in_pts[live], low[live], iou[live]
    n_masks = low.shape[1]
    pts, in_pts = pts.repeat_interleave(n_masks, 0), in_pts.repeat_interleave(n_masks, 0)
    low, iou = low.flatten(0, 1), iou.flatten(0, 1)
    if use_m2m and len(low):
        # Meta's predictor hands back its low-res logits clamped; the refinement is prompted with those.
        low, iou, _ = decode_points(predictor, in_pts, low.clamp(-32.0, 32.0)[:, None], False, batch)
        low, iou = low[:, 0], iou[:, 0]
    if min_region_area > 0:
        low = fill_small_regions(low, min_region_area, predictor.model.mask_threshold)
    return {"logits": low, "iou": iou, "points": pts}


def fill_small_regions(logits: torch.Tensor, max_area: int, threshold: float) -> torch.Tensor:
    """Kxhxw low-res logits -> the same with 8-connected regions of at most max_area pixels flipped, as
    Meta's `SAM2Transforms.postprocess_masks`: regions at or below threshold (holes, and the background
    itself when it is that small) become threshold + 10, regions above it threshold - 10. Both kinds are
    found on the logits as given."""
    import cv2

    out = logits.clone()
    for k, mask in enumerate((logits > threshold).numpy()):
        for region, value in ((~mask, threshold + 10.0), (mask, threshold - 10.0)):
            n, labels, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
            small = np.nonzero(stats[1:, cv2.CC_STAT_AREA] <= max_area)[0] + 1
            if len(small):
                out[k][torch.from_numpy(np.isin(labels, small))] = value
    return out
