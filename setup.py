"""Builds unet_fast._C from csrc/ and installs triton_kernels/ as unet_fast.triton_kernels.

The CUDA sources in csrc/cuda are compiled only when torch is a CUDA build and a CUDA toolkit is
found (set UNET_FAST_FORCE_CPU=1 to skip them; set UNET_FAST_REQUIRE_CUDA=1 to make a build that
cannot compile them fail instead of quietly building the CPU-only extension). Install with
--no-build-isolation so the build uses the torch already installed instead of downloading another.
"""

import glob
import os
import sys

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def native_extension():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    why_not = [reason for reason, missing in (
        ("torch is not a CUDA build", torch.version.cuda is None),
        ("no CUDA toolkit found (set CUDA_HOME)", CUDA_HOME is None),
        ("UNET_FAST_FORCE_CPU=1", os.environ.get("UNET_FAST_FORCE_CPU") == "1"),
    ) if missing]
    with_cuda = bool(cuda_sources) and not why_not
    if not with_cuda and os.environ.get("UNET_FAST_REQUIRE_CUDA") == "1":
        raise RuntimeError("UNET_FAST_REQUIRE_CUDA=1 but the CUDA kernels cannot be built: "
                           + "; ".join(why_not or ["no sources in csrc/cuda"]))
    print(f"unet_fast: building the native extension {'with' if with_cuda else 'without'} CUDA"
          + (f" ({'; '.join(why_not)})" if why_not else ""), file=sys.stderr)
    # at::parallel_for is inline: without OpenMP in *this* build its loops run on one thread,
    # whatever torch.get_num_threads() says (the Winograd convolution and the tiling ops use it)
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    args = {"cxx": ["-O3", "-std=c++17", *openmp], "nvcc": ["-O3", "-std=c++17"]}
    if with_cuda:
        return CUDAExtension(
            "unet_fast._C", sources + cuda_sources, extra_compile_args=args,
            define_macros=[("UNET_FAST_WITH_CUDA", None)], include_dirs=[os.path.join(ROOT, "csrc")],
            extra_link_args=openmp,
        )
    return CppExtension(
        "unet_fast._C", sources, extra_compile_args={"cxx": args["cxx"]},
        include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=openmp,
    )


setup(
    packages=[*find_packages(include=["unet_fast", "unet_fast.*"]), "unet_fast.triton_kernels"],
    package_dir={"unet_fast.triton_kernels": "triton_kernels"},
    ext_modules=[native_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
