"""SAM's ViT image encoder (ViT-B/L/H and SlimSAM's narrower variants).

Module and parameter names follow Meta's `segment_anything.modeling.image_encoder`, so Meta's
checkpoints load strictly. Attention is computed a block of score rows at a time (see `attention`), so
the full (HW)x(HW) score and bias matrices of a global block are never made.
"""

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import native
from .common import LayerNorm2d, MLPBlock, linear


class ImageEncoderViT(nn.Module):
    def __init__(
        self,
        *,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_dim: int | None = None,
        out_chans: int = 256,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim or 4 * embed_dim,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def set_precision(self, dtype: torch.dtype) -> None:
        """Matrix products (Linear, Conv2d) in dtype; norms, positions and the residual stream stay fp32."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Bx3xSxS normalised pixels -> Bxout_chansx(S/16)x(S/16) embedding (fp32)."""
        dtype = self.patch_embed.proj.weight.dtype
        x = self.patch_embed(x.to(dtype)).float() + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2).to(dtype)).float()


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BxCxHxW -> Bx(H/p)x(W/p)xembed_dim."""
        x = x.contiguous(memory_format=torch.channels_last)  # so the output below is BxHxWxC in memory too
        return self.proj(x).permute(0, 2, 3, 1)


class Block(nn.Module):
    """Transformer block with windowed (window_size > 0) or global attention."""

    def __init__(
        self, *, dim: int, num_heads: int, mlp_dim: int, window_size: int, input_size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        attn_size = input_size if window_size == 0 else (window_size, window_size)
        self.attn = Attention(dim, num_heads, input_size=attn_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, mlp_dim)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BxHxWxC -> BxHxWxC."""
        shortcut = x
        dtype = self.mlp.lin1.weight.dtype
        x = self.norm1(x).to(dtype)
        if self.window_size > 0:
            H, W = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, pad_hw, (H, W))
        else:
            x = self.attn(x)
        x = shortcut + x  # fp32, whatever dtype the matrix products ran in
        return x + self.mlp(self.norm2(x).to(dtype))


class Attention(nn.Module):
    """Multi-head attention with decomposed relative positions (MViTv2)."""

    def __init__(self, dim: int, num_heads: int, *, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BxHxWxC -> BxHxWxC."""
        B, H, W, _ = x.shape
        N = H * W
        qkv = linear(x, self.qkv.weight, self.qkv.bias).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each B x heads x HW x head_dim
        rel_h, rel_w = rel_pos_terms(q, self.rel_pos_h, self.rel_pos_w, (H, W))
        rel_h, rel_w = (t.float().reshape(B * self.num_heads, N, -1) for t in (rel_h, rel_w))

        def weights(scores: torch.Tensor, groups: slice, rows: slice) -> torch.Tensor:
            rh, rw = rel_h[groups, rows], rel_w[groups, rows]
            if native.rel_pos_softmax(scores, rh, rw) is not None:  # one pass in C where the kernel is built
                return scores
            s = scores.float()
            s.view(*s.shape[:-1], H, W).add_(rh[..., :, None]).add_(rw[..., None, :])
            return s.softmax(-1).to(scores.dtype)

        q, k, v = (t.reshape(B * self.num_heads, N, -1) for t in (q, k, v))
        x = attention(q, k, v, weights, scale=self.scale).view(B, self.num_heads, N, -1)
        return linear(x.transpose(1, 2).reshape(B, H, W, -1), self.proj.weight, self.proj.bias)


SCORE_BLOCK = 1 << 21  # score elements per block: 8 MB in fp32, within the processor's caches


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    weights: Callable[[torch.Tensor, slice, slice], torch.Tensor],
    *,
    scale: float,
) -> torch.Tensor:
    """softmax(scale * q @ k^T + bias) @ v, the softmax and its bias made by weights(scores, groups, rows).

    q, k, v: G x ... x N x d (one dtype) -> G x ... x N x d; weights gets the scores of the groups and
    query rows given, g x ... x n x N in q's dtype (it may overwrite them), and returns softmax(scores +
    bias) in that dtype, computed in fp32 (bf16 scores plus a bias would round by up to 2^-9 of their
    size). Work goes a block of rows or of whole groups at a time, so the scores stay in cache and no
    (N x N) matrix of a large N is ever made.
    """
    G, N = q.shape[0], q.shape[-2]
    per_row = q[0, ..., 0, 0].numel() * N
    rows = min(N, max(1, SCORE_BLOCK // per_row))
    groups = max(1, SCORE_BLOCK // (rows * per_row))
    q, vt = q * scale, v.transpose(-1, -2)
    if groups == 1 and v.dim() == 3:  # one matrix pair at a time: oneDNN's products want contiguous operands
        k, vt = k.contiguous(), vt.contiguous()
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=v.dtype, device=v.device)
    for g in range(0, G, groups):
        gs = slice(g, g + groups)
        for i in range(0, N, rows):
            r = slice(i, i + rows)
            out[gs, ..., r, :] = products_nt(weights(products_nt(q[gs, ..., r, :], k[gs]), gs, r), vt[gs])
    return out


def products_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b^T: g x ... x n x d, g x ... x m x d -> g x ... x n x m; one matrix pair goes to `linear` (oneDNN)."""
    if a.dim() == 3 and a.shape[0] == 1:
        return linear(a[0], b[0])[None]
    return torch.matmul(a, b.transpose(-1, -2))


def rel_pos_terms(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Meta's decomposed relative-position terms.

    q: B x heads x HW x d (unscaled) -> rel_h: B x heads x HW x H, rel_w: B x heads x HW x W; the bias Meta
    adds to the score of query n and key (h, w) is rel_h[..., n, h] + rel_w[..., n, w].
    """
    H, W = size
    B, nh, N, d = q.shape
    Rh = get_rel_pos(H, H, rel_pos_h).to(q.dtype)
    Rw = get_rel_pos(W, W, rel_pos_w).to(q.dtype)
    r_q = q.reshape(B, nh, H, W, d)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, Rh).reshape(B, nh, N, H)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, Rw).reshape(B, nh, N, W)
    return rel_h, rel_w


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """BxHxWxC -> (B*num_windows)xWSxWSxC, padding H and W up to multiples of window_size."""
    B, H, W, C = x.shape
    pad_h = (window_size - H % window_size) % window_size
    pad_w = (window_size - W % window_size) % window_size
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, C)
    return windows, (Hp, Wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of window_partition: (B*num_windows)xWSxWSxC -> BxHxWxC."""
    Hp, Wp = pad_hw
    H, W = hw
    B = windows.shape[0] // (Hp * Wp // window_size // window_size)
    x = windows.view(B, Hp // window_size, Wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    return x[:, :H, :W, :]


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative positional embeddings for every (query, key) pair along one axis: q_size x k_size x C."""
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_rel_dist, mode="linear"
        )
        rel_pos = resized.reshape(-1, max_rel_dist).permute(1, 0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative_coords.long()]
