"""unet_fast: fast, seamless U-Net inference with the weights of a plain PyTorch model.

Importing this package never touches a GPU; backends are chosen per call. Imported before
torch, it asks torch's CPU allocator for transparent huge pages (see ``unet_fast._huge_pages``).
"""

from __future__ import annotations

# _huge_pages first (isort keeps it first): torch reads THP_MEM_ALLOC_ENABLE at its first allocation
from . import _huge_pages, reference, sizes  # noqa: F401
from .backends.cpu_onednn import CpuOneDNNBackend
from .backends.cuda_triton import CudaTritonBackend
from .checkpoint import CheckpointError, load, save
from .config import UNetConfig
from .dispatch import register_backend, select_backend
from .flops import forward_flops
from .milesial import from_milesial
from .model import UNet
from .tiling import segment

__version__ = "0.1.0"

register_backend("cpu", CpuOneDNNBackend())
# Lazy: Triton is imported on the first CUDA forward, never at import time.
register_backend("cuda", CudaTritonBackend())

__all__ = [
    "CheckpointError",
    "UNet",
    "UNetConfig",
    "__version__",
    "forward_flops",
    "from_milesial",
    "load",
    "reference",
    "register_backend",
    "save",
    "segment",
    "select_backend",
    "sizes",
]
