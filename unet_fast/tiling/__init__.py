"""Overlap-tile segmentation: window geometry, blend weights, memory estimate and :func:`segment`."""

from .memory import default_memory_budget, estimate_tile_bytes
from .overlap_tile import segment
from .weights import gaussian_weight

__all__ = ["default_memory_budget", "estimate_tile_bytes", "gaussian_weight", "segment"]
