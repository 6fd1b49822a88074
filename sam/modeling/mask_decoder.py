"""SAM's mask decoder: output tokens through the two-way transformer, hypernetwork mask heads, IoU head."""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import LayerNorm2d, linear
from .transformer import TwoWayTransformer


@dataclass(frozen=True)
class ImageRows:
    """The decoder's image side before any prompt changes it, the same for every decode on an image, so a
    predictor makes it once per image (`MaskDecoder.image_rows`): rows of the image grid plus the dense
    embedding, and the first layer's projections of them (each attention's image side: H heads of width
    d). Batch 1 with the no-mask embedding, or B with B mask inputs (`MaskDecoder.rows_with_mask`)."""

    keys: torch.Tensor  # 1 x hw x C: the image embedding plus the dense (no-mask) embedding
    key_pe: torch.Tensor  # 1 x hw x C: the dense positional encoding
    k: torch.Tensor  # 1 x H x hw x d: the token-to-image attention's keys (of keys + key_pe)
    v: torch.Tensor  # 1 x H x hw x d: its values (of keys)
    qt: torch.Tensor  # 1 x H x d x hw: the image-to-token attention's queries (of keys + key_pe), transposed


class MaskDecoder(nn.Module):
    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor | None,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        min_iou: float | None = None,
        rows: ImageRows | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks for B prompts on one image (or B images, one prompt each).

        image_embeddings: 1xCxhxw (shared by all prompts) or BxCxhxw; image_pe: 1xCxhxw;
        sparse: BxNxC; dense: BxCxhxw. Returns low-res mask logits Bx{1,3}x4hx4w and IoU Bx{1,3}.
        With min_iou, only prompts with a predicted IoU above it get their masks computed; the logits of
        the others are -inf (segment-everything drops such masks anyway, and upscaling is half the work).
        rows: the image side of this image with the prompts' dense embedding (`image_rows` for the no-mask
        one, `rows_with_mask` for mask inputs); then image_pe and dense are not read, nor image_embeddings
        beyond its shape.
        """
        mask_slice = slice(1, None) if multimask_output else slice(0, 1)
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, mask_slice, min_iou, rows
        )
        return masks, iou_pred[:, mask_slice]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor | None,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        mask_slice: slice = slice(None),
        min_iou: float | None = None,
        rows: ImageRows | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks BxKx4hx4w of the K mask tokens in mask_slice, and IoU predictions Bxnum_mask_tokens of all.

        Only the K masks are computed: their hypernetwork vectors alone multiply the upscaled features.
        """
        B = sparse_prompt_embeddings.shape[0]
        hs, src = self.run_transformer(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            1 + self.num_mask_tokens,
            rows,
        )
        hyper_in, iou_pred = self.read_tokens(hs, mask_slice)
        _, h, w, _ = src.shape
        if min_iou is None:
            return self.upscale_masks(src, hyper_in), iou_pred
        live = (iou_pred[:, mask_slice] > min_iou).any(1)
        masks = hyper_in.new_full((B, hyper_in.shape[1], 4 * h, 4 * w), -torch.inf)
        if live.any():
            masks[live] = self.upscale_masks(src.expand(B, -1, -1, -1)[live], hyper_in[live])
        return masks, iou_pred

    def predict_iou(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor | None,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        rows: ImageRows | None = None,
    ) -> torch.Tensor:
        """IoU predictions Bxnum_mask_tokens alone (the transformer and the IoU head, no masks); the shapes
        of predict_masks."""
        sparse, dense = sparse_prompt_embeddings, dense_prompt_embeddings
        hs, _ = self.run_transformer(image_embeddings, image_pe, sparse, dense, 1, rows)
        return self.iou_prediction_head(hs[:, 0, :])

    def run_transformer(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor | None,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        final_tokens: int | None = None,
        rows: ImageRows | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The output tokens (`tokens`) then the prompts through the transformer: image_embeddings 1xCxhxw
        or BxCxhxw, image_pe 1xCxhxw, sparse BxNxC, dense BxCxhxw -> tokens BxTxC (T as in
        TwoWayTransformer.forward) and the image Bxhxwxc (channels last). rows: as in forward.
        """
        tokens = self.tokens(sparse)
        if rows is not None:
            _, c, h, w = image_embeddings.shape
            queries, keys = self.transformer.layers[0].first_from_rows(tokens, rows)
            hs, src = self.transformer.layers_from(1, queries, keys, tokens, rows.key_pe, final_tokens)
            return hs, src.reshape(-1, h, w, c)
        if dense.stride(0) == 0:  # the same no-mask embedding for every prompt
            dense = dense[:1]
        # The image side keeps batch 1 until the first image-to-token attention makes it per prompt,
        # where Meta repeats the embedding for every prompt up front.
        src = image_embeddings + dense
        _, c, h, w = src.shape
        hs, src = self.transformer(src, image_pe, tokens, final_tokens)
        return hs, src.reshape(-1, h, w, c)

    def image_rows(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, no_mask: torch.Tensor) -> ImageRows:
        """The image side of every decode without a mask input: image_embeddings and image_pe 1xCxhxw, no_mask
        the prompt encoder's 1xC no-mask embedding."""
        keys = (image_embeddings + no_mask[..., None, None]).flatten(2).transpose(1, 2).contiguous()
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        first = self.transformer.layers[0]
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        x_pe = keys + key_pe
        k, v = t2i._separate_heads(t2i.k_proj(x_pe)), t2i._separate_heads(t2i.v_proj(keys))
        qt = i2t._separate_heads(i2t.q_proj(x_pe)).transpose(2, 3).contiguous()
        return ImageRows(keys, key_pe, k, v, qt)

    def rows_with_mask(
        self, rows: ImageRows, mask16: torch.Tensor, conv: nn.Conv2d, no_mask: torch.Tensor
    ) -> ImageRows:
        """The image rows of B prompts with mask inputs, from the no-mask ones: mask16 Bx16xhxw, the mask
        downscaling's output before its last 1x1 convolution `conv`; no_mask 1xC -> rows of batch B.

        Each projection of the dense embedding is that convolution folded into the projection and applied
        to the 16 channels (16 instead of C multiply-adds per image vector and output channel)."""
        first = self.transformer.layers[0]
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        x16 = mask16.flatten(2).transpose(1, 2)  # B x hw x 16
        weight, shift = conv.weight.flatten(1), conv.bias - no_mask[0]  # C x 16; the dense embedding's change

        def change(proj: nn.Linear | None) -> torch.Tensor:
            if proj is None:
                return F.linear(x16, weight, shift)
            return F.linear(x16, proj.weight @ weight, proj.weight @ shift)

        k = rows.k + t2i._separate_heads(change(t2i.k_proj))
        v = rows.v + t2i._separate_heads(change(t2i.v_proj))
        qt = rows.qt + i2t._separate_heads(change(i2t.q_proj)).transpose(2, 3)
        return ImageRows(rows.keys + change(None), rows.key_pe, k, v, qt)

    def tokens(self, sparse_prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """The IoU and mask tokens followed by the prompts' BxNxC embeddings: Bx(1+num_mask_tokens+N)xC."""
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(sparse_prompt_embeddings.shape[0], -1, -1)
        return torch.cat((output_tokens, sparse_prompt_embeddings.to(output_tokens.dtype)), dim=1)

    def read_tokens(self, hs: torch.Tensor, mask_slice: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformer's tokens BxTxC -> (hypernetwork vectors BxKxC/8 of the mask tokens in mask_slice,
        IoU predictions Bxnum_mask_tokens of all)."""
        mask_tokens_out = hs[:, 1 : (1 + self.num_mask_tokens), :]
        mlps = list(enumerate(self.output_hypernetworks_mlps))[mask_slice]
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in mlps], dim=1)
        return hyper_in, self.iou_prediction_head(hs[:, 0, :])

    def upscale_masks(self, src: torch.Tensor, hyper_in: torch.Tensor) -> torch.Tensor:
        """output_upscaling, then each mask token's product with it: src BxHxWxC, hyper_in BxMxC/8 -> BxMx4Hx4W.

        A 2x2 transposed convolution with stride 2 is one matrix product per pixel (several times faster on
        CPUs than the convolution kernel). Each pixel's 2x2 outputs stay beside it through both
        convolutions; only the M masks are moved to their places, not the 4Hx4WxC/8 features.
        """
        B, H, W, _ = src.shape
        conv1, norm, act1, conv2, act2 = self.output_upscaling
        x = subpixel_conv(src, conv1)  # B x H x W x 4 x C/4
        x = act1(F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps))
        fused = exact_gelu(act2)  # then applied by the product as it writes its output
        x = subpixel_conv(x, conv2, gelu=fused)  # B x H x W x 4 x 4 x C/8
        x = x if fused else act2(x)
        masks = x.flatten(1, -2) @ hyper_in.transpose(1, 2)  # B x (H W 4 4) x M
        # output pixel (4h + 2a1 + a2, 4w + 2b1 + b2) of subpixels (a1, b1) then (a2, b2)
        masks = masks.view(B, H, W, 2, 2, 2, 2, -1).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(B, -1, 4 * H, 4 * W)


def subpixel_conv(x: torch.Tensor, conv: nn.ConvTranspose2d, gelu: bool = False) -> torch.Tensor:
    """ConvTranspose2d(kernel_size=2, stride=2) on channels-last input, then exact GELU if gelu:
    ...xCin -> ...x4xCout.

    Output subpixel 2a + b of a pixel is output pixel (2i + a, 2j + b) of the convolution.
    """
    cin, cout = conv.weight.shape[:2]  # the weight is cin x cout x 2 x 2
    weight = conv.weight.permute(2, 3, 1, 0).reshape(4 * cout, cin)
    return linear(x, weight, conv.bias.repeat(4), gelu=gelu).unflatten(-1, (4, cout))


def exact_gelu(act: nn.Module) -> bool:
    """Whether act is nn.GELU without approximation (then a product can apply it as it writes its output)."""
    return type(act) is nn.GELU and act.approximate == "none"


class MLP(nn.Module):
    """num_layers Linear layers with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x
