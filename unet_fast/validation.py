"""Input checks shared by every model and backend: one clear error per kind of bad input."""

from __future__ import annotations

import torch

from .config import UNetConfig
from .sizes import check_input_size


def check_input(x: object, config: UNetConfig, param: torch.Tensor | None,
                check_finite: bool = False) -> None:
    """Raise a one-line TypeError/ValueError if ``x`` cannot go through a U-Net with ``config``.

    Args:
        x: the would-be ``(N, C, H, W)`` input.
        config: the model's hyper-parameters.
        param: any parameter of the model, for the device and dtype checks (None skips them).
        check_finite: also reject NaN/Inf values (reads the whole input once).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        hint = "; add the batch dimension with x.unsqueeze(0)" if x.dim() == 3 else ""
        raise ValueError(
            f"expected a 4-D input (N, C, H, W), got {x.dim()}-D of shape {tuple(x.shape)}{hint}"
        )
    if x.shape[1] != config.in_channels:
        raise ValueError(
            f"expected {config.in_channels} input channel(s) (in_channels), got {x.shape[1]} "
            f"in input of shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(
            f"expected a floating-point input (float32, float16, bfloat16 or float64), got {x.dtype}"
        )
    if param is not None:
        if x.device != param.device:
            raise ValueError(
                f"input is on {x.device} but the model is on {param.device}; "
                f"move one with .to({str(param.device)!r})"
            )
        autocast = torch.is_autocast_enabled(x.device.type) if x.device.type != "meta" else False
        if x.dtype != param.dtype and not autocast:
            raise TypeError(
                f"input dtype {x.dtype} does not match the model's {param.dtype}; convert the input "
                f"with x.to({param.dtype}), the model with .to({x.dtype}), or use torch.autocast"
            )
    for axis, n in (("height", x.shape[2]), ("width", x.shape[3])):
        check_input_size(n, config.depth, config.padding, axis=axis)
    if check_finite and x.device.type != "meta" and x.numel():
        _check_finite(x)


_NOT_FINITE = ("input contains NaN or Inf values; clean it (e.g. torch.nan_to_num) or set "
               "model.check_finite = False to let them propagate")


def _check_finite(x: torch.Tensor) -> None:
    if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
        # ONNX has no assert operator, and TorchScript's tracer drops ops whose result is unused
        return
    if torch.compiler.is_compiling():
        # A traced graph cannot branch on data; the assert stays in the compiled or exported
        # program and raises RuntimeError there (it reads the input once, like the eager check).
        # On a GPU it would be a device-side assert, which leaves the process's CUDA context
        # unusable: a compiled GPU program does not check.
        if not x.is_cuda:
            torch._assert_async(torch.isfinite(x).all(), _NOT_FINITE)
    elif not _capturing(x) and not torch.isfinite(x).all():
        raise ValueError(_NOT_FINITE)


def _capturing(x: torch.Tensor) -> bool:
    # Reading the check's result back to the host is illegal inside CUDA-graph capture; a
    # captured forward replays on whatever the static input holds later, so a check here would
    # only ever see the capture-time values anyway.
    return x.is_cuda and torch.cuda.is_current_stream_capturing()
