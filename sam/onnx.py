"""SAM's prompt encoder and mask decoder as one ONNX graph, for decoding in a browser (ONNX Runtime Web).

The image encoder stays on the server: the page receives each image's embedding once and then answers
hovers and clicks itself. The graph takes every prompt as points, as Meta's web demo does: a box is its
two corners with labels 2 and 3, and a prompt without a box ends with a padding point labelled -1.

Inputs (C = prompt embedding width, h x w = the embedding grid, 64 x 64 for SAM's 1024 px input):
  image_embeddings  1xCxhxw float32
  point_coords      1xNx2 float32, (x, y) in model-input pixels (the image resized so its long side is img_size)
  point_labels      1xN float32: 1 positive, 0 negative, 2 box top-left, 3 box bottom-right, -1 padding
  mask_input        1x1x4hx4w float32: low-res logits of an earlier decode (zeros when there is none)
  has_mask_input    1 float32: 1 to use mask_input, 0 to ignore it
Outputs: low_res_masks 1x4x4hx4w float32 (mask token 0: the single-mask answer; 1-3: the three multimask
candidates) and iou_predictions 1x4. The page upsamples the logits to its display size itself.

SAM 2 models are not exported: their decoder also needs the encoder's high-resolution features, so the
app decodes for them on the server.
"""

import hashlib
import os
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .modeling.sam import Sam

EXPORT_VERSION = 1  # part of the cache key: bump it when the graph changes
OPSET = 18
INPUT_NAMES = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
OUTPUT_NAMES = ("low_res_masks", "iou_predictions")
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class DecoderGraph(nn.Module):
    """Prompt encoder + mask decoder of a Sam with the ONNX graph's inputs and outputs (see the module doc).

    Shares the model's modules (no copy of the weights).
    """

    def __init__(self, model: Sam) -> None:
        super().__init__()
        if not isinstance(model, Sam):
            name = type(model).__name__
            raise ValueError(f"only SAM models (ViT-B/L/H, MobileSAM, SlimSAM) are exported, not {name}")
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self.img_size = model.img_size

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """1xNx2 coordinates, 1xN labels (-1 to 3) -> 1xNxC sparse embeddings, as PromptEncoder's points and box."""
        pe = self.prompt_encoder
        embedding = pe.pe_layer.forward_with_coords(coords + 0.5, pe.input_image_size)
        labels = labels[..., None]
        embedding = torch.where(labels == -1, pe.not_a_point_embed.weight, embedding)
        for i, point_embedding in enumerate(pe.point_embeddings):
            embedding = embedding + (labels == i) * point_embedding.weight
        return embedding

    def embed_mask(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """1x1x4hx4w logits, has_mask_input 1 -> the 1xCxhxw dense embedding (no_mask_embed where it is 0)."""
        pe = self.prompt_encoder
        dense = pe.mask_downscaling(mask_input) * has_mask_input
        return dense + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sparse = self.embed_points(point_coords, point_labels)
        dense = self.embed_mask(mask_input, has_mask_input)
        image_pe = self.prompt_encoder.get_dense_pe()
        return self.mask_decoder.predict_masks(image_embeddings, image_pe, sparse, dense)


def example_inputs(model: Sam, points: int = 2) -> tuple[torch.Tensor, ...]:
    """Zero inputs of the graph's shapes for `model`, with `points` points."""
    c = model.prompt_encoder.embed_dim
    h, w = model.prompt_encoder.image_embedding_size
    return (
        torch.zeros(1, c, h, w),
        torch.zeros(1, points, 2),
        torch.tensor([[1.0] + [-1.0] * (points - 1)]),
        torch.zeros(1, 1, 4 * h, 4 * w),
        torch.zeros(1),
    )


def onnx_inputs(
    embedding: np.ndarray,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    mask_input: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The graph's feed for one prompt in model-input pixels: embedding 1xCxhxw, points Nx2 with labels N,
    box 4 (x0, y0, x1, y1), mask_input 4hx4w low-res logits; as the page builds it (static/decoder.js)."""
    coords = [] if points is None else [np.asarray(points, np.float32).reshape(-1, 2)]
    codes = [] if labels is None else [np.asarray(labels, np.float32).reshape(-1)]
    if box is not None:
        coords.append(np.asarray(box, np.float32).reshape(2, 2))
        codes.append(np.array([2, 3], np.float32))
    else:
        coords.append(np.zeros((1, 2), np.float32))
        codes.append(np.array([-1], np.float32))
    h, w = embedding.shape[-2:]
    return {
        "image_embeddings": np.asarray(embedding, np.float32),
        "point_coords": np.concatenate(coords)[None],
        "point_labels": np.concatenate(codes)[None],
        "mask_input": (np.zeros((4 * h, 4 * w)) if mask_input is None else mask_input).astype(np.float32)[None, None],
        "has_mask_input": np.array([0.0 if mask_input is None else 1.0], np.float32),
    }


def export_decoder(model: Sam, path: str | Path) -> Path:
    """Write the ONNX graph of `model`'s prompt encoder + mask decoder (float32 weights) to `path`.

    TorchScript-based exporter (dynamo=False): about 5 s for ViT-B's decoder on two CPU cores, where
    torch.export's (dynamo=True, which also needs onnxscript) took 35 s for the same graph; the number of
    points is a dynamic axis. Returns `path`.
    """
    path = Path(path)
    graph = DecoderGraph(model).float().eval()
    dynamic = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    # The tracer warns about the decoder's shape-dependent choices of how to multiply (both give the same
    # numbers): the traced graph keeps the choice made for two points.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
        torch.onnx.export(
            graph, example_inputs(model), str(path), input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic, opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )
    return path


def decoder_key(model: Sam) -> str:
    """Cache key of the exported graph: a hash of the prompt encoder's and mask decoder's weights, the
    model's input size and EXPORT_VERSION (16 hex digits)."""
    h = hashlib.sha256(f"sam-decoder-onnx v{EXPORT_VERSION} img{model.img_size}".encode())
    for prefix, module in (("prompt_encoder.", model.prompt_encoder), ("mask_decoder.", model.mask_decoder)):
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().to("cpu", torch.float32).contiguous()
            h.update(f"{prefix}{name}{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def cached_decoder(model: Sam, cache_dir: str | Path, key: str | None = None) -> Path:
    """The ONNX graph of `model` in `cache_dir` (decoder-KEY.onnx), exported on first use.

    Safe to call from several threads and processes: one export per key at a time here, and the file
    appears under its name only once it is complete.
    """
    key = key or decoder_key(model)
    folder = Path(cache_dir)
    path = folder / f"decoder-{key}.onnx"
    if path.is_file():
        return path
    with _locks_guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        if path.is_file():
            return path
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".decoder-{key}-", suffix=".onnx", dir=folder)
        os.close(fd)
        try:
            export_decoder(model, tmp)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return path
