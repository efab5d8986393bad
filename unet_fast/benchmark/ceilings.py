"""The device's own ceilings, measured in the same run as the rows: large matrix products per
precision (the arithmetic roof) and a large copy (the memory roof, bytes read + written). Random
operands, never zeros. Each ceiling is the rate of the fastest timed call (median kept beside).
On the CPU the matmul ceiling is the better of torch.mm and the same GEMM through oneDNN, and a
second arithmetic ceiling per precision is the best rate of large 3x3 convolutions shaped like
the U-Net's middle layers (oneDNN through torch, channels_last): what a real 3x3 convolution
reaches, which is the CPU rows' % of peak (a GEMM's rate is not, on most CPUs)."""

from __future__ import annotations

import sys

import torch

from .flags import backend_flags
from .timing import time_cpu, time_cuda

# which measured matmul rate a row of each precision is compared against
PEAK_FOR_PRECISION = {"fp32": "matmul_fp32", "tf32": "matmul_tf32", "bf16": "matmul_bf16",
                      "fp16": "matmul_fp16"}
# the 3x3-convolution ceiling of each precision (CPU): a row's % of peak is against it when the
# document has it, else against the matmul ceiling above
CONV_PEAK_FOR_PRECISION = {"fp32": "conv3x3_fp32", "bf16": "conv3x3_bf16"}
# (channels in = out, height = width) of the 3x3 convolutions the ceiling tries: U-Net layers
# (paper network: 128 channels at ~280, 256 at ~136, 512 at ~64), cut to 4.8 GFLOP each
CONV_SHAPES = ((128, 128), (256, 64), (512, 32))
CONV_SHAPES_QUICK = ((64, 32),)


def peak_key(precision: str, ceilings: dict) -> str:
    """The ceiling a row of ``precision`` is compared with: the 3x3 convolution's where it was
    measured, else the matmul's."""
    conv = CONV_PEAK_FOR_PRECISION.get(precision)
    if conv is not None and (ceilings.get(conv) or {}).get("tflops"):
        return conv
    return PEAK_FOR_PRECISION[precision]


def _matmul(device: str, dtype: torch.dtype, n: int, tf32: bool, repeats: int | None) -> dict:
    gen = torch.Generator(device=device).manual_seed(1)
    a = [torch.randn(n, n, device=device, dtype=dtype, generator=gen) for _ in range(2)]
    b = [torch.randn(n, n, device=device, dtype=dtype, generator=gen) for _ in range(2)]
    pairs = list(zip(a, b, strict=True))
    with backend_flags({"cuda.matmul.allow_tf32": tf32}):
        if device == "cuda":
            stats = time_cuda(lambda p: torch.mm(*p), pairs, repeats, None, target_ms=300)
        else:
            stats = time_cpu(lambda p: torch.mm(*p), pairs, repeats or 5, 1)
    flop = 2 * n**3
    # a ceiling is what the device can do: the fastest call, the median beside it
    return {"tflops": flop / (stats["min_ms"] * 1e-3) / 1e12,
            "tflops_median": flop / (stats["median_ms"] * 1e-3) / 1e12,
            "shape": [n, n, n], "min_ms": stats["min_ms"], "median_ms": stats["median_ms"],
            "repeats": stats["repeats"]}


def _gemm_onednn(dtype: torch.dtype, n: int, repeats: int | None) -> dict:
    """The same GEMM shape class through oneDNN (a 1x1 convolution, channels_last): on CPUs where
    the BLAS torch.mm uses is slow (MKL on AMD), this is the rate the convolutions really see."""
    gen = torch.Generator().manual_seed(2)
    pixels = 64 * 64
    cl = torch.channels_last
    xs = [torch.randn(1, n, 64, 64, generator=gen).to(dtype).contiguous(memory_format=cl)
          for _ in range(2)]
    w = torch.randn(n, n, 1, 1, generator=gen).to(dtype).contiguous(memory_format=cl)

    def conv(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.nn.functional.conv2d(x, w)

    stats = time_cpu(conv, xs, repeats or 5, 1)
    flop = 2 * pixels * n * n
    return {"tflops": flop / (stats["min_ms"] * 1e-3) / 1e12,
            "tflops_median": flop / (stats["median_ms"] * 1e-3) / 1e12,
            "shape": [pixels, n, n], "min_ms": stats["min_ms"], "median_ms": stats["median_ms"],
            "repeats": stats["repeats"]}


def _conv3x3(dtype: torch.dtype, shapes: tuple[tuple[int, int], ...], repeats: int | None
             ) -> dict:
    """The best rate over ``shapes`` of a batch-1, stride-1, same-padded 3x3 convolution with
    bias through ``torch.nn.functional.conv2d`` (oneDNN), channels_last, in ``dtype``; every
    shape's rates are kept in ``shapes``."""
    gen = torch.Generator().manual_seed(3)
    cl = torch.channels_last
    tried = []
    for channels, size in shapes:
        xs = [torch.randn(1, channels, size, size, generator=gen).to(dtype)
              .contiguous(memory_format=cl) for _ in range(2)]
        w = (torch.randn(channels, channels, 3, 3, generator=gen) / (3 * channels**0.5)).to(
            dtype).contiguous(memory_format=cl)
        b = torch.randn(channels, generator=gen).to(dtype)

        def conv(x: torch.Tensor, w=w, b=b) -> torch.Tensor:
            with torch.inference_mode():
                return torch.nn.functional.conv2d(x, w, b, padding=1)

        stats = time_cpu(conv, xs, repeats or 5, 1)
        flop = 2 * 9 * channels * channels * size * size
        tried.append({"tflops": flop / (stats["min_ms"] * 1e-3) / 1e12,
                      "tflops_median": flop / (stats["median_ms"] * 1e-3) / 1e12,
                      "channels": channels, "size": size, "flop": flop,
                      "min_ms": stats["min_ms"], "median_ms": stats["median_ms"],
                      "repeats": stats["repeats"]})
    best = max(tried, key=lambda t: t["tflops"])
    return dict(best, via="torch conv2d 3x3 (oneDNN), channels_last, batch 1, padding 1, bias",
                shapes=tried)


def _copy(device: str, nbytes: int, repeats: int | None) -> dict:
    n = nbytes // 4
    src = [torch.randn(n, device=device) for _ in range(2)]
    dst = torch.empty(n, device=device)
    if device == "cuda":
        stats = time_cuda(dst.copy_, src, repeats, None, target_ms=300)
    else:
        stats = time_cpu(dst.copy_, src, repeats or 5, 1)
    moved = 2 * n * 4  # read once + write once
    return {"gbps": moved / (stats["min_ms"] * 1e-3) / 1e9,
            "gbps_median": moved / (stats["median_ms"] * 1e-3) / 1e9, "bytes_moved": moved,
            "min_ms": stats["min_ms"], "median_ms": stats["median_ms"],
            "repeats": stats["repeats"]}


def measure_ceilings(device: str, quick: bool = False) -> dict:
    """Matmul TFLOP/s per precision and copy GB/s on ``device``; failures are recorded."""
    if device == "cuda":
        n, nbytes = 8192, 1 << 30
        plan = [("matmul_bf16", torch.bfloat16, False), ("matmul_fp16", torch.float16, False),
                ("matmul_tf32", torch.float32, True), ("matmul_fp32", torch.float32, False)]
    else:
        n, nbytes = (512, 32 << 20) if quick else (2048, 256 << 20)
        # a CPU has no TF32: its fp32 rows compare against the fp32 product
        plan = [("matmul_fp32", torch.float32, False), ("matmul_bf16", torch.bfloat16, False)]
    out: dict = {}
    for key, dtype, tf32 in plan:
        try:
            out[key] = dict(_matmul(device, dtype, n, tf32, 2 if quick else None), via="torch.mm")
            if device == "cpu" and torch.backends.mkldnn.is_available():
                gemm = _gemm_onednn(dtype, n, 2 if quick else None)
                out[key]["torch_mm_tflops"] = out[key]["tflops"]
                out[key]["onednn_gemm_tflops"] = gemm["tflops"]
                if gemm["tflops"] > out[key]["tflops"]:
                    out[key] = dict(gemm, via="oneDNN 1x1 convolution (GEMM)",
                                    torch_mm_tflops=out[key]["tflops"],
                                    onednn_gemm_tflops=gemm["tflops"])
        except Exception as e:  # a dtype the device lacks: say so, keep going
            out[key] = {"tflops": None, "error": f"{type(e).__name__}: {e}"}
        print(f"[ceiling] {key}: " + (f"{out[key]['tflops']:.3f} TFLOP/s" if out[key].get(
            "tflops") else out[key].get("error", "")), file=sys.stderr, flush=True)
    if device == "cpu":
        out["matmul_tf32"] = dict(out["matmul_fp32"], note="CPU: tf32 rows use the fp32 product")
        shapes = CONV_SHAPES_QUICK if quick else CONV_SHAPES
        for key, dtype in (("conv3x3_fp32", torch.float32), ("conv3x3_bf16", torch.bfloat16)):
            try:
                out[key] = _conv3x3(dtype, shapes, 2 if quick else None)
            except Exception as e:
                out[key] = {"tflops": None, "error": f"{type(e).__name__}: {e}"}
            print(f"[ceiling] {key}: " + (f"{out[key]['tflops']:.3f} TFLOP/s" if out[key].get(
                "tflops") else out[key].get("error", "")), file=sys.stderr, flush=True)
    try:
        out["copy"] = _copy(device, nbytes, 2 if quick else None)
        print(f"[ceiling] copy: {out['copy']['gbps']:.1f} GB/s", file=sys.stderr, flush=True)
    except Exception as e:
        out["copy"] = {"gbps": None, "error": f"{type(e).__name__}: {e}"}
    return out


def best_ceilings(*runs: dict) -> dict:
    """Per ceiling, the best of several measurements (the start and end of a run, or the runs a
    merge combines), all kept in ``measured``; an entry that is itself a best of several
    contributes its own ``measured`` list."""
    out = {}
    for key in sorted(set().union(*runs)):
        rate = "gbps" if key == "copy" else "tflops"
        entries = [run.get(key, {}) for run in runs]
        best = max(entries, key=lambda m: m.get(rate) or 0.0)
        measured = [v for m in entries for v in m.get("measured", [m.get(rate)])]
        out[key] = dict(best, measured=measured)
    return out
