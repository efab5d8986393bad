"""``unet_fast.UNet``: the drop-in module that runs reference weights through fast backends."""

from __future__ import annotations

from typing import Any

import torch

from . import reference
from .dispatch import select_backend
from .sizes import output_size
from .validation import check_input
from .weight_cache import WeightCache


class UNet(reference.UNet):
    """Drop-in replacement for :class:`unet_fast.reference.UNet`.

    Same constructor, parameters and ``state_dict`` keys, so weights move freely between the two
    (``load_state_dict`` both ways, or :meth:`from_reference` to share them). When autograd is not
    recording it runs the fastest backend for the input's device (see :mod:`unet_fast.dispatch`);
    when it is, or when train-mode BatchNorm/dropout matter, it runs the reference ops, so it
    trains like the reference.

    Differences from the reference, all deliberate:

    * ``check_finite`` (default True): an input with NaN/Inf raises a ValueError instead of
      silently spreading NaN over the receptive field of every bad pixel (the fused kernels
      need not propagate NaN the way the reference does). Set it to False to skip the extra read
      of the input. Compiled and exported CPU programs keep it as ``torch._assert_async``
      (RuntimeError); ONNX models, ``torch.jit.trace`` and compiled GPU programs do not check
      (:mod:`unet_fast.tracing`).
    * Under ``torch.export``/``torch.onnx.export``/``torch.jit.trace`` it records the portable
      ATen graph (eval-mode BatchNorm folded), not the eager backends' prepacked weights; under
      ``torch.compile`` the device's traceable backend (see :mod:`unet_fast.tracing`).
    * An empty batch returns an empty output of the right shape without launching anything.
    """

    check_finite: bool = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.weight_cache = WeightCache()

    @classmethod
    def from_reference(cls, ref: reference.UNet) -> UNet:
        """A fast model sharing ``ref``'s parameter and buffer tensors (no copy).

        Later changes to ``ref``'s weights (an optimizer step, ``load_state_dict``) are seen by the
        fast model too.
        """
        with torch.device("meta"):
            fast = cls(**ref.config.to_dict())
        fast.load_state_dict(ref.state_dict(keep_vars=True), strict=True, assign=True)
        return fast.train(ref.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes, H_out, W_out)`` for an input ``(N, in_channels, H, W)``."""
        check_input(x, self.config, self.head.weight, check_finite=self.check_finite)
        if x.shape[0] == 0:
            h, w = (output_size(n, self.config.depth, self.config.padding) for n in x.shape[2:])
            dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(
                x.device.type) else self.head.weight.dtype
            return x.new_empty((0, self.config.num_classes, h, w), dtype=dtype)
        return select_backend(self, x).forward(self, x)

    def segment(self, image: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Overlap-tile segmentation of an image of any size: :func:`unet_fast.segment`."""
        from .tiling import segment  # tiling imports the model's package; keep import lazy

        return segment(self, image, **kwargs)

    def backend_name(self, x: torch.Tensor) -> str:
        """Name of the backend :meth:`forward` would use for ``x`` in the current context."""
        return select_backend(self, x).name

    def clear_weight_cache(self) -> None:
        """Drop packed weights; needed only after writing to a parameter through ``.data``."""
        self.weight_cache.clear()

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> UNet:
        # .to()/.half()/.cuda() make every packed copy useless; free them now, not on next call
        self.weight_cache.clear()
        return super()._apply(fn, *args, **kwargs)
