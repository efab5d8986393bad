"""Triton kernels of unet_fast, installed as ``unet_fast.triton_kernels``.

One module per kernel family, each holding the ``@triton.jit`` kernel, its launcher and a plain
torch reference. Nothing here is imported by ``import unet_fast`` unless CUDA inference needs it.
"""
