"""MobileSAM's image encoder: a TinyViT (conv stage, then windowed-attention stages) with SAM's neck.

Parameter names follow mobile_sam's `TinyViT` exactly, so MobileSAM checkpoints load strictly; the
classifier (`norm_head`, `head`) is kept for that reason only and never runs. Inference only:
BatchNorms use their running statistics, folded into the convolution weights on the fly, in fp32.

Precision: the activations between layers (the residual stream) keep the input's dtype; each matrix
product or convolution runs in its weight's dtype. `set_precision(torch.bfloat16)` casts only some
Linear and Conv2d weights (see there), so with fp32 input the norms, BatchNorms, residual sums and
attention-bias table stay fp32, as in the ViT encoder.

Layout: after the patch embedding every activation is BxHxWxC (channels last), so 1x1 convolutions
are plain matrix products and the 3x3 depthwise convolutions get channels-last views without copies.
The wide 1x1 -> depthwise -> 1x1 stacks run in bands of rows so that their 4x wider hidden
activations stay small (cache-resident, reused by the allocator); window attention is the ViT
encoder's `attention` (a few windows at a time, fp32 scores) with TinyViT's bias table.
"""

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import native
from .common import LayerNorm2d, linear
from .image_encoder import attention, window_partition, window_unpartition

gelu_ = torch.ops.aten.gelu_  # in place: the activations here are large
BAND_BYTES = 8 << 20  # size of the wide hidden activations computed at a time (conv stacks, MLPs)


class Conv2d_BN(nn.Module):  # noqa: N801 (mobile_sam's name)
    """A bias-free Conv2d followed by BatchNorm2d (keys `c.*`, `bn.*`), evaluated as one convolution."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_chans, out_chans, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the convolution equal to conv then BatchNorm, computed in fp32, in the conv's dtype."""
        bn, w = self.bn, self.c.weight
        scale = bn.weight.float() * torch.rsqrt(bn.running_var.float() + bn.eps)
        bias = bn.bias.float() - bn.running_mean.float() * scale
        return (w.float() * scale[:, None, None, None]).to(w.dtype), bias.to(w.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BxCxHxW (any memory format) -> BxC'xH'xW', in x's dtype; the convolution runs in the weight's."""
        weight, bias = self.folded()
        return F.conv2d(x.to(weight.dtype), weight, bias, self.c.stride, self.c.padding, groups=self.c.groups).to(
            x.dtype
        )


def conv_stack(x: torch.Tensor, conv1: Conv2d_BN, conv2: Conv2d_BN, conv3: Conv2d_BN) -> torch.Tensor:
    """conv3(gelu(conv2(gelu(conv1(x))))) for 1x1, 3x3 (stride 1 or 2), 1x1: BxHxWxC -> BxH'xW'xC'.

    Computed in bands of output rows; each band reads its input rows plus one row of context. The
    convolutions run in their weights' dtype, the output has x's.
    """
    (w1, b1), (w2, b2), (w3, b3) = conv1.folded(), conv2.folded(), conv3.folded()
    w1, w3 = w1.flatten(1), w3.flatten(1)  # 1x1 convolutions on channels-last input are matrix products
    B, H, W, _ = x.shape
    s = conv2.c.stride[0]
    H2, W2 = (H - 1) // s + 1, (W - 1) // s + 1
    out = x.new_empty(B, H2, W2, w3.shape[0])
    rows = max(1, BAND_BYTES // (B * W * w1.shape[0] * x.element_size() * s))
    for o0 in range(0, H2, rows):
        o1 = min(o0 + rows, H2)
        # input rows [a, b) cover the 3x3 neighbourhoods of output rows [o0, o1). a is a multiple of s, so the
        # band's output row j is output row a / s + j; rows at an inner band edge saw zero padding: not kept
        a, b = max(o0 * s - s, 0), min((o1 - 1) * s + 2, H)
        y = linear(x[:, a:b].to(w1.dtype), w1, b1, gelu=True).permute(0, 3, 1, 2)
        y = gelu_(F.conv2d(y.to(w2.dtype), w2, b2, s, 1, groups=w2.shape[0])).permute(0, 2, 3, 1)
        out[:, o0:o1] = linear(y[:, o0 - a // s : o1 - a // s].to(w3.dtype), w3, b3)
    return out


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convolutions: Bx3xSxS -> Bx(S/4)x(S/4)xC."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2d_BN(in_chans, embed_dim // 2, 3, 2), nn.GELU(), Conv2d_BN(embed_dim // 2, embed_dim, 3, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv1, _, conv2 = self.seq
        x = gelu_(conv1(x.contiguous(memory_format=torch.channels_last)))
        return conv2(x).permute(0, 2, 3, 1)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, GELU after the residual sum. BxHxWxC."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2d_BN(dim, hidden)
        self.conv2 = Conv2d_BN(hidden, hidden, 3, groups=hidden)
        self.conv3 = Conv2d_BN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu_(conv_stack(x, self.conv1, self.conv2, self.conv3).add_(x))


class PatchMerging(nn.Module):
    """1x1 conv, 3x3 depthwise conv with stride, 1x1 conv: BxHxWxC -> BxH'xW'xC'."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = Conv2d_BN(dim, out_dim)
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_stack(x, self.conv1, self.conv2, self.conv3)


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks, then a PatchMerging. BxHxWxC -> BxH'xW'xC'."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x)


class Attention(nn.Module):
    """Multi-head self-attention inside one window, with a learned bias per head and (|dy|, |dx|) offset."""

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        points = list(itertools.product(range(window_size), range(window_size)))
        offsets: dict[tuple[int, int], int] = {}
        idxs = [offsets.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(offsets)) for a in points for b in points]
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        n = len(points)
        self.register_buffer("attention_bias_idxs", torch.tensor(idxs).view(n, n), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BxNxC tokens of B windows of N = window_size**2 -> BxNxC."""
        B, N, C = x.shape
        # per head the qkv features are laid out [q, k, v] (mobile_sam's order)
        qkv = linear(self.norm(x).to(self.qkv.weight.dtype), self.qkv.weight, self.qkv.bias)
        qkv = qkv.view(B, N, self.num_heads, 3, C // self.num_heads).permute(3, 0, 2, 1, 4)
        bias = self.attention_biases[:, self.attention_bias_idxs].float()  # heads x N x N

        def weights(scores: torch.Tensor, groups: slice, rows: slice) -> torch.Tensor:
            if native.table_softmax(scores, b := bias[:, rows]) is not None:  # one pass in C where the kernel is built
                return scores
            return scores.float().add_(b).softmax(-1).to(scores.dtype)

        x = attention(*qkv, weights, scale=qkv.shape[-1] ** -0.5)
        return linear(x.transpose(1, 2).reshape(B, N, C).to(self.proj.weight.dtype), self.proj.weight, self.proj.bias)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BxHxWxC -> BxHxWxC in fc2's dtype."""
        h = linear(self.norm(x).to(self.fc1.weight.dtype), self.fc1.weight, self.fc1.bias, gelu=True)
        return linear(h.to(self.fc2.weight.dtype), self.fc2.weight, self.fc2.bias)


class TinyViTBlock(nn.Module):
    """Window attention, a 3x3 depthwise conv, an MLP. BxHxWxC -> BxHxWxC."""

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = Attention(dim, num_heads, window_size)
        self.local_conv = Conv2d_BN(dim, dim, 3, groups=dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        ws = self.window_size
        # zero padding happens before attn.norm, as in mobile_sam: padded tokens are keys and values too
        windows, pad_hw = window_partition(x, ws)
        attn = self.attn(windows.reshape(-1, ws * ws, C)).view(-1, ws, ws, C)
        y = x + window_unpartition(attn, ws, pad_hw, (H, W))
        x = self.local_conv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        rows = max(1, BAND_BYTES // (B * W * self.mlp.fc1.out_features * x.element_size()))
        for band in x.split(rows, dim=1):  # bands of rows keep the MLP's hidden activations small
            band += self.mlp(band)
        return x


class BasicLayer(nn.Module):
    """A transformer stage, then an optional PatchMerging. BxHxWxC -> BxH'xW'xC'."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        downsample: PatchMerging | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, num_heads, window_size, mlp_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """MobileSAM's image encoder (TinyViT-5M and SAM's neck by default)."""

    def __init__(
        self,
        *,
        img_size: int = 1024,
        in_chans: int = 3,
        embed_dims: tuple[int, ...] = (64, 128, 160, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (2, 4, 5, 10),
        window_sizes: tuple[int, ...] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        out_chans: int = 256,
        num_classes: int = 1000,
    ) -> None:
        """Bx3xSxS normalised pixels -> Bx(out_chans)x(S/16)x(S/16) (with four stages)."""
        super().__init__()
        n = len(depths)
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        # the last merge keeps the resolution (mobile_sam's stride-1 merge), so the total stride is 16
        merges = [PatchMerging(embed_dims[i], embed_dims[i + 1], 1 if i == n - 2 else 2) for i in range(n - 1)]
        self.layers = nn.ModuleList([ConvLayer(embed_dims[0], depths[0], mbconv_expand_ratio, merges[0])])
        for i in range(1, n):
            merge = merges[i] if i < n - 1 else None
            self.layers.append(BasicLayer(embed_dims[i], depths[i], num_heads[i], window_sizes[i], mlp_ratio, merge))
        # ImageNet classifier of the distilled TinyViT: in the checkpoints, unused here
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def set_precision(self, dtype: torch.dtype) -> None:
        """Run about two thirds of the multiply-adds in dtype; keep the rest fp32 where that buys most accuracy.

        In dtype: the patch embedding, the MBConvs' 1x1 convolutions, attention qkv and MLPs outside
        the longest stage, the neck's 3x3 convolution. bf16 rounds each product's input, weight and
        output (about 3e-3 relative per product); over TinyViT's ~70 products that moves the embedding
        by 1.5e-2 to 2e-2. Kept fp32: the depthwise and patch-merging convolutions, the attention
        output projections, the neck's 1x1 convolution and the longest stage, whose blocks' errors add
        up; also norms, BatchNorms (folded in fp32), attention biases and, with fp32 input, the
        residual stream. set_precision(torch.float32) goes back; state_dict keys never change.
        """
        keep: set[nn.Module] = {self.neck[0]}
        keep |= set(max(self.layers[1:], key=lambda layer: len(layer.blocks)).blocks.modules())
        for layer in self.layers:
            keep |= set(layer.downsample.modules()) if layer.downsample is not None else set()
            keep |= {blk.attn.proj for blk in layer.blocks if isinstance(blk, TinyViTBlock)}
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                depthwise = isinstance(m, nn.Conv2d) and m.groups > 1
                m.to(torch.float32 if m in keep or depthwise else dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Bx3xSxS -> Bx(out_chans)x(S/16)x(S/16), in x's dtype."""
        dtype = x.dtype
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        # the neck's modules run on channels-last x: the 1x1 conv as a matrix product, LayerNorm2d as layer_norm
        conv1, norm1, conv2, norm2 = self.neck
        x = linear(x.to(conv1.weight.dtype), conv1.weight.flatten(1)).to(dtype)
        x = F.layer_norm(x, norm1.weight.shape, norm1.weight, norm1.bias, norm1.eps)
        x = conv2(x.permute(0, 3, 1, 2).to(conv2.weight.dtype)).permute(0, 2, 3, 1).to(dtype)
        x = F.layer_norm(x, norm2.weight.shape, norm2.weight, norm2.bias, norm2.eps)
        return x.permute(0, 3, 1, 2).contiguous()
