"""The settings SamAutomaticMaskGenerator checks before it starts (sam/automatic.py)."""

import numpy as np

from .modeling.sam import Sam
from .modeling.sam2 import Sam2

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


def check_settings(
    model: Sam | Sam2,
    points_per_side: int | None,
    point_grids: list[np.ndarray] | None,
    crop_n_layers: int,
    crop_n_points_downscale_factor: int,
    points_per_batch: int,
    output_mode: str,
    logits_memory_mb: int,
) -> None:
    """Raise ValueError naming the first setting the generator cannot use."""
    if crop_n_layers < 0:
        raise ValueError(f"crop_n_layers must be >= 0, got {crop_n_layers}")
    if crop_n_points_downscale_factor < 1:
        raise ValueError(f"crop_n_points_downscale_factor must be >= 1, got {crop_n_points_downscale_factor}")
    if (points_per_side is None) == (point_grids is None):
        raise ValueError("give exactly one of points_per_side and point_grids")
    if points_per_side is not None and points_per_side < 1:
        raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
    if point_grids is not None and len(point_grids) < crop_n_layers + 1:
        raise ValueError(f"point_grids has {len(point_grids)} grids, {crop_n_layers + 1} crop layers need one each")
    if output_mode not in OUTPUT_MODES:
        raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
    if points_per_batch < 1:
        raise ValueError(f"points_per_batch must be >= 1, got {points_per_batch}")
    if logits_memory_mb < 0:
        raise ValueError(f"logits_memory_mb must be >= 0, got {logits_memory_mb}")
