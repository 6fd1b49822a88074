"""Key names of the two checkpoint layouts: Meta's (what our modules are named after) and transformers'.

One `KeyMap` per family, SAM (`SamModel`) and SAM 2 (`Sam2Model`, `Sam2VideoModel`), each one table of
rules, Meta's name then transformers', as full-key prefixes; the first matching rule wins, the rest of the
key is kept, and `{i}`, `{j}` stand for numbers and `{name}` for a module name. A key that no rule matches
is not a key of that family. Beyond renaming, a map knows the tensors transformers keeps twice (aliases),
the ones it stacks into one (SAM 2's four point embeddings) and the video model's entries an image model
drops. `to_meta` and `to_transformers` convert whole state dicts, both ways.
"""

import re
from dataclasses import dataclass, field

import torch

# SAM's and SAM 2's 3-layer MLP heads: transformers names the first and last layers apart.
_MLP3 = (("layers.0.", "proj_in."), ("layers.1.", "layers.0."), ("layers.2.", "proj_out."))


def _mlp3(meta: str, hf: str) -> tuple[tuple[str, str], ...]:
    return tuple((meta + a, hf + b) for a, b in _MLP3)


SAM_RULES: tuple[tuple[str, str], ...] = (
    ("image_encoder.patch_embed.proj.", "vision_encoder.patch_embed.projection."),
    ("image_encoder.blocks.{i}.norm{j}.", "vision_encoder.layers.{i}.layer_norm{j}."),
    ("image_encoder.blocks.{i}.", "vision_encoder.layers.{i}."),
    ("image_encoder.neck.0.", "vision_encoder.neck.conv1."),
    ("image_encoder.neck.1.", "vision_encoder.neck.layer_norm1."),
    ("image_encoder.neck.2.", "vision_encoder.neck.conv2."),
    ("image_encoder.neck.3.", "vision_encoder.neck.layer_norm2."),
    ("image_encoder.pos_embed", "vision_encoder.pos_embed"),
    (
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        "prompt_encoder.shared_embedding.positional_embedding",
    ),
    ("prompt_encoder.point_embeddings.{i}.", "prompt_encoder.point_embed.{i}."),
    ("prompt_encoder.mask_downscaling.0.", "prompt_encoder.mask_embed.conv1."),
    ("prompt_encoder.mask_downscaling.1.", "prompt_encoder.mask_embed.layer_norm1."),
    ("prompt_encoder.mask_downscaling.3.", "prompt_encoder.mask_embed.conv2."),
    ("prompt_encoder.mask_downscaling.4.", "prompt_encoder.mask_embed.layer_norm2."),
    ("prompt_encoder.mask_downscaling.6.", "prompt_encoder.mask_embed.conv3."),
    ("prompt_encoder.not_a_point_embed.", "prompt_encoder.not_a_point_embed."),
    ("prompt_encoder.no_mask_embed.", "prompt_encoder.no_mask_embed."),
    ("mask_decoder.transformer.layers.{i}.norm{j}.", "mask_decoder.transformer.layers.{i}.layer_norm{j}."),
    ("mask_decoder.transformer.layers.{i}.", "mask_decoder.transformer.layers.{i}."),
    ("mask_decoder.transformer.final_attn_token_to_image.", "mask_decoder.transformer.final_attn_token_to_image."),
    ("mask_decoder.transformer.norm_final_attn.", "mask_decoder.transformer.layer_norm_final_attn."),
    ("mask_decoder.iou_token.", "mask_decoder.iou_token."),
    ("mask_decoder.mask_tokens.", "mask_decoder.mask_tokens."),
    ("mask_decoder.output_upscaling.0.", "mask_decoder.upscale_conv1."),
    ("mask_decoder.output_upscaling.1.", "mask_decoder.upscale_layer_norm."),
    ("mask_decoder.output_upscaling.3.", "mask_decoder.upscale_conv2."),
    *_mlp3("mask_decoder.output_hypernetworks_mlps.{i}.", "mask_decoder.output_hypernetworks_mlps.{i}."),
    *_mlp3("mask_decoder.iou_prediction_head.", "mask_decoder.iou_prediction_head."),
)

_TRUNK, _HF_TRUNK = "image_encoder.trunk.blocks.{i}.", "vision_encoder.backbone.blocks.{i}."
_LAYER, _HF_LAYER = "sam_mask_decoder.transformer.layers.{i}.", "mask_decoder.transformer.layers.{i}."
_FINAL, _HF_FINAL = "sam_mask_decoder.transformer.final_attn_token_to_image.", "mask_decoder.transformer."

SAM2_RULES: tuple[tuple[str, str], ...] = (
    ("image_encoder.trunk.patch_embed.proj.", "vision_encoder.backbone.patch_embed.projection."),
    ("image_encoder.trunk.pos_embed", "vision_encoder.backbone.pos_embed"),  # and pos_embed_window
    (_TRUNK + "norm{j}.", _HF_TRUNK + "layer_norm{j}."),
    (_TRUNK + "mlp.layers.0.", _HF_TRUNK + "mlp.proj_in."),
    (_TRUNK + "mlp.layers.1.", _HF_TRUNK + "mlp.proj_out."),
    (_TRUNK, _HF_TRUNK),  # attn.qkv, attn.proj, proj
    ("image_encoder.neck.convs.{i}.conv.", "vision_encoder.neck.convs.{i}."),
    ("no_mem_embed", "no_memory_embedding"),
    (
        "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        "prompt_encoder.shared_embedding.positional_embedding",
    ),
    ("sam_prompt_encoder.point_embeddings.{i}.", "prompt_encoder.point_embed.{i}."),  # stacked: see STACKED
    ("sam_prompt_encoder.mask_downscaling.0.", "prompt_encoder.mask_embed.conv1."),
    ("sam_prompt_encoder.mask_downscaling.1.", "prompt_encoder.mask_embed.layer_norm1."),
    ("sam_prompt_encoder.mask_downscaling.3.", "prompt_encoder.mask_embed.conv2."),
    ("sam_prompt_encoder.mask_downscaling.4.", "prompt_encoder.mask_embed.layer_norm2."),
    ("sam_prompt_encoder.mask_downscaling.6.", "prompt_encoder.mask_embed.conv3."),
    ("sam_prompt_encoder.", "prompt_encoder."),  # not_a_point_embed, no_mask_embed
    (_LAYER + "norm{j}.", _HF_LAYER + "layer_norm{j}."),
    (_LAYER + "mlp.layers.0.", _HF_LAYER + "mlp.proj_in."),
    (_LAYER + "mlp.layers.1.", _HF_LAYER + "mlp.proj_out."),
    (_LAYER + "{name}.out_proj.", _HF_LAYER + "{name}.o_proj."),
    (_LAYER, _HF_LAYER),  # q_proj, k_proj, v_proj
    (_FINAL + "out_proj.", _HF_FINAL + "final_attn_token_to_image.o_proj."),
    (_FINAL, _HF_FINAL + "final_attn_token_to_image."),
    ("sam_mask_decoder.transformer.norm_final_attn.", "mask_decoder.transformer.layer_norm_final_attn."),
    ("sam_mask_decoder.output_upscaling.0.", "mask_decoder.upscale_conv1."),
    ("sam_mask_decoder.output_upscaling.1.", "mask_decoder.upscale_layer_norm."),
    ("sam_mask_decoder.output_upscaling.3.", "mask_decoder.upscale_conv2."),
    *_mlp3("sam_mask_decoder.output_hypernetworks_mlps.{i}.", "mask_decoder.output_hypernetworks_mlps.{i}."),
    *_mlp3("sam_mask_decoder.iou_prediction_head.", "mask_decoder.iou_prediction_head."),
    *_mlp3("sam_mask_decoder.pred_obj_score_head.", "mask_decoder.pred_obj_score_head."),
    ("sam_mask_decoder.", "mask_decoder."),  # iou_token, mask_tokens, obj_score_token, conv_s0, conv_s1
)

_PLACEHOLDERS = {r"\{i\}": r"(?P<i>\d+)", r"\{j\}": r"(?P<j>\d+)", r"\{name\}": r"(?P<name>[a-z_]+)"}


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for placeholder, group in _PLACEHOLDERS.items():
        pattern = pattern.replace(placeholder, group)
    return re.compile(pattern)


@dataclass(frozen=True)
class KeyMap:
    rules: tuple[tuple[str, str], ...]  # (Meta prefix, transformers prefix)
    aliases: dict[str, str] = field(default_factory=dict)  # transformers' second copy -> the key it copies
    stacked: dict[str, str] = field(default_factory=dict)  # transformers key -> its rows' key, "{i}" the row
    video_keys: tuple[str, ...] = ()  # transformers prefixes of the video model's entries, dropped

    def __post_init__(self) -> None:
        compiled = [(_compile(meta), meta, _compile(hf), hf) for meta, hf in self.rules]
        object.__setattr__(self, "_compiled", compiled)

    def _rename(self, key: str, to_meta: bool) -> str | None:
        for meta_re, meta, hf_re, hf in self._compiled:
            src, dst = (hf_re, meta) if to_meta else (meta_re, hf)
            m = src.match(key)
            if m:
                return dst.format(**m.groupdict()) + key[m.end() :]
        return None

    def meta_key(self, key: str) -> str | None:
        """A transformers key -> Meta's (None if it is not a key of this family)."""
        return self._rename(self.aliases.get(key, key), to_meta=True)

    def transformers_key(self, key: str) -> str | None:
        """A Meta key -> transformers' (None if it is not a key of this family)."""
        return self._rename(key, to_meta=False)

    def is_video_key(self, key: str) -> bool:
        return key.startswith(self.video_keys) if self.video_keys else False

    def to_meta(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A transformers state dict with Meta's names; unknown keys are kept as they are (the strict key
        check that follows names them), video-model entries are dropped."""
        out: dict[str, torch.Tensor] = {}
        for key, value in state_dict.items():
            if self.is_video_key(key):
                continue
            if key in self.stacked:
                for i, row in enumerate(value.unbind(0)):
                    out[self.meta_key(self.stacked[key].format(i=i)) or key] = row[None].clone()
                continue
            new = self.meta_key(key) or key
            if key in self.aliases and new in out:
                continue  # the duplicate: keep the copy of the key it duplicates
            out[new] = value
        return out

    def to_transformers(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A Meta state dict with transformers' names, aliases and stacked tensors (the image model's keys)."""
        out: dict[str, torch.Tensor] = {}
        rows: dict[str, list[tuple[int, torch.Tensor]]] = {}
        stacked_rows = {_compile(template): key for key, template in self.stacked.items()}
        for key, value in state_dict.items():
            new = self.transformers_key(key) or key
            for row_re, stacked_key in stacked_rows.items():
                m = row_re.fullmatch(new)
                if m:
                    rows.setdefault(stacked_key, []).append((int(m["i"]), value))
                    break
            else:
                out[new] = value
        for key, parts in rows.items():
            out[key] = torch.cat([v for _, v in sorted(parts, key=lambda p: p[0])])
        for alias, original in self.aliases.items():
            if original in out:
                out[alias] = out[original]
        return out


SAM_KEYS = KeyMap(
    SAM_RULES,
    # transformers keeps a second copy of the prompt encoder's random Fourier matrix at the top level
    aliases={"shared_image_embedding.positional_embedding": "prompt_encoder.shared_embedding.positional_embedding"},
)

SAM2_KEYS = KeyMap(
    SAM2_RULES,
    aliases={"shared_image_embedding.positional_embedding": "prompt_encoder.shared_embedding.positional_embedding"},
    # Sam2Model holds the four point embeddings (negative, positive, box corners) as the rows of one table
    stacked={"prompt_encoder.point_embed.weight": "prompt_encoder.point_embed.{i}.weight"},
    # the entries Sam2Model itself ignores when it loads a Sam2VideoModel checkpoint
    video_keys=(
        "memory_",
        "mask_downsample",
        "object_pointer_proj",
        "temporal_positional_encoding_projection_layer",
        "no_memory_positional_encoding",
        "no_object_pointer",
        "occlusion_spatial_embedding_parameter",
    ),
)
