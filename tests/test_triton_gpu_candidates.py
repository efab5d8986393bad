"""Every autotuning candidate of the 3x3 convolution, launched pinned on a GPU (issue 15).

The interpreter runs one small tile; the compile report proves every candidate compiles for
sm_90; only a GPU shows whether each one's wgmma code computes the right numbers (8 warps,
16-deep K steps, 256-wide N in bf16 and TF32 were never run). Per epilogue (plain, pool, the
two-source decoder conv, head) and per candidate family (64-, 128-, 256-wide N), on odd shapes
(odd H and W, channel counts not multiples of 16, batch 2), each candidate is compared with
float64: within 2x cuDNN's own error in the same precision, with a floor a little above one
rounding of the output (a miscompiled tile is off by O(1), not by rounding).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from .triton_helpers import INTERPRET, rel_l2

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(INTERPRET, reason="compiled Triton kernels, not the interpreter"),
]

PRECISIONS = {"bf16": (torch.bfloat16, False, 4e-3), "tf32": (torch.float32, True, 1e-3)}
# (epilogue, C_in (per source), C_out): C_out picks the candidate family (64 / +narrow / +big)
# (3 input channels: the one-step K path of the first conv)
CASES = [("plain", 3, 56), ("plain", 40, 56), ("plain", 24, 136), ("plain", 40, 264),
         ("pool", 8, 56), ("pool", 24, 136), ("cat", 24, 72), ("head", 40, 72), ("head", 24, 200)]
H, W = 21, 27


def candidate_cases() -> list[tuple]:
    """(precision, epilogue, C_in, C_out, config) of every candidate launch (also the AOT cache's
    workload: scripts/aot_cache.py)."""
    from unet_fast.triton_kernels.conv3x3 import gpu_configs

    return [(precision, epilogue, c_in, c_out, cfg)
            for precision, (dtype, tf32, _) in PRECISIONS.items()
            for epilogue, c_in, c_out in CASES
            for cfg in gpu_configs(dtype, tf32, c_out, epilogue == "head")]


def _candidates():
    counts: dict = {}
    for precision, epilogue, c_in, c_out, cfg in candidate_cases():
        i = counts[precision, epilogue, c_in, c_out] = counts.get(
            (precision, epilogue, c_in, c_out), -1) + 1
        yield pytest.param(precision, epilogue, c_in, c_out, cfg,
                           id=f"{precision}-{epilogue}-{c_in}-{c_out}-cand{i}")


def case_tensors(precision: str, epilogue: str, c_in: int, c_out: int, device: str,
                 gen: torch.Generator | None = None) -> dict:
    """The layer's tensors as the backend feeds the kernels (TF32: weights rounded as packed),
    random from ``gen`` (empty when None), plus the op's name and arguments."""
    from unet_fast.triton_kernels._common import round_to_tf32
    from unet_fast.triton_kernels.conv3x3 import pack_conv3x3_weight, pack_head_weight

    dtype, tf32, _ = PRECISIONS[precision]

    def rnd(*shape, scale=1.0):
        if gen is None:
            return torch.empty(*shape, device=device)
        return torch.randn(*shape, device=device, generator=gen) * scale

    def low(t):
        t = t.to(dtype)
        return round_to_tf32(t) if tf32 else t

    c_total = 2 * c_in if epilogue == "cat" else c_in
    xs = ([rnd(2, c_in, H + 4, W + 6), rnd(2, c_in, H, W)] if epilogue == "cat"
          else [rnd(2, c_in, H, W)])
    xl = [t.to(dtype).contiguous(memory_format=torch.channels_last) for t in xs]
    wl = low(rnd(c_out, c_total, 3, 3, scale=(2 / (9 * c_total)) ** 0.5))
    bl = rnd(c_out, scale=0.1).to(dtype)
    hwl, hbl = low(rnd(3, c_out, 1, 1, scale=(1 / c_out) ** 0.5)), rnd(3, scale=0.1).to(dtype)
    padding = 1 if epilogue in ("plain", "head") else 0
    wp = pack_conv3x3_weight(wl)
    op, args = {
        "plain": ("conv3x3", (xl[0], wp, bl, padding, True, tf32)),
        "pool": ("conv3x3_pool", (xl[0], wp, bl, padding, tf32)),
        "cat": ("conv3x3_cat", (xl[0], xl[-1], wp, bl, padding, True, tf32)),
        "head": ("conv3x3_head", (xl[0], wp, bl, pack_head_weight(hwl), hbl, padding, tf32)),
    }[epilogue]
    return {"xs": xl, "w": wl, "b": bl, "hw": hwl, "hb": hbl, "padding": padding, "op": op,
            "args": args}


def case_args(precision: str, epilogue: str, c_in: int, c_out: int, device: str) -> tuple:
    """(op name, arguments) of one candidate launch on empty tensors."""
    t = case_tensors(precision, epilogue, c_in, c_out, device)
    return t["op"], t["args"]


def _conv(x, w, b, padding):
    return F.relu(F.conv2d(x, w, b, padding=padding))


def _reference(epilogue, xs, w, b, hw, hb, padding):
    """The layer in plain torch on the given tensors (any dtype)."""
    if epilogue == "cat":
        skip, up = xs
        dh, dw = skip.shape[2] - up.shape[2], skip.shape[3] - up.shape[3]
        x = torch.cat([skip[..., dh // 2:dh // 2 + up.shape[2], dw // 2:dw // 2 + up.shape[3]],
                       up], 1)
    else:
        (x,) = xs
    y = _conv(x, w, b, padding)
    if epilogue == "pool":
        return y, F.max_pool2d(y, 2)
    if epilogue == "head":
        return F.conv2d(y, hw, hb)
    return y


@pytest.mark.parametrize("precision,epilogue,c_in,c_out,cfg", list(_candidates()))
def test_candidate_pinned(precision, epilogue, c_in, c_out, cfg):
    from unet_fast.triton_kernels.tuning import pinned

    from unet_fast.ops import fused

    dtype, tf32, floor = PRECISIONS[precision]
    gen = torch.Generator(device="cuda").manual_seed(1000 * c_in + c_out + len(epilogue))
    t = case_tensors(precision, epilogue, c_in, c_out, "cuda", gen)
    with pinned(cfg), torch.no_grad():
        got = getattr(fused, t["op"])(*t["args"])
    torch.cuda.synchronize()
    xl, wl, bl, hwl, hbl, padding = t["xs"], t["w"], t["b"], t["hw"], t["hb"], t["padding"]
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        with torch.no_grad():
            ref64 = _reference(epilogue, [x.double() for x in xl], wl.double(), bl.double(),
                               hwl.double(), hbl.double(), padding)
            ref_torch = _reference(epilogue, xl, wl, bl, hwl, hbl, padding)
    finally:
        torch.backends.cudnn.allow_tf32 = old
    got, ref64, ref_torch = (r if isinstance(r, tuple) else (r,) for r in (got, ref64, ref_torch))
    for g, r, p in zip(got, ref64, ref_torch, strict=True):
        assert g.shape == r.shape and g.dtype == dtype
        err, torch_err = rel_l2(g, r), rel_l2(p, r)
        assert err <= max(2 * torch_err, floor), (err, torch_err)
