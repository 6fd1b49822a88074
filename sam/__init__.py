"""Segment Anything (SAM ViT-B/L/H, MobileSAM, SlimSAM) in compact PyTorch."""

from .annotate import auto_annotate
from .api import SAM, SAMPredictor
from .automatic import SamAutomaticMaskGenerator
from .build import CONFIGS, SamConfig, TinyViTConfig, ViTConfig, build_sam
from .export import ExportObject, build_zip
from .predictor import ImageEmbedding, SamPredictor
from .results import Results
from .weights import KNOWN_MODELS, WeightsError, load_model

__all__ = [
    "CONFIGS",
    "KNOWN_MODELS",
    "SAM",
    "SAMPredictor",
    "ExportObject",
    "ImageEmbedding",
    "Results",
    "SamAutomaticMaskGenerator",
    "SamConfig",
    "SamPredictor",
    "TinyViTConfig",
    "ViTConfig",
    "WeightsError",
    "auto_annotate",
    "build_sam",
    "build_zip",
    "load_model",
]
