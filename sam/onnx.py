"""SAM's prompt encoder and mask decoder as ONNX graphs, for decoding in a browser (ONNX Runtime Web).

The image encoder stays on the server: the page receives each image's embedding once and then answers
hovers and clicks itself. The graph takes every prompt as points, as Meta's web demo does: a box is its
two corners with labels 2 and 3, and a prompt without a box ends with a padding point labelled -1.

Two graphs: the image graph runs once per image, the decoder graph once per decode. The image graph computes
what the decoder's first layer does to the image before any prompt can change it (the keys and values of
its token-to-image attention, the queries of its image-to-token one); every decode then adds the mask
input's share (16 channels folded through each projection) instead of projecting 256 channels of every
image vector again.

Image graph: image_embeddings 1xCxhxw float32 -> image_side 1x(hw)x3I float32 (I = the attention's width).
Decoder graph inputs (C = prompt embedding width, h x w = the embedding grid, 64 x 64 for SAM's 1024 px input):
  image_embeddings  1xCxhxw float32
  image_side        1x(hw)x3I float32, the image graph's output for the same embedding
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
import torch.nn.functional as F

from .modeling.mask_decoder import ImageRows
from .modeling.sam import Sam

EXPORT_VERSION = 3  # part of the cache key: bump it when a graph changes
OPSET = 18
INPUT_NAMES = ("image_embeddings", "image_side", "point_coords", "point_labels", "mask_input", "has_mask_input")
PARTS = ("decoder", "image")  # the graphs, by file name prefix
OUTPUT_NAMES = ("low_res_masks", "iou_predictions")
_export_lock = threading.Lock()  # torch.onnx.export keeps global state: one export at a time in a process


class DecoderGraph(nn.Module):
    """Prompt encoder + mask decoder of a Sam with the ONNX graph's inputs and outputs (see the module doc).

    Shares the model's modules (no copy of the weights).
    """

    def __init__(self, model: Sam) -> None:
        super().__init__()
        require_sam(model)
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

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_side: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        md, pe = self.mask_decoder, self.prompt_encoder
        first = md.transformer.layers[0]
        tokens = md.tokens(self.embed_points(point_coords, point_labels))
        h16 = pe.mask_downscaling[:-1](mask_input).flatten(2).transpose(1, 2)  # 1 x hw x 16
        dense = self.dense_through(None, h16, has_mask_input)
        keys = image_embeddings.flatten(2).transpose(1, 2) + dense  # src of MaskDecoder.predict_masks
        key_pe = pe.get_dense_pe().flatten(2).transpose(1, 2)
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        k0, v0, q0 = image_side.chunk(3, dim=-1)
        # The first TwoWayAttentionBlock from the image side of image_side, the mask input folded in.
        k = heads(k0 + self.dense_through(t2i.k_proj, h16, has_mask_input), t2i.num_heads)
        v = heads(v0 + self.dense_through(t2i.v_proj, h16, has_mask_input), t2i.num_heads)
        qt = heads(q0 + self.dense_through(i2t.q_proj, h16, has_mask_input), i2t.num_heads).transpose(2, 3)
        queries, keys = first.first_from_rows(tokens, ImageRows(keys, key_pe, k, v, qt))

        hs, keys = md.transformer.layers_from(1, queries, keys, tokens, key_pe, 1 + md.num_mask_tokens)
        hyper_in, iou_pred = md.read_tokens(hs)
        h, w = pe.image_embedding_size
        return md.upscale_masks(keys.reshape(1, h, w, -1), hyper_in), iou_pred

    def dense_through(self, proj: nn.Linear | None, h16: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """The dense prompt embedding (1 x hw x C) times proj's weight, without its bias (None: the embedding
        itself): mask_downscaling's last 1x1 convolution folded into proj, applied to its 16 channels h16."""
        conv, no_mask = self.prompt_encoder.mask_downscaling[-1], self.prompt_encoder.no_mask_embed.weight
        weight, bias = conv.weight.flatten(1), conv.bias  # C x 16, C
        if proj is not None:
            weight, bias, no_mask = proj.weight @ weight, proj.weight @ bias, no_mask @ proj.weight.T
        return F.linear(h16, weight, bias) * has_mask_input + (1 - has_mask_input) * no_mask


class ImageSideGraph(nn.Module):
    """The image graph: image_embeddings 1xCxhxw -> image_side 1x(hw)x3I, the projections of the image that
    the decoder's first layer makes before any prompt is added (keys with the positional encoding and
    values of its token-to-image attention, queries with the encoding of its image-to-token one)."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        require_sam(model)
        self.prompt_encoder = model.prompt_encoder
        self.first = model.mask_decoder.transformer.layers[0]

    def forward(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        x = image_embeddings.flatten(2).transpose(1, 2)
        x_pe = x + self.prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2)
        t2i, i2t = self.first.cross_attn_token_to_image, self.first.cross_attn_image_to_token
        return torch.cat([t2i.k_proj(x_pe), t2i.v_proj(x), i2t.q_proj(x_pe)], dim=-1)


def require_sam(model: Sam) -> None:
    if not isinstance(model, Sam):
        name = type(model).__name__
        raise ValueError(f"only SAM models (ViT-B/L/H, MobileSAM, SlimSAM) are exported, not {name}")


def check_part(part: str) -> None:
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, not {part!r}")


def heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """B x L x (H d) -> B x H x L x d."""
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


def example_inputs(model: Sam, points: int = 2) -> tuple[torch.Tensor, ...]:
    """Zero inputs of the decoder graph's shapes for `model`, with `points` points."""
    c = model.prompt_encoder.embed_dim
    h, w = model.prompt_encoder.image_embedding_size
    side = 3 * model.mask_decoder.transformer.layers[0].cross_attn_token_to_image.internal_dim
    return (
        torch.zeros(1, c, h, w),
        torch.zeros(1, h * w, side),
        torch.zeros(1, points, 2),
        torch.tensor([[1.0] + [-1.0] * (points - 1)]),
        torch.zeros(1, 1, 4 * h, 4 * w),
        torch.zeros(1),
    )


def onnx_inputs(
    embedding: np.ndarray,
    image_side: np.ndarray,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    mask_input: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The decoder graph's feed for one prompt in model-input pixels: embedding 1xCxhxw, the image graph's
    image_side, points Nx2 with labels N, box 4 (x0, y0, x1, y1), mask_input 4hx4w low-res logits; as the
    page builds it (static/decoder.js)."""
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
        "image_side": np.asarray(image_side, np.float32),
        "point_coords": np.concatenate(coords)[None],
        "point_labels": np.concatenate(codes)[None],
        "mask_input": (np.zeros((4 * h, 4 * w)) if mask_input is None else mask_input).astype(np.float32)[None, None],
        "has_mask_input": np.array([0.0 if mask_input is None else 1.0], np.float32),
    }


def export_decoder(model: Sam, path: str | Path, part: str = "decoder") -> Path:
    """Write `model`'s decoder graph, or with part="image" its image graph (float32 weights), to `path`.

    TorchScript-based exporter (dynamo=False): about 5 s for ViT-B's decoder on two CPU cores, where
    torch.export's (dynamo=True, which also needs onnxscript) took 35 s for the same graph; the number of
    points is a dynamic axis. Returns `path`.
    """
    check_part(part)
    path = Path(path)
    example = example_inputs(model)
    if part == "image":
        graph, example, names, outputs = ImageSideGraph(model), example[:1], ["image_embeddings"], ["image_side"]
        dynamic = {}
    else:
        graph, names, outputs = DecoderGraph(model), list(INPUT_NAMES), list(OUTPUT_NAMES)
        dynamic = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    # The tracer warns about the decoder's shape-dependent choices of how to multiply (both give the same
    # numbers): the traced graph keeps the choice made for two points.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
        torch.onnx.export(
            graph.float().eval(), example, str(path), input_names=names, output_names=outputs, dynamic_axes=dynamic,
            opset_version=OPSET, dynamo=False, do_constant_folding=True,
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


def cached_decoder(model: Sam, cache_dir: str | Path, key: str | None = None, part: str = "decoder") -> Path:
    """`model`'s decoder graph (or its image graph, part="image") in `cache_dir`, PART-KEY.onnx, exported on
    first use.

    Safe to call from several threads and processes: one export at a time here, and the file appears under
    its name only once it is complete.
    """
    check_part(part)
    key = key or decoder_key(model)
    folder = Path(cache_dir)
    path = folder / f"{part}-{key}.onnx"
    if path.is_file():
        return path
    with _export_lock:
        if path.is_file():
            return path
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{part}-{key}-", suffix=".onnx", dir=folder)
        os.close(fd)
        try:
            export_decoder(model, tmp, part)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return path
