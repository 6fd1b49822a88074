"""Loading published SAM and SAM 2 weights: the table of known models, safe reading, strict checks.

`load_model(source)` accepts a known name (`KNOWN_MODELS`), a Hub repo id (`facebook/sam-vit-base`), a
file inside a Hub repo (`ybelkada/segment-anything/checkpoints/sam_vit_b_01ec64.pth`: the first two
path parts are the repo id), a local file (`.pth`, `.pt`, `.safetensors`), a local folder (config.json +
model.safetensors), or `random:<name>` for clearly labelled random weights. Two layouts load for each
family: Meta's original state dicts (SAM 2's under the `model` key, its video-only entries dropped) and
transformers' safetensors (SamModel; Sam2Model or Sam2VideoModel), renamed by the tables of `sam.remap`.
A configuration read from a file is checked against the published family's sizes before anything is
built. Downloads go through huggingface_hub (see `sam.hub`), so its cache and environment variables apply.
"""

import difflib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from . import build_sam2 as sam2_configs
from .build import CONFIGS, SamConfig, build_sam, check_config, config_from_state_dict, config_from_transformers
from .build_sam2 import Sam2Config, build_sam2, drop_video_keys, is_sam2_state_dict
from .hub import WeightsError, download
from .modeling.sam import Sam
from .modeling.sam2 import Sam2
from .precision import resolve_dtype
from .remap import SAM2_KEYS, SAM_KEYS

__all__ = ["KNOWN_MODELS", "KnownModel", "WeightsError", "load_model", "resolve"]

logger = logging.getLogger(__name__)

TRANSFORMERS_FILES = ("config.json", "model.safetensors")


@dataclass(frozen=True)
class KnownModel:
    repo_id: str  # Hub repository
    files: tuple[str, ...]  # files fetched from it; the last one holds the weights
    format: str  # "transformers" (config.json + model.safetensors) or "meta" (original state dict)
    config: str | None  # name in sam.build.CONFIGS or sam.build_sam2.CONFIGS; None: read from config.json
    description: str


def _sam2_models() -> dict[str, KnownModel]:
    """SAM 2.1 and 2.0 in Meta's layout (the `.pt` of Meta's own `build_sam2` Hub table), then the names
    Ultralytics gives the same weights (`sam2.1_t.pt`, `sam2_b.pt`, ...)."""
    names, aliases = {}, {}
    sizes = (("tiny", "t", "T"), ("small", "s", "S"), ("base-plus", "b", "B+"), ("large", "l", "L"))
    for prefix, label in (("sam2.1", "SAM 2.1"), ("sam2", "SAM 2")):
        for size, short, hiera in sizes:
            stem = f"hiera_{size.replace('-', '_')}"
            known = KnownModel(f"facebook/{prefix}-hiera-{size}", (f"{prefix}_{stem}.pt",), "meta", stem,
                               f"{label} Hiera-{hiera}")
            names[f"{prefix}-hiera-{size}"] = known
            aliases[f"{prefix}_{short}.pt"] = known
    return names | aliases


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
    **_sam2_models(),
}
# Short names `random:` also takes: segment-anything's and mobile_sam's registry names, Meta's SAM 2 configs'.
SHORT_NAMES = {"vit_t": "tiny_vit", "hiera_t": "hiera_tiny", "hiera_s": "hiera_small", "hiera_b+": "hiera_base_plus",
               "hiera_l": "hiera_large"}

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


def build_empty(config: SamConfig | Sam2Config, *, weights_source: str = "uninitialised memory") -> Sam | Sam2:
    """build_sam (or build_sam2) without the random init of parameters (their memory is left as allocated).

    Saves about a second on ViT-B. Only for a model whose every parameter is loaded next, as
    `model_from_state_dict` does after its strict key check. Buffers such as pixel_mean are built as usual.
    (The mode is thread-local; building on the meta device instead would import torch._dynamo for init.)
    """
    build = build_sam2 if isinstance(config, Sam2Config) else build_sam
    with _SkipInit():
        return build(config, weights_source=weights_source)


def _first(keys: list[str], n: int = 5) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def check_state_dict(state_dict: dict[str, torch.Tensor], model: nn.Module, source: str) -> None:
    """Raise WeightsError naming missing, unexpected, mis-shaped and wrongly typed keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes, dtypes = [], []
    for k, v in state_dict.items():
        if k not in expected:
            continue
        if v.shape != expected[k].shape:
            shapes.append(f"{k} is {tuple(v.shape)} in the file, {tuple(expected[k].shape)} in the model")
        elif v.is_floating_point() != expected[k].is_floating_point():
            dtypes.append(f"{k} is {str(v.dtype).removeprefix('torch.')} in the file, "
                          f"{str(expected[k].dtype).removeprefix('torch.')} in the model")
    found = (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes),
             ("wrong types", dtypes))
    problems = [f"{what}: {_first(keys)}" for what, keys in found if keys]
    if problems:
        raise WeightsError(f"{source} does not fit the {model.config.name} model: " + "; ".join(problems))


def checked(config: SamConfig | Sam2Config, source: str) -> SamConfig | Sam2Config:
    """The config, if its sizes are within its family's; else WeightsError, before anything is built."""
    try:
        (sam2_configs.check_config if isinstance(config, Sam2Config) else check_config)(config)
    except ValueError as e:
        family = "SAM 2" if isinstance(config, Sam2Config) else "SAM"
        raise WeightsError(f"{source} describes a model outside the sizes of the published {family} models, "
                           f"refused before building it: {e}") from None
    return config


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


def model_from_state_dict(
    sd: dict[str, torch.Tensor], config: SamConfig | Sam2Config | None, source: str
) -> Sam | Sam2:
    """Build the model for a Meta- or transformers-named state dict (SAM or SAM 2) and load it strictly."""
    if any(k.startswith("vision_encoder.backbone.") for k in sd):
        sd = SAM2_KEYS.to_meta(sd)
    elif any(k.startswith("vision_encoder.") for k in sd):
        sd = SAM_KEYS.to_meta(sd)
    sd = {k: v for k, v in sd.items() if k not in ("pixel_mean", "pixel_std")}
    if is_sam2_state_dict(sd):
        sd = drop_video_keys(sd)
        config = config or sam2_configs.config_from_state_dict(sd)
    config = checked(config or config_from_state_dict(sd), source)
    model = build_empty(config, weights_source=source)
    check_state_dict(sd, model, source)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


def random_config_name(name: str) -> str:
    """The config `random:<name>` builds: a known model's, a config name or a short name (vit_t, hiera_t, ...)."""
    known = KNOWN_MODELS.get(name)
    config_name = (known.config or name) if known else SHORT_NAMES.get(name, name)
    if config_name not in CONFIGS and config_name not in sam2_configs.CONFIGS:
        choices = [*CONFIGS, *SHORT_NAMES, *sam2_configs.CONFIGS] + [n for n, m in KNOWN_MODELS.items() if m.config]
        raise WeightsError(f"random:{name} is not available; choose one of: {', '.join(choices)}")
    return config_name


def _random(name: str) -> Sam | Sam2:
    config_name = random_config_name(name)
    logger.warning("Using RANDOM weights (%s): masks are meaningless; for tests and development only.", config_name)
    build = build_sam if config_name in CONFIGS else build_sam2
    return build(config_name, weights_source=f"random weights ({config_name})")


def _from_folder(folder: Path, source: str) -> Sam | Sam2:
    files = [folder / f for f in TRANSFORMERS_FILES]
    if not all(f.is_file() for f in files):
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise WeightsError(f"folder {folder} needs config.json and model.safetensors; it holds {found}")
    return _from_transformers_files(*files, source)


def _from_transformers_files(config_file: Path, weights_file: Path, source: str) -> Sam | Sam2:
    try:
        config = json.loads(config_file.read_text())
        model_type = config.get("model_type", "sam")
        if model_type not in ("sam", "sam2", "sam2_video"):
            raise WeightsError(f"config.json describes a {model_type!r} model, not SAM ('sam') or SAM 2 "
                               "('sam2', 'sam2_video')")
        read = config_from_transformers if model_type == "sam" else sam2_configs.config_from_transformers
        config = read(config)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError, ValueError) as e:
        raise WeightsError(f"could not read {config_file}: {e}") from e
    checked(config, f"config.json of {source}")
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
) -> Sam | Sam2:
    """Load a SAM or SAM 2 model in eval mode; `model.weights_source` says where its weights came from.

    source: a name in KNOWN_MODELS, a local file or folder, a Hub repo id (`owner/name`, transformers
    layout), a file in a Hub repo (`owner/name/path/in/repo.pth`) or `random:<name>` (a known name, a config
    name or a short name: vit_b, vit_t, hiera_t, ...; see SHORT_NAMES).
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
