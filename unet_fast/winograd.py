"""Winograd F(m x m, 3x3) convolutions on the CPU: weight packing and the op's Python face.

The kernel is ``torch.ops.unet_fast.winograd_conv3x3`` (csrc/cpu/winograd_kernel.h: input
transform, per-point GEMMs and output transform with bias + ReLU, fused per cache-sized chunk of
tiles). This module transforms the weights once, ``U = G g G^T`` in float64 (so the packed
weights are the exact rounding of the true transform), and lays them out for the kernel's GEMM:
``[points][blocks of 32 output channels][input channels padded to 16][32]`` in float32, or with
pairs of input channels interleaved (``[..][K/2][32][2]``) in bfloat16, the operand layout of both
AVX512-BF16 dot products and AMX tiles (``isa="amx"``, which ``"auto"`` picks for bf16 on CPUs
with AMX-BF16 when the padded input channels are a multiple of 32).

F(4x4, 3x3) multiplies 4x fewer times than a direct convolution and F(2x2, 3x3) 2.25x fewer, at
the cost of memory-bound transforms and some rounding error (F(4x4) uses the points 0, +-1, +-2);
the CPU backend picks per layer by measured time (see ``unet_fast.backends.cpu_onednn``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ._native import load_native

# G: the filter transform of F(m x m, 3x3) (Lavin & Gray 2016), interpolation points as the kernel's
# B^T and A^T in csrc/cpu/winograd_kernel.h.
_G = {
    4: [[1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1]],
    2: [[1, 0, 0],
        [1 / 2, 1 / 2, 1 / 2],
        [1 / 2, -1 / 2, 1 / 2],
        [0, 0, 1]],
}
TILES = (4, 2)


@dataclass(frozen=True)
class WinogradConv:
    """A 3x3 convolution packed for ``winograd_conv3x3`` (``m``: output tile size)."""

    weight: torch.Tensor
    bias: torch.Tensor  # float32, out_channels rounded up to 32
    out_channels: int
    in_channels: int
    padding: int
    m: int
    raw: bool = False  # weight holds the untransformed taps (see pack)


def pack(weight: torch.Tensor, bias: torch.Tensor, padding: int, m: int, dtype: torch.dtype,
         *, raw: bool = False) -> WinogradConv:
    """Transform and lay out a (C_out, C_in, 3, 3) weight for F(``m`` x ``m``, 3x3) in ``dtype``
    (float32 or bfloat16). The transform is computed in float64 and rounded once.

    ``raw=True`` (float32 only) lays out the untransformed taps instead, ``[blocks of 32 output
    channels][input channels padded to 16][9][32]``, and the kernel transforms them on the fly in
    float32: a form the size of the direct weights (F(4x4)'s transformed weights are 4x that)."""
    if m not in _G:
        raise ValueError(f"Winograd tile m must be one of {sorted(_G)}, got {m}")
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"Winograd packs float32 or bfloat16 weights, got {dtype}")
    if raw and dtype != torch.float32:
        raise ValueError(f"raw (on-the-fly) Winograd weights are float32 only, got {dtype}")
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"Winograd needs a 3x3 weight (C_out, C_in, 3, 3), got {tuple(weight.shape)}")
    cout, cin = weight.shape[:2]
    kp, ncob = -(-cin // 16) * 16, -(-cout // 32)
    b = torch.zeros(ncob * 32, dtype=torch.float32)
    b[:cout] = bias.detach().to(torch.float32).cpu()
    if raw:  # the (C_out, C_in, 3, 3) taps as they are: no copy of a contiguous float32 weight
        taps = weight.detach().to(device="cpu", dtype=torch.float32).contiguous()
        return WinogradConv(taps, b, int(cout), int(cin), int(padding), m, raw=True)
    g = torch.tensor(_G[m], dtype=torch.float64)
    points = (m + 2) ** 2
    shape = (points, ncob, kp // 2, 32, 2) if dtype == torch.bfloat16 else (points, ncob, kp, 32)
    packed = torch.zeros(shape, dtype=dtype)
    with torch.no_grad():
        w = weight.detach().cpu()
        # one block of 32 output channels at a time: the float64 transform of a whole
        # 1024-channel layer would be ~300 MB, several times over, while the layer is packed
        for cob in range(ncob):
            o0, o1 = cob * 32, min(cob * 32 + 32, cout)
            u = g @ w[o0:o1].double() @ g.T  # (o, i, a, b) = G g G^T
            block = u.new_zeros(points, kp, 32)
            block[:, :cin, :o1 - o0] = u.permute(2, 3, 1, 0).reshape(points, cin, o1 - o0)
            if dtype == torch.bfloat16:  # pairs of input channels interleaved: [K/2][32][2]
                block = block.reshape(points, kp // 2, 2, 32).transpose(-1, -2)
            packed[:, cob] = block
    return WinogradConv(packed, b, int(cout), int(cin), int(padding), m)


def conv3x3(x: torch.Tensor, conv: WinogradConv, relu: bool, *, skip: torch.Tensor | None = None,
            same: bool = False, isa: str = "auto") -> torch.Tensor:
    """``relu(conv(x) + bias)`` with Winograd; with ``skip``, the input is the reference's
    ``join_skip(skip, x, same)`` (skip's channels first), read from both tensors without a copy.

    Returns an NHWC (channels_last) tensor in ``x``'s dtype.
    """
    load_native()
    op = torch.ops.unet_fast.winograd_conv3x3
    if skip is None:
        return op(x, None, [0, 0, 0, 0], list(x.shape[-2:]), conv.weight, conv.bias,
                  conv.in_channels, conv.out_channels, conv.padding, conv.m, relu, isa)
    dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
    if same:  # up is zero-padded to the skip's size (bottom/right get the odd pixel)
        size, offsets = list(skip.shape[-2:]), [0, 0, -(dh // 2), -(dw // 2)]
    else:  # skip is center-cropped to up's size
        size, offsets = list(x.shape[-2:]), [dh // 2, dw // 2, 0, 0]
    return op(skip, x, offsets, size, conv.weight, conv.bias, conv.in_channels, conv.out_channels,
              conv.padding, conv.m, relu, isa)


@functools.cache
def isa_supported(isa: str, dtype: torch.dtype = torch.float32) -> bool:
    """Whether ``isa`` ("amx", "avx512" or "portable") can run ``dtype`` on this CPU and build
    ("amx": bfloat16 only, AVX-512 transforms with AMX tile GEMMs)."""
    conv = pack(torch.zeros(1, 32, 3, 3), torch.zeros(1), 0, 2, dtype)
    try:
        conv3x3(torch.zeros(1, 32, 3, 3, dtype=dtype), conv, False, isa=isa)
    except RuntimeError:
        return False
    return True
