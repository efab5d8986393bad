"""MONAI: :class:`UNetFastInferer`, a ``monai.inferers.Inferer`` that runs this project's
overlap-tile :func:`unet_fast.segment`, for pipelines that take an ``Inferer`` (MONAI's
``SupervisedEvaluator``, bundles, ``Invertd`` workflows).

Importing this module imports MONAI (``pip install monai``); ``import unet_fast`` does not.

MONAI's own ``sliding_window_inference(inputs, roi_size, sw_batch_size, predictor=fast)`` also
takes a :class:`unet_fast.UNet`, but only a same-padding one (MONAI assumes each window's output
covers the window; a valid-padding network's output is smaller). Call it under
``torch.inference_mode()`` so the fast backend runs, with ``roi_size`` a multiple of
``2**depth``. For valid-padding networks, and for seamless tiling of same-padding ones, use this
inferer.
"""

from __future__ import annotations

from typing import Any

import torch

try:
    from monai.inferers import Inferer
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"unet_fast.integrations.monai needs MONAI ({e}); install it with "
                      "`pip install monai`") from e

from ..config import UNetConfig
from ..tiling import segment

_SEGMENT_OPTIONS = ("tile_size", "batch_size", "memory_budget", "output", "tta", "mirror_mode",
                    "blend", "overlap", "progress")


class UNetFastInferer(Inferer):
    """Overlap-tile inference with :func:`unet_fast.segment` behind MONAI's ``Inferer`` API.

    ``inferer(inputs, network)`` returns ``segment(network, inputs, **options)``: for a
    valid-padding network the exact result of one pass over the mirror-extended image (the
    paper's overlap-tile), for a same-padding one a blended or margin-discarding tiling (see
    :func:`unet_fast.segment`). ``inputs`` is ``(N, C, H, W)`` or ``(C, H, W)``; a MONAI
    ``MetaTensor`` comes back as a ``MetaTensor`` with the input's metadata (the output has the
    input's spatial size).

    Args:
        **options: keyword arguments of :func:`unet_fast.segment` (``tile_size``,
            ``batch_size``, ``memory_budget``, ``output``, ``tta``, ``mirror_mode``, ``blend``,
            ``overlap``, ``progress``).
    """

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(_SEGMENT_OPTIONS))
        if unknown:
            raise TypeError(f"unknown UNetFastInferer option(s) {', '.join(unknown)}; valid: "
                            f"{', '.join(_SEGMENT_OPTIONS)}")
        super().__init__()
        self.options = options

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any
                 ) -> torch.Tensor:
        """Segment ``inputs`` with ``network`` (a :class:`unet_fast.UNet` or reference UNet)."""
        if args or kwargs:
            raise TypeError("UNetFastInferer passes no extra arguments to the network (a U-Net "
                            "takes only the image); drop network_kwargs / extra args")
        if not isinstance(getattr(network, "config", None), UNetConfig):
            raise TypeError("UNetFastInferer needs a unet_fast.UNet or unet_fast.reference.UNet "
                            f"network, got {type(network).__name__}; for other networks use "
                            "monai.inferers.SlidingWindowInferer")
        plain = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
        out = segment(network, plain, **self.options)
        if plain is not inputs:  # a MetaTensor: keep its metadata, as MONAI's inferers do
            from monai.data import MetaTensor

            out = MetaTensor(out, meta=inputs.meta,
                             applied_operations=list(inputs.applied_operations))
        return out
