"""Every setting and limit of the app, in one place.

`Settings` holds what an operator may change, each through the environment variable named in `ENV`;
`Settings.from_env()` reads them once, in `app.main`, and everything else receives plain values. The
constants below are fixed bounds on what visitors send. docs/limits.md says what a visitor sees when one
is reached; docs/deployment.md lists the settings.
"""

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_UPLOAD_MB = 50  # one upload request, all its files together (and Gradio's max_file_size): HTTP 413 beyond
UPLOAD_MB_PER_CLIENT = 500  # uploads of one client address in an hour: HTTP 429 beyond
UPLOAD_MB_TOTAL = 4096  # uploads of all clients in an hour; uploads are deleted after SESSION_TTL_S
EXPORT_DIR = Path(tempfile.gettempdir()) / "sam-exports"  # export zips, swept after 10 minutes (sam/app/sweep.py)
MAX_PIXELS = 40_000_000  # width x height, read from the file header before anything is decoded
MAX_ASPECT = 32  # long side / short side: SAM sees the long side at 1024 px, so the short side keeps >= 32 px
MAX_PROMPTS = 64  # points and boxes per object (the page), points per request (the /segment API)
MAX_OBJECTS = 64  # objects per image
MAX_NAME = 40  # characters of an object name
SESSION_TTL_S = 3600  # a visitor's state is dropped this long after their last request
QUEUE_SIZE = 64  # queued image embeddings and API calls; more get "the queue is full"
PAGE_TIMEOUT_S = 120  # the page stops waiting for an answer after this long (static/canvas.js, TIMEOUT_MS)
MAX_BODY_KB = 1024  # request bodies other than uploads (JSON of the queue, API and canvas routes): HTTP 413 beyond
EVERYTHING_RUNS = 2  # segment-everything runs at once (one per visitor); more are told "busy" at once
MAX_EVERYTHING_MASKS = 255  # masks one segment-everything returns (the best by predicted IoU; one 8-bit label image)
PRECISIONS = ("auto", "float32", "bfloat16")
ONNX_DIR = Path(tempfile.gettempdir()) / "sam-onnx"  # decoders exported for the browser, one file per weights
# ONNX Runtime Web for the page (static/decoder.js): a pinned release on a CDN, its script checked by this hash
ORT_VERSION = "1.30.0"
ORT_CDN = f"https://cdn.jsdelivr.net/npm/onnxruntime-web@{ORT_VERSION}/dist/"
ORT_INTEGRITY = {  # the page loads ort.min.js (WebGPU and wasm) where the browser has a WebGPU adapter, else
    # ort.wasm.min.js, whose WebAssembly is half the size
    "ort.min.js": "sha384-N94xSNjPDbfBJj4+QINst0nbHpcCm8kc1qNlIP/wA0muqjR3aVyIuDkMeccPrLvQ",
    "ort.wasm.min.js": "sha384-Bw6URI+Gvoadw0do7/QrSHUC9D1vCYYK5OSqChFyhyV5mzPL4oe2rOAFljAnS8Sq",
}


@dataclass(frozen=True)
class Settings:
    """What an operator can set; the defaults are the app's."""

    model: str = "sam-vit-base"  # the model shown first (any name load_model takes)
    precision: str = "auto"  # image encoder precision: auto (bf16 where the CPU runs it fast), float32, bfloat16
    max_sessions: int = 500  # the oldest visitor sessions are evicted beyond this many
    max_models: int = 2  # models loaded at once (least recently used is dropped)
    embedding_cache_items: int = 64  # image embeddings shared by all visitors (LRU)
    embedding_cache_mb: int = 512
    image_cache_mb: int = 512  # decoded images kept for re-embedding and exports (LRU)
    decode_threads: int = 0  # torch threads of a click when nothing else runs (0: all)
    embed_threads: int = 0  # torch threads of an embedding (0: all)
    everything_timeout_s: float = 300.0  # one "segment everything" request stops after this long
    everything: Mapping[str, Any] = field(default_factory=dict)  # SamAutomaticMaskGenerator arguments
    share_embeddings: bool = True  # one cache entry per image for everyone (see docs/limits.md, "Privacy")
    browser_decode: bool = True  # the page decodes hovers and clicks itself when it can (docs/app.md)
    ort_url: str = ORT_CDN  # onnxruntime-web's dist/ folder: an http(s) URL, or a local folder the app serves

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        """Settings from the SAM_* variables in `environ`; unset or empty ones keep their defaults.

        Raises ValueError naming the variable when a value cannot be used.
        """
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            text = environ.get(ENV[f.name], "").strip()
            if text:
                values[f.name] = _parse(ENV[f.name], f.type, text)
        return cls(**values)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"{ENV['precision']} must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("max_sessions", "max_models", "embedding_cache_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"{ENV[name]} must be at least 1, got {getattr(self, name)}")
        for name in ("embedding_cache_mb", "image_cache_mb", "decode_threads", "embed_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{ENV[name]} must not be negative, got {getattr(self, name)}")
        if not 0 < self.everything_timeout_s < float("inf"):
            name, value = ENV["everything_timeout_s"], self.everything_timeout_s
            raise ValueError(f"{name} must be a positive number, got {value}")
        _check_generator_args(self.everything)
        remote = self.ort_url.startswith(("https://", "http://"))
        if not remote and not all((Path(self.ort_url) / name).is_file() for name in ORT_INTEGRITY):
            raise ValueError(f"{ENV['ort_url']} must be an http(s) URL or a folder with ort.min.js and ort.wasm.min.js "
                             f"(onnxruntime-web's dist/), got {self.ort_url[:80]!r}")
        problem = model_problem(self.model)
        if problem:
            raise ValueError(problem)


ENV = {
    "model": "SAM_MODEL",
    "precision": "SAM_PRECISION",
    "max_sessions": "SAM_MAX_SESSIONS",
    "max_models": "SAM_MAX_MODELS",
    "embedding_cache_items": "SAM_EMBEDDING_CACHE_ITEMS",
    "embedding_cache_mb": "SAM_EMBEDDING_CACHE_MB",
    "image_cache_mb": "SAM_IMAGE_CACHE_MB",
    "decode_threads": "SAM_DECODE_THREADS",
    "embed_threads": "SAM_EMBED_THREADS",
    "everything_timeout_s": "SAM_EVERYTHING_TIMEOUT_S",
    "everything": "SAM_EVERYTHING",  # a JSON object, e.g. '{"points_per_side": 16}'
    "share_embeddings": "SAM_SHARE_EMBEDDINGS",  # 1 / 0 (also true / false, yes / no, on / off)
    "browser_decode": "SAM_BROWSER_DECODE",  # 1 / 0
    "ort_url": "SAM_ORT_URL",
}
BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _parse(variable: str, kind: type, text: str) -> Any:
    """One variable's text as the field's type: bool, int, float, str, or a JSON object for a mapping."""
    if kind is bool:
        if text.lower() not in BOOLEANS:
            raise ValueError(f"{variable} must be 1 or 0 (true or false), got {text[:40]!r}")
        return BOOLEANS[text.lower()]
    try:
        if kind in (int, float, str):
            return kind(text)
        value = json.loads(text)
    except ValueError:
        wanted = {int: "an integer", float: "a number"}.get(kind, "a JSON object")
        raise ValueError(f"{variable} must be {wanted}, got {text[:40]!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{variable} must be a JSON object, got {text[:40]!r}")
    return value


def model_problem(name: str) -> str | None:
    """Why `name` cannot be a model (not a known name, random:NAME, local path or Hub repo id); None if it can.

    Only the form is checked: whether a Hub repo exists is known once the app asks for it.
    """
    from ..weights import WeightsError, random_config_name, resolve

    if Path(name).expanduser().exists():
        return None
    try:
        random_config_name(name.removeprefix("random:")) if name.startswith("random:") else resolve(name)
    except WeightsError as e:
        return str(e)
    return None


def _check_generator_args(args: Mapping[str, Any]) -> None:
    import inspect

    from ..automatic import SamAutomaticMaskGenerator

    allowed = set(inspect.signature(SamAutomaticMaskGenerator).parameters) - {"model", "output_mode", "point_grids"}
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise ValueError(f"{ENV['everything']} has unknown keys {unknown}; allowed: {', '.join(sorted(allowed))}")
