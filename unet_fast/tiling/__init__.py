"""Overlap-tile segmentation: tile geometry, memory estimate and :func:`segment`."""

from .memory import default_memory_budget, estimate_tile_bytes
from .overlap_tile import gaussian_weight, segment

__all__ = ["default_memory_budget", "estimate_tile_bytes", "gaussian_weight", "segment"]
