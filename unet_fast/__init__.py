"""unet_fast: fast, seamless U-Net inference with the weights of a plain PyTorch model.

Importing this package never touches a GPU; backends are chosen per call.
"""

from __future__ import annotations

from . import reference, sizes
from .backends.cpu_onednn import CpuOneDNNBackend
from .backends.cuda_triton import CudaTritonBackend
from .config import UNetConfig
from .dispatch import register_backend, select_backend
from .flops import forward_flops
from .model import UNet

__version__ = "0.1.0"

register_backend("cpu", CpuOneDNNBackend())
# Lazy: Triton is imported on the first CUDA forward, never at import time.
register_backend("cuda", CudaTritonBackend())

__all__ = [
    "UNet",
    "UNetConfig",
    "forward_flops",
    "reference",
    "register_backend",
    "select_backend",
    "sizes",
    "__version__",
]
