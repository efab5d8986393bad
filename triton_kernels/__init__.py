"""Triton kernels of unet_fast, installed as ``unet_fast.triton_kernels``.

One module per kernel family, each holding the ``@triton.jit`` kernel, its launcher and a plain
torch reference:

* :mod:`.conv3x3`: 3x3 conv + bias + ReLU as an implicit GEMM over NHWC, with a dual-source K
  (crop + concat never materialised) and optional max-pool / 1x1-head epilogues;
* :mod:`.upconv`: 2x2 stride-2 up-convolution as one GEMM with a scattered store;
* :mod:`.crop_concat`: standalone fused crop + concat;
* :mod:`.pool_upsample`: standalone 2x2 max-pool and 2x bilinear up-sampling.

The ``torch.ops.unet_fast.*`` registrations are in :mod:`unet_fast.ops.fused`; the model backend
in :mod:`unet_fast.backends.cuda_triton`. Nothing here is imported by ``import unet_fast``.
Under ``TRITON_INTERPRET=1`` (read at import) the launchers pick one small tile config.
"""
