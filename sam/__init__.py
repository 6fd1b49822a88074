"""Segment Anything (SAM ViT-B/L/H, MobileSAM, SlimSAM) in compact PyTorch."""

from .build import CONFIGS, SamConfig, TinyViTConfig, ViTConfig, build_sam
from .predictor import ImageEmbedding, SamPredictor
from .weights import KNOWN_MODELS, WeightsError, load_model  # noqa: F401

__all__ = ["CONFIGS", "ImageEmbedding", "SamConfig", "SamPredictor", "TinyViTConfig", "ViTConfig", "build_sam"]
