"""Where and with what a run happened: device, driver, library versions (on the CPU also
OpenVINO, ONNX Runtime, onnx, onnxscript), git revision, date."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

import unet_fast

from . import runtimes


def _run(cmd: list[str], cwd: str | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else cpu_name()


def device_slug(device: str) -> str:
    """File-name form of the device: 'nvidia-h100-80gb-hbm3', 'cpu-amd-epyc-2t'."""
    slug = re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-") or device
    if device == "cpu":
        if not slug.startswith("cpu"):
            slug = f"cpu-{slug}"
        slug += f"-{torch.get_num_threads()}t"
    return slug


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    return value not in ("0", "false", "no", "n", "off")


def git_revision() -> dict:
    """The checkout unet_fast is imported from: commit and whether tracked files differ.

    A copy of the tree without ``.git`` (as the GPU machine receives it) has no revision of its
    own; the environment variables ``UNET_FAST_GIT_REVISION`` (and optionally
    ``UNET_FAST_GIT_DIRTY=1/0``) name it instead, and the record says so.
    """
    root = str(Path(unet_fast.__file__).resolve().parent.parent)
    rev = _run(["git", "rev-parse", "HEAD"], cwd=root)
    if rev is None:
        given = os.environ.get("UNET_FAST_GIT_REVISION", "").strip()
        if given:
            return {"revision": given, "dirty": _env_flag("UNET_FAST_GIT_DIRTY"),
                    "note": "from UNET_FAST_GIT_REVISION"}
        return {"revision": None, "dirty": None, "note": "not a git checkout"}
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root)
    return {"revision": rev, "dirty": bool(dirty)}


def environment(device: str) -> dict:
    """Device, driver and versions for the results JSON."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    env = {
        "device": device,
        "device_name": device_name(device),
        "slug": device_slug(device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host_cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "unet_fast": unet_fast.__version__,
        # torch's CPU allocator advises huge pages for big buffers (every row of the run alike)
        "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "git": git_revision(),
        "driver": None,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env["driver"] = _run(["nvidia-smi", "--query-gpu=driver_version",
                              "--format=csv,noheader", "-i", "0"])
        env["gpu"] = {"sm_count": props.multi_processor_count,
                      "memory_gb": round(props.total_memory / 1e9, 1),
                      "capability": f"{props.major}.{props.minor}"}
    else:
        env["mkldnn"] = torch.backends.mkldnn.is_available()
        env["mkldnn_bf16"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        # the runtimes the CPU rows compare with, and the ONNX export they load (None: absent)
        env["runtimes"] = runtimes.versions()
    return env
