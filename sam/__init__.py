"""Segment Anything (SAM ViT-B/L/H, MobileSAM, SlimSAM) in compact PyTorch."""

from .annotate import auto_annotate  # noqa: F401
from .api import SAM, SAMPredictor  # noqa: F401
from .build import CONFIGS, SamConfig, TinyViTConfig, ViTConfig, build_sam
from .export import ExportObject, build_zip  # noqa: F401
from .predictor import ImageEmbedding, SamPredictor
from .results import Results  # noqa: F401
from .weights import KNOWN_MODELS, WeightsError, load_model  # noqa: F401

__all__ = ["CONFIGS", "ImageEmbedding", "SamConfig", "SamPredictor", "TinyViTConfig", "ViTConfig", "build_sam"]
