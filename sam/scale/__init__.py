"""Batch jobs over folders of images, in this process or on a Ray cluster (`engine="ray"`, `pip install .[scale]`).

`segment_everything` (here) and `sam.auto_annotate` take `engine="ray"`; `sam.scale.ray_engine` runs them
on Ray Data. Importing this package does not import ray.
"""

from .everything import segment_everything
from .files import SUMMARY_NAME, Summary, read_summary

__all__ = ["SUMMARY_NAME", "Summary", "read_summary", "segment_everything"]
