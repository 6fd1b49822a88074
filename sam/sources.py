"""What the Ultralytics-style API (`SAM`, `SAMPredictor`, `auto_annotate`) takes as a source, in Ultralytics' colours.

- numpy arrays are BGR (OpenCV's order, what `cv2.imread` gives), HxWx3, HxWx4 (BGRA) or HxW;
- PIL images are RGB (Pillow's order);
- torch tensors are BCHW (or CHW) RGB floats in [0, 1], one image per batch element;
- a path, folder or glob names image files (sam.images reads them);
- a list or tuple holds any of these.

Meta's low-level `sam.SamPredictor` keeps Meta's convention (RGB arrays, `image_format="BGR"` to say otherwise).
URLs are not fetched, and videos, streams and webcams are refused, each with one message saying what to do.
Images given in memory are named image0.jpg, image1.jpg, ... by their place in the source, as Ultralytics does.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .images import ImageError, list_images, load_image

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpeg", ".mpg", ".wmv", ".flv", ".ts", ".asf")
STREAM_PREFIXES = ("rtsp://", "rtmp://", "tcp://", "udp://", "srt://")
URL_PREFIXES = ("http://", "https://")


@dataclass(frozen=True)
class Decoded:
    """An image already read, as HxWx3 uint8 RGB, and the name it goes by (a file path or image0.jpg)."""

    image: np.ndarray
    path: str


@dataclass(frozen=True)
class Item:
    """One image of a source: its name, and how to read it (HxWx3 uint8 RGB) when its turn comes."""

    path: str
    read: Callable[[], np.ndarray]


def read_file(path: str | os.PathLike) -> np.ndarray:
    """An image file -> HxWx3 uint8 RGB; sam.images.ImageError naming the file when it cannot be read."""
    try:
        return load_image(path)
    except ImageError as e:
        raise ImageError(f"cannot read image {path}: {e}") from e


def bgr_to_rgb(array: np.ndarray) -> np.ndarray:
    """A BGR (or BGRA, or grey) array -> HxWx3 uint8 RGB, through sam.images' checks and conversions."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 3:
        a = a[..., ::-1]
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[..., [2, 1, 0, 3]]
    return load_image(a)


def tensor_images(t: torch.Tensor) -> list[np.ndarray]:
    """A BCHW (or CHW) RGB float tensor in [0, 1] -> one HxWx3 uint8 RGB array per batch element."""
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[1] != 3:
        raise ValueError(f"a tensor source must be BCHW (or CHW) with 3 RGB channels, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"a tensor source must hold floats in [0, 1], got {t.dtype}: divide it by 255 first")
    t = t.detach().float().cpu()
    if t.numel() and (not torch.isfinite(t).all() or t.min() < 0 or t.max() > 1):
        raise ValueError("a tensor source must hold floats in [0, 1] (RGB), as Ultralytics takes it")
    return [load_image(np.ascontiguousarray(im.permute(1, 2, 0).numpy())) for im in t]


def check_path(text: str) -> None:
    """Refuse a URL, a stream or a video file, each with a message saying what to do instead."""
    lower = text.lower()
    if lower.startswith(URL_PREFIXES):
        raise ValueError(f"URLs are not fetched here: download the file first and pass its path ({text})")
    if lower.startswith(STREAM_PREFIXES):
        raise ValueError(f"streams are not supported: SAM segments still images ({text})")
    if Path(lower).suffix in VIDEO_SUFFIXES:
        raise ValueError(
            f"video is not supported: SAM segments still images. Extract frames first "
            f"(for example `ffmpeg -i {Path(text).name} frames/%05d.png`) and pass the folder ({text})"
        )


def expand(source: Any) -> list[Item]:
    """The images of a source (see the module docstring), in order, each read only when its turn comes.

    Raises ValueError for a source that is not an image (URL, video, stream, webcam, another type), and
    FileNotFoundError for a path that names no image.
    """
    items: list[Item] = []
    for i, s in enumerate(source if isinstance(source, (list, tuple)) else [source]):
        name = f"image{i}.jpg"
        if isinstance(s, (list, tuple)):
            items.extend(expand(s))
        elif isinstance(s, Decoded):
            items.append(Item(s.path, lambda s=s: s.image))
        elif isinstance(s, np.ndarray):
            items.append(Item(name, lambda s=s: bgr_to_rgb(s)))
        elif isinstance(s, Image.Image):
            items.append(Item(getattr(s, "filename", "") or name, lambda s=s: load_image(s)))
        elif isinstance(s, torch.Tensor):
            names = [name] if s.ndim == 3 else [f"image{i + b}.jpg" for b in range(len(s))]
            items.extend(Item(n, lambda im=im: im) for n, im in zip(names, tensor_images(s)))
        elif isinstance(s, (str, os.PathLike)):
            check_path(str(s))
            items.extend(Item(str(p), lambda p=p: read_file(p)) for p in list_images(s))
        elif isinstance(s, int) and not isinstance(s, bool):
            raise ValueError(f"source={s} is a webcam: not supported, SAM segments still images")
        else:
            raise ValueError(
                "source must be a path, folder, glob, numpy array (BGR), PIL image (RGB), torch tensor "
                f"(BCHW RGB in [0, 1]) or a list of these, got {type(s).__name__}"
            )
    return items
