"""The two-way transformer of SAM's mask decoder: tokens attend to the image and back."""

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import MLPBlock

if TYPE_CHECKING:
    from .mask_decoder import ImageRows


class TwoWayTransformer(nn.Module):
    def __init__(
        self,
        *,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
        final_tokens: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding: BxCxhxw or 1xCxhxw (shared by all prompts); image_pe: 1xCxhxw; point_embedding: BxNxC.

        Returns (BxTxC tokens, Bx(hw)xC image): T = N, or the first final_tokens only, the ones read after
        the final attention (each token attends to the image on its own there, so the rest can be skipped).
        """
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()  # every image-side op runs on rows
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        return self.layers_from(0, point_embedding, keys, point_embedding, key_pe, final_tokens)

    def layers_from(
        self,
        first: int,
        queries: torch.Tensor,
        keys: torch.Tensor,
        point_embedding: torch.Tensor,
        key_pe: torch.Tensor,
        final_tokens: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The layers from index `first` on, then the final token-to-image attention: queries and point_embedding
        BxNxC, keys Bx(hw)xC or 1x(hw)xC, key_pe 1x(hw)xC -> (BxTxC tokens, Bx(hw)xC image), T as in forward."""
        for layer in self.layers[first:]:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        queries = queries[:, :final_tokens]
        q = queries + point_embedding[:, :final_tokens]
        queries = queries + self.final_attn_token_to_image.tokens_to_image(q, keys + key_pe, keys)
        return self.norm_final_attn(queries), keys


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token-to-image attention, MLP, image-to-token attention."""

    def __init__(
        self,
        *,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int,
        skip_first_layer_pe: bool,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, act=nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image.tokens_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        # After the first layer the keys are this decoder's own tensor, not needed past here: the residual
        # sum may overwrite them instead of writing a copy (not for autograd, nor while tracing for export).
        own = not (self.skip_first_layer_pe or torch.is_grad_enabled() or torch.jit.is_tracing())
        keys = self.norm4(self.cross_attn_image_to_token.image_to_tokens(k, q, queries, residual=keys, inplace=own))
        return queries, keys

    def first_from_rows(self, tokens: torch.Tensor, rows: "ImageRows") -> tuple[torch.Tensor, torch.Tensor]:
        """This block as the decoder's first layer (skip_first_layer_pe) with the image side's projections made
        once per image (`ImageRows`, batch 1 or B): tokens BxNxC -> (queries BxNxC, keys Bx(hw)xC), as forward
        gives them for the image rows.keys, key_pe rows.key_pe and query_pe tokens."""
        t2i, i2t = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        queries = self.norm1(self.self_attn(tokens, tokens, tokens))
        q = t2i._separate_heads(t2i.q_proj(queries + tokens))  # B x H x N x d
        (b, h, n, d), k, v = q.shape, rows.k, rows.v
        if b > 1 and k.shape[0] == 1:  # the image side is shared: all the queries in one batch
            out = F.scaled_dot_product_attention(q.transpose(0, 1).reshape(1, h, b * n, d), k, v)
            out = out.view(h, b, n, d).transpose(0, 1)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        queries = self.norm2(queries + t2i.out_proj(out.transpose(1, 2).reshape(b, n, h * d)))
        queries = self.norm3(queries + self.mlp(queries))

        kh = i2t._separate_heads(i2t.k_proj(queries + tokens)) * (i2t.internal_dim // h) ** -0.5  # B x H x N x d
        attn = torch.softmax(kh @ rows.qt, dim=2).flatten(1, 2)  # B x HN x hw: each head over its tokens
        out = torch.baddbmm(rows.keys, attn.transpose(1, 2), i2t.values_out(queries))  # B x hw x C
        return queries, self.norm4(out)


class Attention(nn.Module):
    """Attention that may project to a smaller internal width (downsample_rate).

    Between a few tokens and a per-prompt image, `tokens_to_image` and `image_to_tokens` give the same
    result as `forward` with the products reassociated: the image side's projections (key and value, or
    query and output) are folded into the few token vectors instead of applied to all h*w image vectors
    of every prompt. With N tokens and H heads that costs H*N instead of internal_dim multiply-adds per
    image vector and channel; each picks the cheaper order for its shapes.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.internal_dim = embedding_dim // downsample_rate
        assert self.internal_dim % num_heads == 0, "num_heads must divide embedding_dim / downsample_rate"
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _separate_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def _per_head(self, weight: torch.Tensor) -> torch.Tensor:
        """A projection's internal_dim x C weight as heads x head_dim x C."""
        return weight.view(self.num_heads, -1, weight.shape[-1])

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """BxNqxC, BxNkxC, BxNkxC -> BxNqxC."""
        q = self._separate_heads(self.q_proj(q))
        k = self._separate_heads(self.k_proj(k))
        v = self._separate_heads(self.v_proj(v))
        b, h, n, c = q.shape
        if k.shape[0] == v.shape[0] == 1 and b > 1:
            # keys and values shared by every prompt: all the queries in one batch, twice as fast as b batches
            q = q.transpose(0, 1).reshape(1, h, b * n, c)
            out = F.scaled_dot_product_attention(q, k, v).view(h, b, n, c).transpose(0, 1)
        else:
            b = max(b, k.shape[0])  # the queries may be shared (batch 1)
            k, v = k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)
            out = F.scaled_dot_product_attention(q.expand(b, -1, -1, -1), k, v)
            b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))

    def tokens_to_image(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Tokens attend to the image: q BxNxC; k, v BxLxC, or 1xLxC when shared by all prompts -> BxNxC."""
        (b, n), h = q.shape[:2], self.num_heads
        if b * h * n >= k.shape[0] * self.internal_dim:  # projecting the image side is cheaper
            return self(q, k, v)
        qh = self._separate_heads(self.q_proj(q)) * (self.internal_dim // h) ** -0.5
        # q . (Wk x + bk) = (Wk^T q) . x + const: the key bias shifts a softmax row and drops out
        qk = torch.einsum("bhnd,hdc->bhnc", qh, self._per_head(self.k_proj.weight)).flatten(1, 2)
        # B x HN x L, computed as L x HN: the long image side as the row operand is ~2x faster on CPUs
        attn = torch.softmax((k @ qk.transpose(1, 2)).transpose(1, 2).contiguous(), dim=-1)
        # softmax rows sum to one, so attn @ (Wv x + bv) = Wv (attn @ x) + bv
        out = torch.einsum("bhnc,hdc->bnhd", (attn @ v).view(b, h, n, -1), self._per_head(self.v_proj.weight))
        return self.out_proj(out.flatten(2) + self.v_proj.bias)

    def values_out(self, v: torch.Tensor) -> torch.Tensor:
        """The tokens' values with the output projection folded in, for the image attending to them: v BxNxC
        -> BxHNxC, head by head. Each head's weights sum to one over its tokens, so bias / H on every value
        row adds the output bias once."""
        vh = self._separate_heads(self.v_proj(v))  # B x H x N x d
        vo = torch.einsum("bhnd,chd->bhnc", vh, self.out_proj.weight.view(-1, self.num_heads, vh.shape[-1]))
        return (vo + self.out_proj.bias / self.num_heads).flatten(1, 2)

    def image_to_tokens(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        residual: torch.Tensor | None = None,
        inplace: bool = False,
    ) -> torch.Tensor:
        """The image attends to tokens: q BxLxC or 1xLxC (shared by all prompts); k, v BxNxC -> BxLxC.

        With a residual (BxLxC or 1xLxC) returns residual + attention, added in the last product; inplace:
        into the residual itself when it is BxLxC.
        """
        (b, n), h = k.shape[:2], self.num_heads
        if 2 * b * h * n >= (q.shape[0] + b) * self.internal_dim:  # projecting the image side is cheaper
            out = self(q, k, v)
            return out if residual is None else residual + out
        kh = self._separate_heads(self.k_proj(k)) * (self.internal_dim // h) ** -0.5  # B x H x N x d
        kq = torch.einsum("bhnd,hdc->bhnc", kh, self._per_head(self.q_proj.weight)).flatten(1, 2)  # B x HN x C
        bias = (kh @ self.q_proj.bias.view(h, -1, 1)).flatten(1, 2)  # B x HN x 1, the query bias . k
        if q.shape[0] == 1 and b > 1:  # one product for all prompts
            scores = torch.addmm(bias.flatten(0, 1), kq.flatten(0, 1), q[0].T).view(b, h * n, -1)
        else:  # B x HN x L, computed as L x HN (as in tokens_to_image)
            scores = torch.baddbmm(bias.transpose(1, 2), q, kq.transpose(1, 2)).transpose(1, 2).contiguous()
        attn = torch.softmax(scores.view(b, h, n, -1), dim=2).view(b, h * n, -1)  # over each head's tokens
        vo = self.values_out(v)
        if residual is None:
            return attn.transpose(1, 2) @ vo
        if inplace and residual.shape[0] == b:
            return residual.baddbmm_(attn.transpose(1, 2), vo)
        return torch.baddbmm(residual, attn.transpose(1, 2), vo)
