"""``unet-fast info``: versions, devices and which fast paths are active."""

from __future__ import annotations

import argparse
import platform

import torch


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show versions, devices and active backends",
                       description="Show versions, devices and which fast paths are active.")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import unet_fast
    from unet_fast._native import native_available
    from unet_fast.dispatch import registered_backends

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    has_gpu = torch.cuda.is_available()
    cuda_backends = ", ".join(registered_backends("cuda")) or "reference only"
    if not has_gpu:
        cuda_backends += " (inactive: no CUDA device)"
    rows = [
        ("unet_fast", unet_fast.__version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("triton", triton_version),
        ("cuda", torch.version.cuda or "none (CPU build of torch)"),
        ("gpu", torch.cuda.get_device_name(0) if has_gpu else "none"),
        ("native extension (unet_fast._C)", "loaded" if native_available() else "MISSING"),
        ("cpu backends", ", ".join(registered_backends("cpu")) or "reference only"),
        ("cuda backends", cuda_backends),
        ("image I/O", _image_io_versions()),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _image_io_versions() -> str:
    """Versions of the readers ``unet-fast segment`` uses (PNG via Pillow, TIFF via tifffile)."""
    parts = []
    for module, label in (("PIL", "Pillow"), ("tifffile", "tifffile")):
        try:
            parts.append(f"{label} {__import__(module).__version__}")
        except ImportError:
            parts.append(f"{label} MISSING")
    return ", ".join(parts)
