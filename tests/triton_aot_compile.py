"""Compile every Triton kernel for an NVIDIA target without a GPU (ahead of time, no launch).

Run as a script in a process where TRITON_INTERPRET is unset; exits non-zero on the first kernel
that fails to compile. This catches what the interpreter cannot: type/layout errors of the real
compiler, shared-memory overflows of the chosen tile shapes.
"""

from __future__ import annotations

import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from unet_fast.triton_kernels import conv3x3, crop_concat, pool_upsample, upconv


def signature(fn, dtype: str, constexprs: dict) -> dict[str, str]:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*" + dtype
        elif name.startswith("scale"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def compile_one(fn, dtype: str, constexprs: dict, target: GPUTarget, **options) -> int:
    src = ASTSource(fn, signature(fn, dtype, constexprs), constexprs)
    return triton.compile(src, target=target, options=options).metadata.shared


def main(arch: int) -> None:
    target = GPUTarget("cuda", arch, 32)
    # (dtype, precision, pool, head, dual source): each epilogue and each dtype at least once
    for dtype, precision, pool, head, x2 in [
        ("fp16", "ieee", True, False, False),
        ("fp32", "tf32", False, True, False),
        ("bf16", "ieee", False, False, True),
        ("fp32", "ieee", True, False, True),
    ]:
        c = {"PAD": 0, "HAS_X2": x2, "HAS_BIAS": True, "RELU": True, "POOL": pool, "HEAD": head,
             "PRECISION": precision, "BLOCK_N": 64 if head else 128, "BLOCK_CLS": 16,
             "UPCAST": False}
        for cfg in conv3x3._GPU_CONFIGS[:1]:
            shared = compile_one(conv3x3.conv3x3_kernel, dtype, {**c, **cfg.kwargs}, target,
                                 num_warps=cfg.num_warps, num_stages=cfg.num_stages)
            print(f"conv3x3 {dtype} {precision} pool={pool} head={head} x2={x2} "
                  f"{cfg.kwargs}: {shared} B shared")
    compile_one(upconv.upconv2x2_kernel, "bf16",
                {"HAS_BIAS": True, "PRECISION": "ieee", "UPCAST": False, "BLOCK_M": 128,
                 "BLOCK_N": 128, "BLOCK_K": 32}, target, num_warps=8, num_stages=3)
    for fn in (crop_concat.crop_concat_kernel, pool_upsample.maxpool2x2_kernel,
               pool_upsample.upsample_bilinear2x_kernel):
        compile_one(fn, "fp16", {"BLOCK": 1024}, target)
    print("all kernels compiled")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 90)
