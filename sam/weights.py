"""Loading published SAM weights: the table of known models, safe reading, one key remap, strict checks.

`load_model(source)` accepts a known name (`KNOWN_MODELS`), a Hub repo id (`facebook/sam-vit-base`), a
file inside a Hub repo (`ybelkada/segment-anything/checkpoints/sam_vit_b_01ec64.pth`: the first two
path parts are the repo id), a local file (`.pth`, `.pt`, `.safetensors`), a local folder (config.json +
model.safetensors), or `random:<name>` for clearly labelled random weights. Two formats load: Meta's
original state dicts and transformers' SamModel safetensors, the latter renamed by `TRANSFORMERS_KEYS`.
Downloads go through huggingface_hub (see `sam.hub`), so its cache and environment variables apply.
"""

import difflib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .build import CONFIGS, SamConfig, TinyViTConfig, ViTConfig, build_sam
from .hub import WeightsError, download
from .modeling.sam import Sam
from .precision import resolve_dtype

__all__ = ["KNOWN_MODELS", "KnownModel", "WeightsError", "load_model", "resolve"]

logger = logging.getLogger(__name__)

TRANSFORMERS_FILES = ("config.json", "model.safetensors")


@dataclass(frozen=True)
class KnownModel:
    repo_id: str  # Hub repository
    files: tuple[str, ...]  # files fetched from it; the last one holds the weights
    format: str  # "transformers" (config.json + model.safetensors) or "meta" (original state dict)
    config: str | None  # name in sam.build.CONFIGS; None: the widths are read from config.json
    description: str


_META_B = KnownModel("ybelkada/segment-anything", ("checkpoints/sam_vit_b_01ec64.pth",), "meta", "vit_b", "SAM ViT-B")
_META_L = KnownModel("ybelkada/segment-anything", ("checkpoints/sam_vit_l_0b3195.pth",), "meta", "vit_l", "SAM ViT-L")
_META_H = KnownModel("ybelkada/segment-anything", ("checkpoints/sam_vit_h_4b8939.pth",), "meta", "vit_h", "SAM ViT-H")
_MOBILE = KnownModel("dhkim2810/MobileSAM", ("mobile_sam.pt",), "meta", "tiny_vit", "MobileSAM (TinyViT encoder)")

KNOWN_MODELS: dict[str, KnownModel] = {
    "sam-vit-base": KnownModel("facebook/sam-vit-base", TRANSFORMERS_FILES, "transformers", "vit_b", "SAM ViT-B"),
    "sam-vit-large": KnownModel("facebook/sam-vit-large", TRANSFORMERS_FILES, "transformers", "vit_l", "SAM ViT-L"),
    "sam-vit-huge": KnownModel("facebook/sam-vit-huge", TRANSFORMERS_FILES, "transformers", "vit_h", "SAM ViT-H"),
    "mobile-sam": _MOBILE,
    "slimsam-50": KnownModel(
        "Zigeng/SlimSAM-uniform-50", TRANSFORMERS_FILES, "transformers", None, "SlimSAM-50 (pruned ViT-B)"
    ),
    "slimsam-77": KnownModel(
        "Zigeng/SlimSAM-uniform-77", TRANSFORMERS_FILES, "transformers", None, "SlimSAM-77 (pruned ViT-B)"
    ),
    # The names the Ultralytics docs use, for Meta's original checkpoints.
    "sam_b.pt": _META_B,
    "sam_l.pt": _META_L,
    "sam_h.pt": _META_H,
    "mobile_sam.pt": _MOBILE,
}

# One remap table, Meta name <-> transformers name, as full-key prefixes; the first matching rule wins.
# `{i}` stands for a block number. Keys that no rule matches are not SAM keys.
TRANSFORMERS_KEYS: tuple[tuple[str, str], ...] = (
    ("image_encoder.patch_embed.proj.", "vision_encoder.patch_embed.projection."),
    ("image_encoder.blocks.{i}.norm1.", "vision_encoder.layers.{i}.layer_norm1."),
    ("image_encoder.blocks.{i}.norm2.", "vision_encoder.layers.{i}.layer_norm2."),
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
    # SAM's 3-layer MLP heads: transformers names the first and last layers apart.
    ("mask_decoder.output_hypernetworks_mlps.{i}.layers.0.", "mask_decoder.output_hypernetworks_mlps.{i}.proj_in."),
    ("mask_decoder.output_hypernetworks_mlps.{i}.layers.1.", "mask_decoder.output_hypernetworks_mlps.{i}.layers.0."),
    ("mask_decoder.output_hypernetworks_mlps.{i}.layers.2.", "mask_decoder.output_hypernetworks_mlps.{i}.proj_out."),
    ("mask_decoder.iou_prediction_head.layers.0.", "mask_decoder.iou_prediction_head.proj_in."),
    ("mask_decoder.iou_prediction_head.layers.1.", "mask_decoder.iou_prediction_head.layers.0."),
    ("mask_decoder.iou_prediction_head.layers.2.", "mask_decoder.iou_prediction_head.proj_out."),
)
# transformers keeps a second copy of the prompt encoder's random Fourier matrix at the top level.
TRANSFORMERS_ALIASES = {
    "shared_image_embedding.positional_embedding": "prompt_encoder.shared_embedding.positional_embedding"
}


def _compile(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)"))


_RULES = [(_compile(meta), meta, _compile(hf), hf) for meta, hf in TRANSFORMERS_KEYS]


def _rename(key: str, to_meta: bool) -> str | None:
    for meta_re, meta, hf_re, hf in _RULES:
        src, dst = (hf_re, meta) if to_meta else (meta_re, hf)
        m = src.match(key)
        if m:
            return dst.format(**m.groupdict()) + key[m.end() :]
    return None


def to_meta_key(key: str) -> str | None:
    """transformers SamModel key -> Meta's key (None if it is not a SAM key)."""
    return _rename(TRANSFORMERS_ALIASES.get(key, key), to_meta=True)


def to_transformers_key(key: str) -> str | None:
    """Meta's key -> transformers SamModel key (None if it is not a SAM key)."""
    return _rename(key, to_meta=False)


def from_transformers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers SamModel state dict to Meta's names; unknown keys are kept as they are."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = to_meta_key(key) or key
        if key in TRANSFORMERS_ALIASES and new in out:
            continue  # the duplicate positional matrix: keep the prompt encoder's copy
        out[new] = value
    return out


def config_from_transformers(config: dict) -> SamConfig:
    """SamConfig from the contents of a transformers SamModel config.json."""
    if config.get("model_type", "sam") != "sam":
        raise WeightsError(f"config.json describes a {config.get('model_type')!r} model, not SAM ('sam')")
    v = config.get("vision_config") or {}
    p = config.get("prompt_encoder_config") or {}
    d = config.get("mask_decoder_config") or {}
    unsupported = {k: v[k] for k in ("use_rel_pos", "use_abs_pos", "qkv_bias") if v.get(k) is False}
    if d.get("attention_downsample_rate", 2) != 2:
        unsupported["attention_downsample_rate"] = d["attention_downsample_rate"]
    if p.get("image_size", v.get("image_size", 1024)) != v.get("image_size", 1024):
        unsupported["prompt_encoder_config.image_size"] = p["image_size"]
    if unsupported:
        raise WeightsError(f"config.json has settings this package does not implement: {unsupported}")
    hidden = v.get("hidden_size", 768)
    mlp_dim = v.get("mlp_dim") or int(hidden * v.get("mlp_ratio", 4.0))
    encoder = ViTConfig(
        embed_dim=hidden,
        depth=v.get("num_hidden_layers", 12),
        num_heads=v.get("num_attention_heads", 12),
        global_attn_indexes=tuple(v.get("global_attn_indexes", (2, 5, 8, 11))),
        mlp_dim=None if mlp_dim == 4 * hidden else mlp_dim,
        window_size=v.get("window_size", 14),
        patch_size=v.get("patch_size", 16),
    )
    return SamConfig(
        encoder,
        img_size=v.get("image_size", 1024),
        prompt_embed_dim=v.get("output_channels", 256),
        mask_in_chans=p.get("mask_input_channels", 16),
        decoder_depth=d.get("num_hidden_layers", 2),
        decoder_mlp_dim=d.get("mlp_dim", 2048),
        decoder_num_heads=d.get("num_attention_heads", 8),
        num_multimask_outputs=d.get("num_multimask_outputs", 3),
        iou_head_depth=d.get("iou_head_depth", 3),
        iou_head_hidden_dim=d.get("iou_head_hidden_dim", 256),
    )


def _count(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of distinct indices N among keys `prefix.N.*`."""
    n = len(prefix) + 1
    return len({k[n:].split(".")[0] for k in state_dict if k.startswith(prefix + ".")})


def config_from_state_dict(sd: dict[str, torch.Tensor]) -> SamConfig:
    """Read the architecture off a Meta-named state dict's shapes (the decoder's 8 heads are assumed).

    A missing key falls back to SAM's default for what it would tell, so that the strict check that
    follows names every missing key instead of stopping at the first.
    """
    if not any(k.startswith("image_encoder.") for k in sd):
        raise WeightsError(f"this is not a SAM checkpoint: no image_encoder keys (it starts with {_first(list(sd))})")
    default, vit = SamConfig(), ViTConfig()

    def dim(key: str, axis: int, fallback: int) -> int:
        return sd[key].shape[axis] if key in sd and sd[key].ndim > axis else fallback

    decoder = dict(
        prompt_embed_dim=dim("mask_decoder.iou_token.weight", 1, default.prompt_embed_dim),
        mask_in_chans=dim("prompt_encoder.mask_downscaling.3.weight", 0, default.mask_in_chans),
        decoder_depth=_count(sd, "mask_decoder.transformer.layers") or default.decoder_depth,
        decoder_mlp_dim=dim("mask_decoder.transformer.layers.0.mlp.lin1.weight", 0, default.decoder_mlp_dim),
        num_multimask_outputs=dim("mask_decoder.mask_tokens.weight", 0, default.num_multimask_outputs + 1) - 1,
        iou_head_depth=_count(sd, "mask_decoder.iou_prediction_head.layers") or default.iou_head_depth,
        iou_head_hidden_dim=dim("mask_decoder.iou_prediction_head.layers.0.weight", 0, default.iou_head_hidden_dim),
    )
    if any(k.startswith("image_encoder.layers.") for k in sd):
        return SamConfig(TinyViTConfig(), **decoder)
    embed_dim = dim("image_encoder.patch_embed.proj.weight", 0, vit.embed_dim)
    patch = dim("image_encoder.patch_embed.proj.weight", 3, vit.patch_size)
    grid = dim("image_encoder.pos_embed", 1, default.img_size // patch)
    depth = _count(sd, "image_encoder.blocks") or vit.depth
    rel_pos = [dim(f"image_encoder.blocks.{i}.attn.rel_pos_h", 0, 0) for i in range(depth)]
    head_dim = dim("image_encoder.blocks.0.attn.rel_pos_h", 1, embed_dim // vit.num_heads)
    global_blocks = tuple(i for i, n in enumerate(rel_pos) if n == 2 * grid - 1) or vit.global_attn_indexes
    windows = [n for i, n in enumerate(rel_pos) if i not in global_blocks and n > 0]
    mlp_dim = dim("image_encoder.blocks.0.mlp.lin1.weight", 0, 4 * embed_dim)
    encoder = ViTConfig(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=max(embed_dim // head_dim, 1),
        global_attn_indexes=global_blocks,
        mlp_dim=None if mlp_dim == 4 * embed_dim else mlp_dim,
        window_size=(windows[0] + 1) // 2 if windows else vit.window_size,
        patch_size=patch,
    )
    return SamConfig(encoder, img_size=grid * patch, **decoder)


# Parameter init that build_empty skips: the nn.init functions and the in-place fills they end in.
_RANDOM_INIT = {
    *(getattr(nn.init, n) for n in ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_")),
    *(getattr(nn.init, n) for n in ("kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_")),
    torch.Tensor.uniform_,
    torch.Tensor.normal_,
}


class _SkipInit(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RANDOM_INIT:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


def build_empty(config: SamConfig, *, weights_source: str = "uninitialised memory") -> Sam:
    """build_sam without the random init of parameters (their memory is left as allocated).

    Saves about a second on ViT-B. Only for a model whose every parameter is loaded next, as
    `model_from_state_dict` does after its strict key check. Buffers such as pixel_mean are built as usual.
    (The mode is thread-local; building on the meta device instead would import torch._dynamo for init.)
    """
    with _SkipInit():
        return build_sam(config, weights_source=weights_source)


def _first(keys: list[str], n: int = 5) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def check_state_dict(state_dict: dict[str, torch.Tensor], model: nn.Module, source: str) -> None:
    """Raise WeightsError naming missing, unexpected and mis-shaped keys."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} is {tuple(v.shape)} in the file, {expected[k]} in the model"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]
    problems = [
        f"{what}: {_first(keys)}"
        for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes))
        if keys
    ]
    if problems:
        raise WeightsError(f"{source} does not fit the {model.config.name} model: " + "; ".join(problems))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch-pickled state dict, without running pickled code."""
    hint = (
        f"{path} may be truncated or corrupted: delete it (for a Hub download, its folder in the Hugging Face "
        "cache) and load again, or pass force_download=True"
    )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)  # memory-mapped: no copy until the pages are used
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"  # mmap needs torch.save's zip format
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except Exception as e:
        if "Weights only load failed" in str(e):
            raise WeightsError(f"{path} holds more than tensors; only plain state dicts are loaded: {e}") from e
        raise WeightsError(f"could not read {path}: {type(e).__name__}: {e}. {hint}") from e
    if isinstance(sd, dict) and isinstance(sd.get("model", sd.get("state_dict")), dict):
        sd = sd.get("model", sd.get("state_dict"))
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path} is not a state dict (a dict of tensors)")
    return sd


def model_from_state_dict(sd: dict[str, torch.Tensor], config: SamConfig | None, source: str) -> Sam:
    """Build the model for a Meta- or transformers-named state dict and load it strictly."""
    if any(k.startswith("vision_encoder.") for k in sd):
        sd = from_transformers(sd)
    sd = {k: v for k, v in sd.items() if k not in ("pixel_mean", "pixel_std")}
    config = config or config_from_state_dict(sd)
    model = build_empty(config, weights_source=source)
    check_state_dict(sd, model, source)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


def _random(name: str) -> Sam:
    config_name = KNOWN_MODELS[name].config if name in KNOWN_MODELS else name
    if config_name not in CONFIGS:
        choices = sorted(CONFIGS) + [n for n, m in KNOWN_MODELS.items() if m.config]
        raise WeightsError(f"random:{name} is not available; choose one of: {', '.join(choices)}")
    logger.warning("Using RANDOM weights (%s): masks are meaningless; for tests and development only.", config_name)
    return build_sam(config_name, weights_source=f"random weights ({config_name})")


def _from_folder(folder: Path, source: str) -> Sam:
    files = [folder / f for f in TRANSFORMERS_FILES]
    if not all(f.is_file() for f in files):
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise WeightsError(f"folder {folder} needs config.json and model.safetensors; it holds {found}")
    return _from_transformers_files(*files, source)


def _from_transformers_files(config_file: Path, weights_file: Path, source: str) -> Sam:
    try:
        config = config_from_transformers(json.loads(config_file.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as e:
        raise WeightsError(f"could not read {config_file}: {e}") from e
    return model_from_state_dict(read_state_dict(weights_file), config, source)


def _unknown(source: str) -> WeightsError:
    close = difflib.get_close_matches(source, KNOWN_MODELS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return WeightsError(
        f"{source!r} is not a known model, a local file or folder, or a Hub repo id (owner/name).{hint} "
        f"Known models: {', '.join(KNOWN_MODELS)}."
    )


def resolve(source: str) -> tuple[str, tuple[str, ...]]:
    """Hub repo id and files for a known name, `owner/name` (transformers layout) or `owner/name/path`."""
    known = KNOWN_MODELS.get(source)
    if known is not None:
        return known.repo_id, known.files
    if source.startswith((".", "/", "~", "\\")) or source.count("/") == 0:
        raise _unknown(source)
    if source.count("/") == 1:
        return source, TRANSFORMERS_FILES
    owner, name, file = source.split("/", 2)
    return f"{owner}/{name}", (file,)


def load_model(
    source: str,
    *,
    device: str | torch.device = "cpu",
    revision: str | None = None,
    force_download: bool = False,
    dtype: str | torch.dtype = "float32",
) -> Sam:
    """Load a SAM model in eval mode; `model.weights_source` says where its weights came from.

    source: a name in KNOWN_MODELS, a local file or folder, a Hub repo id (`owner/name`, transformers
    layout), a file in a Hub repo (`owner/name/path/in/repo.pth`) or `random:<known name or config name>`.
    revision: branch, tag or commit of Hub downloads. dtype: precision of the image encoder, 'float32'
    (exact parity with the reference code), 'bfloat16', or 'auto' (bf16 where the processor runs it fast;
    see sam.precision). Raises WeightsError with a message for people.
    """
    source = str(source).strip()
    dtype = resolve_dtype(dtype, device)
    if source.startswith("random:"):
        return _random(source.removeprefix("random:")).to(device).set_precision(dtype)
    local = Path(source).expanduser()
    if local.is_dir():
        model = _from_folder(local, str(local))
    elif local.is_file():
        model = model_from_state_dict(read_state_dict(local), None, str(local))
    else:
        repo_id, files = resolve(source)
        paths = [download(repo_id, f, revision=revision, force_download=force_download) for f in files]
        where = repo_id + (f"@{revision}" if revision else "")
        where = where if files == TRANSFORMERS_FILES else f"{where}:{files[0]}"
        label = f"{source} ({where})" if source in KNOWN_MODELS else where
        if files == TRANSFORMERS_FILES:
            model = _from_transformers_files(*paths, label)
        else:
            model = model_from_state_dict(read_state_dict(paths[0]), None, label)
    logger.info("Loaded %s", model.weights_source)
    model = model.to(device).set_precision(dtype)
    if dtype != torch.float32:
        # The loaded tensors view the checkpoint's memory map, which stays resident, the fp32 weights that
        # set_precision replaced included (about 360 MB for ViT-B), while any of them lives: copy the rest.
        sd = model.state_dict()
        model.load_state_dict({k: v.clone() if v.dtype == torch.float32 else v for k, v in sd.items()}, assign=True)
    return model
