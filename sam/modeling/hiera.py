"""SAM 2's image encoder: a Hiera trunk (multi-scale blocks, windowed "mask unit" attention, query pooling
between stages) and an FPN neck that brings its stages to one width.

Module and parameter names follow Meta's `sam2.modeling.backbones` (`image_encoder.trunk.*`,
`image_encoder.neck.*`), so Meta's checkpoints load strictly. The neck's sine position encodings feed
only the video model's memory attention and are left out.
"""

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .image_encoder import window_partition, window_unpartition


class Hiera(nn.Module):
    """Hiera trunk: returns every stage's features, highest resolution first."""

    def __init__(
        self,
        *,
        embed_dim: int = 96,
        num_heads: int = 1,
        stages: tuple[int, ...] = (2, 3, 16, 3),
        global_att_blocks: tuple[int, ...] = (12, 16, 20),
        window_spec: tuple[int, ...] = (8, 4, 14, 7),
        window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14),
        q_pool: int = 3,
        q_stride: tuple[int, int] = (2, 2),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
    ) -> None:
        super().__init__()
        assert len(stages) == len(window_spec)
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        q_pool_blocks = [end + 1 for end in self.stage_ends[:-1]][:q_pool]
        self.patch_embed = PatchEmbed(embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, window_spec[0], window_spec[0]))
        self.blocks = nn.ModuleList()
        stage, dim = 0, embed_dim
        for i in range(sum(stages)):
            # A stage's first block keeps the previous stage's window (it pools its queries into the new one).
            window_size = 0 if i in global_att_blocks else window_spec[stage]
            dim_out = dim
            if i - 1 in self.stage_ends:
                dim_out, num_heads, stage = int(dim * dim_mul), int(num_heads * head_mul), stage + 1
            self.blocks.append(
                MultiScaleBlock(
                    dim=dim,
                    dim_out=dim_out,
                    num_heads=num_heads,
                    q_stride=q_stride if i in q_pool_blocks else None,
                    window_size=window_size,
                )
            )
            dim = dim_out
        self.channel_list = [self.blocks[i].dim_out for i in self.stage_ends[::-1]]

    def _get_pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        """The background embedding resized to hw plus the window embedding tiled over it: 1xHxWxC."""
        pos_embed = F.interpolate(self.pos_embed, size=hw, mode="bicubic")
        window = self.pos_embed_window
        pos_embed = pos_embed + window.tile([a // b for a, b in zip(pos_embed.shape, window.shape)])
        return pos_embed.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Bx3xSxS normalised pixels -> per stage BxC_ixH_ixW_i, strides 4, 8, 16, 32 (S a multiple of 32)."""
        x = self.patch_embed(x)
        x = x + self._get_pos_embed(x.shape[1:3])
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs


class PatchEmbed(nn.Module):
    def __init__(self, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BxCxHxW -> Bx(H/4)x(W/4)xembed_dim, in the weight's dtype."""
        x = x.to(self.proj.weight.dtype).contiguous(memory_format=torch.channels_last)
        return self.proj(x).permute(0, 2, 3, 1)  # contiguous: the blocks' tensors are channels-last in memory too


def pool(x: torch.Tensor, pool: nn.Module) -> torch.Tensor:
    """Max-pool a channels-last BxHxWxC map: -> BxH'xW'xC."""
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class MultiScaleBlock(nn.Module):
    """Attention (windowed when window_size > 0) and MLP; with q_stride the block also pools its queries and
    shortcut, halving the map, and with dim != dim_out it widens the channels."""

    def __init__(
        self, *, dim: int, dim_out: int, num_heads: int, q_stride: tuple[int, int] | None, window_size: int
    ) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.window_size = window_size
        self.q_stride = q_stride
        self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride) if q_stride else None
        self.attn = MultiScaleAttention(dim, dim_out, num_heads=num_heads, q_pool=self.pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = Mlp(dim_out, 4 * dim_out)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BxHxWxdim -> BxH'xW'xdim_out (H' = H / q_stride when pooling).

        The matrix products run in their weights' dtype; norms and the residual stream stay fp32.
        """
        shortcut = x
        dtype = self.attn.qkv.weight.dtype
        x = self.norm1(x).to(dtype)
        if self.dim != self.dim_out:
            shortcut = self.proj(x)
            if self.pool is not None:
                shortcut = pool(shortcut, self.pool)
            shortcut = shortcut.float()
        window_size = self.window_size
        if window_size > 0:
            x, pad_hw = window_partition(x, window_size)
        x = self.attn(x)
        if window_size > 0:
            H, W = shortcut.shape[1:3]
            if self.q_stride:  # the windows shrank with the queries
                window_size //= self.q_stride[0]
                pad_hw = (-(-H // window_size) * window_size, -(-W // window_size) * window_size)
            x = window_unpartition(x, window_size, pad_hw, (H, W))
        x = shortcut + x  # fp32, whatever dtype the products ran in
        return x + self.mlp(self.norm2(x).to(dtype))


class MultiScaleAttention(nn.Module):
    """Multi-head attention over a BxHxWxC map (or windows), its queries optionally max-pooled."""

    def __init__(self, dim: int, dim_out: int, *, num_heads: int, q_pool: nn.Module | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BxHxWxdim -> BxH'xW'xdim_out."""
        B, H, W, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).unbind(2)  # each B x HW x heads x d
        if self.q_pool is not None:
            q = pool(q.reshape(B, H, W, -1), self.q_pool)
            H, W = q.shape[1:3]
            q = q.reshape(B, H * W, self.num_heads, -1)
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(x.transpose(1, 2).reshape(B, H, W, -1))


class Mlp(nn.Module):
    """Linear, GELU, Linear (Meta's `MLP` with two layers: keys `layers.0`, `layers.1`)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, hidden_dim), nn.Linear(hidden_dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[1](F.gelu(self.layers[0](x)))


class FpnNeck(nn.Module):
    """Brings each stage to d_model channels (1x1 convolutions); on fpn_top_down_levels adds the next
    coarser level's output, upsampled 2x (nearest)."""

    def __init__(
        self, *, d_model: int, backbone_channel_list: list[int], fpn_top_down_levels: tuple[int, ...] = (2, 3)
    ) -> None:
        super().__init__()
        self.backbone_channel_list = list(backbone_channel_list)  # coarsest stage first
        self.convs = nn.ModuleList(
            nn.Sequential(OrderedDict(conv=nn.Conv2d(dim, d_model, kernel_size=1))) for dim in backbone_channel_list
        )
        self.fpn_top_down_levels = tuple(fpn_top_down_levels)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Stage features, finest first (BxC_ixH_ixW_i) -> Bxd_modelxH_ixW_i each, finest first."""
        n = len(self.convs) - 1
        out: list[torch.Tensor] = [torch.empty(0)] * len(xs)
        prev = None
        for i in range(n, -1, -1):
            conv = self.convs[n - i]
            lateral = conv(xs[i].to(conv.conv.weight.dtype)).float()
            if i in self.fpn_top_down_levels and prev is not None:
                prev = lateral + F.interpolate(prev, scale_factor=2.0, mode="nearest")
            else:
                prev = lateral
            out[i] = prev
        return out


class HieraImageEncoder(nn.Module):
    """Trunk and neck, passed in; the `scalp` coarsest levels are dropped from the output."""

    def __init__(self, *, trunk: Hiera, neck: FpnNeck, scalp: int = 1) -> None:
        super().__init__()
        assert trunk.channel_list == neck.backbone_channel_list, "trunk and neck widths differ"
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp

    def set_precision(self, dtype: torch.dtype) -> None:
        """Matrix products (Linear, Conv2d) in dtype; norms, positions and the residual stream stay fp32."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.to(dtype)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Bx3xSxS fp32 -> feature levels Bxd_modelx(S/4)x(S/4), x(S/8), x(S/16) (with scalp 1), finest
        first, fp32."""
        features = self.neck(self.trunk(x))
        return features[: len(features) - self.scalp]
