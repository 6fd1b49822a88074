"""Resizing images, points and boxes to the model input: SAM keeps the aspect ratio (Meta's ResizeLongestSide),
SAM 2 does not (`ResizeSquare`)."""

from copy import deepcopy

import numpy as np
import torch
from PIL import Image


class ResizeLongestSide:
    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> H'xW'x3 uint8 with max(H', W') == target_length (PIL bilinear, as Meta)."""
        h, w = self.get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        return np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """...x2 (x, y) in original pixels -> the same points in resized-image pixels (float64)."""
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        coords = deepcopy(coords).astype(float)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """Nx4 (x0, y0, x1, y1) -> Nx4 in resized-image pixels."""
        return self.apply_coords(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_coords_torch(self, coords: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        """...x2 (x, y) in original pixels, any dtype -> float32 in resized-image pixels."""
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        scale = torch.tensor([new_w / old_w, new_h / old_h], dtype=torch.float, device=coords.device)
        return coords.to(torch.float) * scale

    def apply_boxes_torch(self, boxes: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        scale = long_side_length * 1.0 / max(oldh, oldw)
        return int(oldh * scale + 0.5), int(oldw * scale + 0.5)


class ResizeSquare(ResizeLongestSide):
    """SAM 2's resize: the image goes to the square input without keeping its aspect ratio, so points and
    boxes scale by S/W and S/H. The model resizes the image itself (antialiased, in floating point, as
    Meta's `SAM2Transforms`), so `apply_image` hands the image over unchanged."""

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> the same array: `Sam2.preprocess` resizes it."""
        return image

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        return long_side_length, long_side_length
