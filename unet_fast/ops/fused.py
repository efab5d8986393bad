"""The Triton kernels as ``torch.ops.unet_fast.*`` operators (``torch.library.triton_op``).

Every op takes and returns logical NCHW tensors (any strides; outputs are channels_last, i.e.
NHWC in memory, except the head's logits which are contiguous NCHW like a plain ``nn.Conv2d``).
Convolution weights are the packed GEMM layouts of :mod:`unet_fast.triton_kernels.conv3x3` and
:mod:`unet_fast.triton_kernels.upconv` (``pack_*`` functions there), already in the compute dtype.
``allow_tf32`` is explicit so a traced graph does not depend on global flags.

``triton_op`` registers each body as its own fake implementation too (under a fake mode
``wrap_triton`` launches nothing), so the ops trace under ``torch.compile``/``torch.export``;
the bodies only allocate outputs from shapes, which is exactly what a fake needs.

They live in the same ``unet_fast`` namespace as the native ops of ``csrc/unet_fast.cpp``
(``TORCH_LIBRARY(unet_fast, ...)``): ``triton_op`` defines through a ``FRAGMENT`` library, which
may coexist with the one ``TORCH_LIBRARY`` definition (tests/test_triton_ops.py checks both).
"""

from __future__ import annotations

import torch
from torch.library import triton_op, wrap_triton

from unet_fast import _device
from unet_fast.triton_kernels import conv3x3 as _conv
from unet_fast.triton_kernels import crop_concat as _cc
from unet_fast.triton_kernels import pool_upsample as _pu
from unet_fast.triton_kernels import upconv as _up
from unet_fast.triton_kernels._common import INTERPRET

_CL = torch.channels_last
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _empty_cl(like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=_CL)


def _check(name: str, t: torch.Tensor, like: torch.Tensor, ndim: int = 4) -> None:
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if t.dtype != like.dtype or t.device != like.device:
        raise TypeError(f"{name} is {t.dtype} on {t.device} but the input is {like.dtype} on "
                        f"{like.device}; convert it to match")


def _check_packed(x_channels: int, weight: torch.Tensor, bias: torch.Tensor | None,
                  x: torch.Tensor) -> None:
    # any strides: the kernel takes them (pack_conv3x3_weight's K-contiguous ones are the fast ones)
    if weight.dim() != 2 or weight.shape[0] != 9 * x_channels:
        raise ValueError(f"weight must be a packed [9 * C_in, C_out] = [{9 * x_channels}"
                         f", C_out] tensor (pack_conv3x3_weight), got {tuple(weight.shape)}")
    _check("weight", weight, x, ndim=2)
    if bias is not None:
        _check("bias", bias, x, ndim=1)
        if bias.shape[0] != weight.shape[1]:
            raise ValueError(f"bias must have C_out={weight.shape[1]} entries, got {bias.shape[0]}")


def _on_device_of(x: torch.Tensor):
    """Check that the kernels can run on ``x``'s device and make it the current one (Triton
    launches on the current device, not on the tensors')."""
    if x.device.type != "cuda" and not (INTERPRET and x.device.type == "cpu"):
        raise ValueError(f"the Triton kernels need CUDA tensors (or CPU tensors with "
                         f"TRITON_INTERPRET=1), got a tensor on {x.device}")
    return _device.device_guard(x.device)


def _out_hw(hw: tuple[int, int], padding: int) -> tuple[int, int]:
    if padding not in (0, 1):
        raise ValueError(f"padding must be 0 (valid) or 1 (same), got {padding}")
    h, w = (_conv.conv_output_size(s, padding) for s in hw)
    if h < 1 or w < 1:
        raise ValueError(f"input {tuple(hw)} is too small for a 3x3 conv with "
                         f"padding={padding}")
    return h, w


def _conv3x3_fake(x, weight, bias, padding, relu, allow_tf32):
    _check("x", x, x)
    _check_packed(x.shape[1], weight, bias, x)
    h, w = _out_hw(tuple(x.shape[2:]), padding)
    return _empty_cl(x, (x.shape[0], weight.shape[1], h, w))


def _launch_conv3x3(x, weight, bias, padding, relu, allow_tf32, *, wrap=wrap_triton):
    out = _conv3x3_fake(x, weight, bias, padding, relu, allow_tf32)
    _conv.conv3x3_launch(x, weight, bias, out, padding=padding, relu=relu,
                         allow_tf32=allow_tf32, wrap=wrap)
    return out


@triton_op("unet_fast::conv3x3", mutates_args=())
def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int,
            relu: bool, allow_tf32: bool) -> torch.Tensor:
    """``relu(conv2d(x, W, bias, padding))`` with a packed ``W`` (:func:`pack_conv3x3_weight`)."""
    with _on_device_of(x):
        return _launch_conv3x3(x, weight, bias, padding, relu, allow_tf32)


def _conv3x3_pool_fake(x, weight, bias, padding, allow_tf32):
    _check("x", x, x)
    _check_packed(x.shape[1], weight, bias, x)
    h, w = _out_hw(tuple(x.shape[2:]), padding)
    n, c_out = x.shape[0], weight.shape[1]
    return _empty_cl(x, (n, c_out, h, w)), _empty_cl(x, (n, c_out, h // 2, w // 2))


def _launch_conv3x3_pool(x, weight, bias, padding, allow_tf32, *, wrap=wrap_triton):
    out, pooled = _conv3x3_pool_fake(x, weight, bias, padding, allow_tf32)
    _conv.conv3x3_launch(x, weight, bias, out, padding=padding, pooled=pooled,
                         allow_tf32=allow_tf32, wrap=wrap)
    return out, pooled


@triton_op("unet_fast::conv3x3_pool", mutates_args=())
def conv3x3_pool(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int,
                 allow_tf32: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = relu(conv2d(x, W, bias, padding))`` and ``max_pool2d(y, 2)`` in one pass."""
    with _on_device_of(x):
        return _launch_conv3x3_pool(x, weight, bias, padding, allow_tf32)


def _conv3x3_cat_fake(skip, up, weight, bias, padding, relu, allow_tf32):
    _check("skip", skip, skip)
    _check("up", up, skip)
    if skip.shape[0] != up.shape[0] or skip.shape[2] < up.shape[2] or skip.shape[3] < up.shape[3]:
        raise ValueError(f"skip {tuple(skip.shape)} must have up's batch size and at least up's "
                         f"height and width; up is {tuple(up.shape)}")
    _check_packed(skip.shape[1] + up.shape[1], weight, bias, skip)
    in_hw, _, _ = _conv.join_offsets(tuple(skip.shape[2:]), tuple(up.shape[2:]), padding == 1)
    h, w = _out_hw(in_hw, padding)
    return _empty_cl(skip, (skip.shape[0], weight.shape[1], h, w))


def _launch_conv3x3_cat(skip, up, weight, bias, padding, relu, allow_tf32, *, wrap=wrap_triton):
    out = _conv3x3_cat_fake(skip, up, weight, bias, padding, relu, allow_tf32)
    in_hw, off_s, off_u = _conv.join_offsets(tuple(skip.shape[2:]), tuple(up.shape[2:]),
                                             padding == 1)
    _conv.conv3x3_launch(skip, weight, bias, out, padding=padding, relu=relu, x2=up,
                         in_hw=in_hw, offsets=(off_s, off_u), allow_tf32=allow_tf32,
                         wrap=wrap)
    return out


@triton_op("unet_fast::conv3x3_cat", mutates_args=())
def conv3x3_cat(skip: torch.Tensor, up: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None, padding: int, relu: bool,
                allow_tf32: bool) -> torch.Tensor:
    """``conv3x3(join_skip(skip, up, same=padding == 1), ...)`` without materialising the join:
    the skip is read center-cropped (valid) and ``up`` as if zero-padded to the skip (same)."""
    with _on_device_of(skip):
        return _launch_conv3x3_cat(skip, up, weight, bias, padding, relu, allow_tf32)


def _conv3x3_head_fake(x, weight, bias, head_weight, head_bias, padding, allow_tf32):
    _check("x", x, x)
    _check_packed(x.shape[1], weight, bias, x)
    _check("head_weight", head_weight, x, ndim=2)
    if head_weight.shape[0] != weight.shape[1] or not head_weight.is_contiguous():
        raise ValueError(f"head_weight must be contiguous [C_out={weight.shape[1]}, classes], "
                         f"got {tuple(head_weight.shape)}")
    if head_bias is not None:
        _check("head_bias", head_bias, x, ndim=1)
        if head_bias.shape[0] != head_weight.shape[1]:
            raise ValueError(f"head_bias must have {head_weight.shape[1]} entries, got "
                             f"{head_bias.shape[0]}")
    if weight.shape[1] > 256:
        raise ValueError(f"the fused head needs C_out <= 256, got {weight.shape[1]}")
    h, w = _out_hw(tuple(x.shape[2:]), padding)
    return x.new_empty((x.shape[0], head_weight.shape[1], h, w))


def _launch_conv3x3_head(x, weight, bias, head_weight, head_bias, padding, allow_tf32, *,
                         wrap=wrap_triton):
    out = _conv3x3_head_fake(x, weight, bias, head_weight, head_bias, padding, allow_tf32)
    _conv.conv3x3_launch(x, weight, bias, out, padding=padding, head_weight=head_weight,
                         head_bias=head_bias, allow_tf32=allow_tf32,
                         wrap=wrap)
    return out


@triton_op("unet_fast::conv3x3_head", mutates_args=())
def conv3x3_head(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 head_weight: torch.Tensor, head_bias: torch.Tensor | None, padding: int,
                 allow_tf32: bool) -> torch.Tensor:
    """``conv2d(relu(conv2d(x, W, bias, padding)), head)``: the last 3x3 conv + the 1x1 head.

    ``head_weight`` is ``[C_out, num_classes]`` (:func:`pack_head_weight`); C_out <= 256.
    Returns contiguous NCHW logits; the 3x3 output is never written to memory.
    """
    with _on_device_of(x):
        return _launch_conv3x3_head(x, weight, bias, head_weight, head_bias, padding, allow_tf32)


def _upconv2x2_fake(x, weight, bias, allow_tf32):
    _check("x", x, x)
    _check("weight", weight, x, ndim=2)
    if weight.shape[0] != x.shape[1] or weight.shape[1] % 4:
        raise ValueError(f"weight must be a packed [C_in={x.shape[1]}, 4 * C_out] "
                         f"tensor (pack_upconv_weight), got {tuple(weight.shape)}")
    c_out = weight.shape[1] // 4
    if bias is not None:
        _check("bias", bias, x, ndim=1)
        if bias.shape[0] != c_out:
            raise ValueError(f"bias must have C_out={c_out} entries, got {bias.shape[0]}")
    return _empty_cl(x, (x.shape[0], c_out, 2 * x.shape[2], 2 * x.shape[3]))


def _launch_upconv2x2(x, weight, bias, allow_tf32, *, wrap=wrap_triton):
    out = _upconv2x2_fake(x, weight, bias, allow_tf32)
    _up.upconv2x2_launch(x, weight, bias, out, allow_tf32=allow_tf32,
                         kernel=wrap(_up.upconv2x2_kernel))
    return out


@triton_op("unet_fast::upconv2x2", mutates_args=())
def upconv2x2(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              allow_tf32: bool) -> torch.Tensor:
    """``conv_transpose2d(x, W, bias, stride=2)`` for a 2x2 kernel, ``W`` packed
    ``[C_in, 4 * C_out]`` (:func:`pack_upconv_weight`)."""
    with _on_device_of(x):
        return _launch_upconv2x2(x, weight, bias, allow_tf32)


def _crop_concat_fake(skip, up, same):
    _check("skip", skip, skip)
    _check("up", up, skip)
    if skip.shape[0] != up.shape[0] or skip.shape[2] < up.shape[2] or skip.shape[3] < up.shape[3]:
        raise ValueError(f"skip {tuple(skip.shape)} must have up's batch size and at least up's "
                         f"height and width; up is {tuple(up.shape)}")
    hw, _, _ = _conv.join_offsets(tuple(skip.shape[2:]), tuple(up.shape[2:]), same)
    return _empty_cl(skip, (skip.shape[0], skip.shape[1] + up.shape[1], *hw))


def _launch_crop_concat(skip, up, same, *, wrap=wrap_triton):
    out = _crop_concat_fake(skip, up, same)
    _, off_s, off_u = _conv.join_offsets(tuple(skip.shape[2:]), tuple(up.shape[2:]), same)
    _cc.crop_concat_launch(skip, up, out, (off_s, off_u), kernel=wrap(_cc.crop_concat_kernel))
    return out


@triton_op("unet_fast::crop_concat", mutates_args=())
def crop_concat(skip: torch.Tensor, up: torch.Tensor, same: bool) -> torch.Tensor:
    """``join_skip(skip, up, same)``: ``cat([center-cropped skip, up])`` (valid) or
    ``cat([skip, zero-padded up])`` (same), in one pass."""
    with _on_device_of(skip):
        return _launch_crop_concat(skip, up, same)


def _maxpool2x2_fake(x):
    _check("x", x, x)
    return _empty_cl(x, (x.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2))


def _launch_maxpool2x2(x, *, wrap=wrap_triton):
    out = _maxpool2x2_fake(x)
    _pu.maxpool2x2_launch(x, out, kernel=wrap(_pu.maxpool2x2_kernel))
    return out


@triton_op("unet_fast::maxpool2x2", mutates_args=())
def maxpool2x2(x: torch.Tensor) -> torch.Tensor:
    """``max_pool2d(x, 2)`` (floor mode)."""
    with _on_device_of(x):
        return _launch_maxpool2x2(x)


def _upsample_bilinear2x_fake(x):
    _check("x", x, x)
    return _empty_cl(x, (x.shape[0], x.shape[1], 2 * x.shape[2], 2 * x.shape[3]))


def _launch_upsample_bilinear2x(x, *, wrap=wrap_triton):
    out = _upsample_bilinear2x_fake(x)
    _pu.upsample_bilinear2x_launch(x, out, kernel=wrap(_pu.upsample_bilinear2x_kernel))
    return out


@triton_op("unet_fast::upsample_bilinear2x", mutates_args=())
def upsample_bilinear2x(x: torch.Tensor) -> torch.Tensor:
    """``interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)``."""
    with _on_device_of(x):
        return _launch_upsample_bilinear2x(x)


# Each op's launch sequence by op name; ``wrap`` receives each Triton kernel before it is launched
# (``wrap_triton`` in the ops; the sm_90 compile report passes one that compiles and launches
# nothing: unet_fast.benchmark.compile_report).
LAUNCHES = {
    "conv3x3": _launch_conv3x3, "conv3x3_pool": _launch_conv3x3_pool,
    "conv3x3_cat": _launch_conv3x3_cat, "conv3x3_head": _launch_conv3x3_head,
    "upconv2x2": _launch_upconv2x2, "crop_concat": _launch_crop_concat,
    "maxpool2x2": _launch_maxpool2x2, "upsample_bilinear2x": _launch_upsample_bilinear2x,
}

# Explicit fakes (shape/dtype only): triton_op's default fake reruns the body, which would launch
# the kernel under TRITON_INTERPRET=1.
for _op, _fake in (
    (conv3x3, _conv3x3_fake), (conv3x3_pool, _conv3x3_pool_fake),
    (conv3x3_cat, _conv3x3_cat_fake), (conv3x3_head, _conv3x3_head_fake),
    (upconv2x2, _upconv2x2_fake), (crop_concat, _crop_concat_fake),
    (maxpool2x2, _maxpool2x2_fake), (upsample_bilinear2x, _upsample_bilinear2x_fake),
):
    _op.register_fake(_fake)

__all__ = ["conv3x3", "conv3x3_cat", "conv3x3_head", "conv3x3_pool", "crop_concat",
           "maxpool2x2", "upconv2x2", "upsample_bilinear2x"]
