"""SAM 2's prompt encoder and mask decoder: SAM's, plus box corners as labelled points, an object-score
token and head, high-resolution features added while upscaling, and a sigmoid on the IoU head.

Names follow Meta's `sam2.modeling.sam` (`sam_prompt_encoder.*`, `sam_mask_decoder.*`). The released
SAM 2 and 2.1 models all use high-resolution features, an MLP object-score head and sigmoid IoU scores,
so those are built in rather than switched by flags.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .mask_decoder import MLP, ImageRows, MaskDecoder, subpixel_conv
from .prompt_encoder import PromptEncoder
from .transformer import TwoWayTransformer


class Sam2PromptEncoder(PromptEncoder):
    """SAM's prompt encoder where points may also be box corners: labels 2 (top-left) and 3 (bottom-right).

    SAM 2 passes a box as two such points ahead of the clicks; the padding point is then added too.
    """

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """BxNx2 points, BxN labels in {-1, 0, 1, 2, 3} -> BxN'xembed_dim."""
        embedding = super()._embed_points(points, labels, pad)  # corners get their positions only
        if pad:
            labels = F.pad(labels, (0, 1), value=-1)
        for i in (2, 3):
            embedding = embedding + (labels == i)[..., None] * self.point_embeddings[i].weight
        return embedding


def sam2_transformer(*, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int) -> TwoWayTransformer:
    """SAM's two-way transformer with SAM 2's MLP module (keys `mlp.layers.0/1` where SAM has `mlp.lin1/2`);
    both are Linear, ReLU, Linear."""
    transformer = TwoWayTransformer(depth=depth, embedding_dim=embedding_dim, num_heads=num_heads, mlp_dim=mlp_dim)
    for layer in transformer.layers:
        layer.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, 2)
    return transformer


class Sam2MaskDecoder(MaskDecoder):
    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        dynamic_multimask_via_stability: bool = True,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
    ) -> None:
        """With dynamic_multimask_via_stability, a single-mask request falls back to the best of the
        multimask outputs when the single mask's stability score is below the threshold (Meta's
        `build_sam2` turns this on for its predictors)."""
        super().__init__(
            transformer_dim=transformer_dim,
            transformer=transformer,
            num_multimask_outputs=num_multimask_outputs,
            iou_head_depth=iou_head_depth,
            iou_head_hidden_dim=iou_head_hidden_dim,
        )
        self.obj_score_token = nn.Embedding(1, transformer_dim)
        self.conv_s0 = nn.Conv2d(transformer_dim, transformer_dim // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(transformer_dim, transformer_dim // 4, kernel_size=1)
        self.pred_obj_score_head = MLP(transformer_dim, transformer_dim, 1, 3)
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.dynamic_multimask_stability_delta = dynamic_multimask_stability_delta
        self.dynamic_multimask_stability_thresh = dynamic_multimask_stability_thresh

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor | None,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        high_res_features: tuple[torch.Tensor, torch.Tensor],
        min_iou: float | None = None,
        rows: ImageRows | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predict masks for B prompts on one image (or B images, one prompt each).

        image_embeddings: 1xCxhxw or BxCxhxw; image_pe: 1xCxhxw; sparse: BxNxC; dense: BxCxhxw;
        high_res_features: conv_s0 and conv_s1 outputs, 1 or B x C/8 x 4h x 4w and x C/4 x 2h x 2w.
        Returns low-res mask logits Bx{1,3}x4hx4w, IoU scores Bx{1,3} and object-score logits Bx1.
        Only the returned masks are computed (two for a dynamic single-mask choice). With min_iou, only
        those of prompts with a candidate scoring above it: the others' logits are -inf (as SAM's decoder),
        and a dynamic choice among them keeps the single mask's score (both of its scores are <= min_iou).
        rows: as in MaskDecoder.forward.
        """
        sparse, dense = sparse_prompt_embeddings, dense_prompt_embeddings
        hs, src = self.run_transformer(image_embeddings, image_pe, sparse, dense, 2 + self.num_mask_tokens, rows)
        object_score_logits = self.pred_obj_score_head(hs[:, 0])
        iou_pred = self.iou_prediction_head(hs[:, 1]).sigmoid()
        mask_tokens_out = hs[:, 2 : 2 + self.num_mask_tokens]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # B x num_mask_tokens x C/8
        B, device = hyper_in.shape[0], hyper_in.device
        if multimask_output:
            picks = torch.arange(1, self.num_mask_tokens, device=device).expand(B, -1)
        elif self.dynamic_multimask_via_stability and not self.training:
            best = iou_pred[:, 1:].argmax(-1, keepdim=True) + 1  # the best multimask output
            picks = torch.cat([torch.zeros_like(best), best], dim=1)
        else:
            picks = torch.zeros(B, 1, dtype=torch.long, device=device)
        hyper_in = hyper_in.gather(1, picks[..., None].expand(-1, -1, hyper_in.shape[-1]))
        iou_pred = iou_pred.gather(1, picks)
        if min_iou is None:
            masks = self.upscale_masks(src, hyper_in, *high_res_features)
        else:  # a dynamic choice returns one of its two scores: neither above min_iou, nothing to compute
            live = (iou_pred > min_iou).any(1)
            _, h, w, _ = src.shape
            masks = hyper_in.new_full((B, picks.shape[1], 4 * h, 4 * w), -torch.inf)
            if live.any():
                features = [f if f.shape[0] == 1 else f[live] for f in high_res_features]  # batch 1: shared
                masks[live] = self.upscale_masks(src.expand(B, -1, -1, -1)[live], hyper_in[live], *features)
        if picks.shape[1] == 2:  # dynamic: keep the single mask where it is stable
            stable = (self._stability_scores(masks[:, 0]) >= self.dynamic_multimask_stability_thresh)[:, None]
            masks = torch.where(stable[..., None, None], masks[:, :1], masks[:, 1:])
            iou_pred = torch.where(stable, iou_pred[:, :1], iou_pred[:, 1:])
        return masks, iou_pred, object_score_logits

    def tokens(self, sparse_prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """The object-score, IoU and mask tokens followed by the prompts' BxNxC embeddings."""
        tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight])
        tokens = tokens.unsqueeze(0).expand(sparse_prompt_embeddings.shape[0], -1, -1)
        return torch.cat((tokens, sparse_prompt_embeddings.to(tokens.dtype)), dim=1)

    def predict_iou(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor | None,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        rows: ImageRows | None = None,
    ) -> torch.Tensor:
        """IoU scores Bxnum_mask_tokens alone (sigmoid, as forward's): the transformer, only the object-score
        and IoU tokens through its final attention, and the IoU head; no masks. rows: as in MaskDecoder."""
        hs, _ = self.run_transformer(image_embeddings, image_pe, sparse, dense, 2, rows)
        return self.iou_prediction_head(hs[:, 1]).sigmoid()

    def predict_masks(self, *args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError("SAM 2's tokens and upscaling differ from SAM's: call the decoder itself")

    def upscale_masks(  # type: ignore[override]  (SAM 2 needs the high-resolution features)
        self, src: torch.Tensor, hyper_in: torch.Tensor, feat_s0: torch.Tensor, feat_s1: torch.Tensor
    ) -> torch.Tensor:
        """output_upscaling with feat_s1 added after the first transposed convolution and feat_s0 after the
        second, then each mask token's product: src BxHxWxC, hyper_in BxMxC/8 -> BxMx4Hx4W.

        As in `MaskDecoder.upscale_masks`, each pixel's subpixels stay beside it (channels last); the
        high-resolution features are brought into that layout instead.
        """
        B, H, W, _ = src.shape
        conv1, norm, act1, conv2, act2 = self.output_upscaling
        # subpixel 2a + b of pixel (i, j) is pixel (2i + a, 2j + b) of feat_s1
        s1 = feat_s1.unflatten(2, (H, 2)).unflatten(4, (W, 2)).permute(0, 2, 4, 3, 5, 1).flatten(3, 4)
        x = subpixel_conv(src, conv1) + s1  # B x H x W x 4 x C/4
        x = act1(F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps))
        # subpixels (a1, b1) then (a2, b2) are pixel (4i + 2a1 + a2, 4j + 2b1 + b2) of feat_s0
        s0 = feat_s0.unflatten(2, (H, 2, 2)).unflatten(5, (W, 2, 2)).permute(0, 2, 5, 3, 6, 4, 7, 1)
        x = act2(subpixel_conv(x, conv2) + s0.flatten(5, 6).flatten(3, 4))  # B x H x W x 4 x 4 x C/8
        masks = x.flatten(1, -2) @ hyper_in.transpose(1, 2)  # B x (H W 4 4) x M
        masks = masks.view(B, H, W, 2, 2, 2, 2, -1).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(B, -1, 4 * H, 4 * W)

    def _stability_scores(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """BxHxW logits -> B: area above +delta over area above -delta (1 where the latter is empty)."""
        flat = mask_logits.flatten(1)
        delta = self.dynamic_multimask_stability_delta
        area_i = (flat > delta).sum(-1).float()
        area_u = (flat > -delta).sum(-1).float()
        return torch.where(area_u > 0, area_i / area_u, 1.0)
