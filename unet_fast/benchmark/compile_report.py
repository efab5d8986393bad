"""What the Triton compiler makes of every kernel the GPU forward launches, for an NVIDIA target,
without a GPU: per layer and per tile configuration (every autotuning candidate), the registers,
spills, shared memory, and the machine instructions that matter on Hopper (``HGMMA`` = wgmma
tensor-core ops, ``LDGSTS`` = asynchronous global->shared copies of a software pipeline,
``UTMALDG`` = TMA loads, ``LDL``/``STL`` = local-memory traffic, 16-byte ``LDG``/``STG``).

Kernels are compiled through the launchers the ops use (``unet_fast.ops.fused.LAUNCHES``) and the
JIT's own argument specialisation (alignment, divisibility by 16, unit strides), on CPU tensors of
the real shapes, with Triton's driver pointed at a target that only names the architecture:
nothing is launched, so no GPU is needed. This is METHOD.md's "read what costs no device time".
Run it in a process without ``TRITON_INTERPRET=1`` (the launchers pick interpreter tiles then).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .layers import Layer, TensorSpec

# Hopper's largest dynamic shared memory per block (227 KiB).
MAX_SHARED_SM90 = 232448
_TRACKED = ("HGMMA", "HMMA", "LDGSTS", "UTMALDG", "LDL", "STL", "LDSM", "FFMA", "BAR")


@dataclass
class CompiledKernel:
    """One compiled kernel variant and what its machine code holds."""

    layer: str
    kernel: str
    config: dict
    shared: int
    registers: int | None
    local_bytes: int | None  # stack frame + spills: 0 when nothing went to local memory
    sass: Counter = field(default_factory=Counter)
    wide_loads: int = 0  # LDG.E.128 / LDGSTS.*.128: 16-byte global reads
    wide_stores: int = 0  # STG.E.128

    def to_json(self) -> dict:
        return {"layer": self.layer, "kernel": self.kernel, "config": self.config,
                "shared": self.shared, "registers": self.registers,
                "local_bytes": self.local_bytes, "sass": dict(self.sass),
                "wide_loads": self.wide_loads, "wide_stores": self.wide_stores}


def _tool(name: str) -> str | None:
    import triton

    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return bundled if os.path.exists(bundled) else shutil.which(name)


@contextlib.contextmanager
def cuda_target(arch: int = 90) -> Iterator[None]:
    """Point Triton's active driver at a compile-only CUDA target of ``arch`` for the block."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver

    from ..triton_kernels._common import INTERPRET

    if INTERPRET:
        raise RuntimeError("the compile report needs a process without TRITON_INTERPRET=1")

    class _TargetOnly:
        def get_current_target(self):
            return GPUTarget("cuda", arch, 32)

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_active_torch_device(self):
            return torch.device("cpu")

    saved = driver._active
    driver.set_active(_TargetOnly())
    try:
        yield
    finally:
        driver._active = saved


class _CompileOnly:
    """Stands in for a kernel in a launcher (``kernel[grid](...)``): compiles every candidate
    configuration of an autotuned kernel, or the launcher's one, and launches nothing."""

    def __init__(self, kernel, sink: list, all_configs: bool = True) -> None:
        self.configs = getattr(kernel, "configs", None)
        self.prune = getattr(kernel, "early_config_prune", None)
        self.all_configs = all_configs
        # an Autotuner wraps the JITFunction as .fn (a JITFunction's own .fn is the Python def)
        self.fn = kernel.fn if self.configs is not None else kernel
        self.sink = sink

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            configs = self.configs
            if configs is not None and self.prune is not None:  # what the autotuner would try
                # positional arguments only, as the autotuner passes them
                named = dict(zip(self.fn.arg_names, args, strict=False))
                configs = self.prune(configs, named, **kwargs)
            if configs is not None and not self.all_configs:
                configs = configs[:1]
            for cfg in configs or [None]:
                meta = {} if cfg is None else {**cfg.kwargs, "num_warps": cfg.num_warps,
                                               "num_stages": cfg.num_stages}
                compiled = self.fn.warmup(*args, grid=grid, **kwargs, **meta)
                shown = {k: v for k, v in {**kwargs, **meta}.items()
                         if k.startswith("BLOCK") or k in ("num_warps", "num_stages")
                         or (k == "FLAT_K" and v)}
                self.sink.append((self.fn.__name__, shown, compiled))

        return launch


def _inspect(cubin: bytes) -> tuple[int | None, int | None, Counter, int, int]:
    """(registers, local bytes, opcode counts, 16-byte loads, 16-byte stores) of a cubin."""
    tool = _tool("cuobjdump")
    if tool is None:
        return None, None, Counter(), 0, 0
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        res = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True).stdout
        sass = subprocess.run([tool, "--dump-sass", path], capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+)", res)
    stack = re.search(r"STACK:(\d+)", res)
    local = re.search(r"LOCAL:(\d+)", res)
    ops = re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass, re.M)
    counts = Counter(op.split(".")[0] for op in ops if op.split(".")[0] in _TRACKED)
    wide_loads = sum(1 for op in ops if op.startswith(("LDG.", "LDGSTS.")) and ".128" in op)
    wide_stores = sum(1 for op in ops if op.startswith("STG.") and ".128" in op)
    local_bytes = (int(stack.group(1)) + int(local.group(1))) if stack and local else None
    return (int(regs.group(1)) if regs else None), local_bytes, counts, wide_loads, wide_stores


def compile_layers(layers: list[Layer], arch: int = 90,
                   all_configs: bool = True) -> list[CompiledKernel]:
    """Compile the kernels of ``layers`` for ``sm_<arch>`` and inspect each variant
    (``all_configs``: every autotuning candidate; else the tile a launch uses without tuning,
    :func:`unet_fast.triton_kernels.tuning.default_config`)."""
    from ..ops.fused import LAUNCHES

    out: list[CompiledKernel] = []
    seen: dict[str, CompiledKernel] = {}
    from ..triton_kernels import tuning

    every = tuning.all_candidates() if all_configs else contextlib.nullcontext()
    with cuda_target(arch), every:
        for layer in layers:
            sink: list = []
            args = tuple(a.empty("cpu") if isinstance(a, TensorSpec) else a for a in layer.args)
            with torch.no_grad():
                LAUNCHES[layer.op](
                    *args, wrap=lambda k, sink=sink: _CompileOnly(k, sink, all_configs))
            for name, config, compiled in sink:
                key = compiled.hash
                if key not in seen:
                    regs, local, counts, wl, ws = _inspect(compiled.asm["cubin"])
                    seen[key] = CompiledKernel("", name, config, compiled.metadata.shared, regs,
                                               local, counts, wl, ws)
                k = seen[key]
                out.append(CompiledKernel(layer.name, name, config, k.shared, k.registers,
                                          k.local_bytes, k.sass, k.wide_loads, k.wide_stores))
    return out


def format_report(kernels: list[CompiledKernel]) -> str:
    """One line per (layer, configuration)."""
    head = (f"{'layer':18s} {'kernel':26s} {'config':34s} {'regs':>5s} {'local':>5s} "
            f"{'smem KB':>7s} {'HGMMA':>5s} {'HMMA':>5s} {'LDGSTS':>6s} {'16B ld':>6s} "
            f"{'16B st':>6s}")
    lines = [head, "-" * len(head)]
    for k in kernels:
        cfg = " ".join(f"{key.removeprefix('BLOCK_').lower()}{v}" for key, v in k.config.items()
                       if key.startswith("BLOCK") or key == "FLAT_K")
        cfg += f" w{k.config.get('num_warps', '-')} s{k.config.get('num_stages', '-')}"
        lines.append(
            f"{k.layer:18s} {k.kernel:26s} {cfg:34s} {k.registers or '-':>5} "
            f"{k.local_bytes if k.local_bytes is not None else '-':>5} {k.shared / 1024:7.1f} "
            f"{k.sass['HGMMA']:5d} {k.sass['HMMA']:5d} {k.sass['LDGSTS']:6d} {k.wide_loads:6d} "
            f"{k.wide_stores:6d}")
    return "\n".join(lines)


# Kernels whose inner product should run on the tensor cores (wgmma) and through a software
# pipeline (asynchronous copies) for half precision and TF32.
_GEMM_KERNELS = ("conv3x3_kernel", "upconv2x2_kernel")


def problems(kernels: list[CompiledKernel], tensor_cores: bool) -> list[str]:
    """What in the compiled code would make a kernel slow or fail on Hopper, one line each:
    local memory (spills), shared memory over the limit, and (``tensor_cores``: the dtype is
    bf16/fp16/TF32) GEMM kernels without wgmma or without asynchronous copies."""
    out = []
    for k in kernels:
        where = f"{k.layer} {k.kernel} {k.config}"
        if k.local_bytes:
            out.append(f"{where}: {k.local_bytes} bytes of local memory (spills)")
        if k.shared > MAX_SHARED_SM90:
            out.append(f"{where}: {k.shared} bytes of shared memory > {MAX_SHARED_SM90}")
        if tensor_cores and k.kernel in _GEMM_KERNELS:
            if not k.sass["HGMMA"]:
                out.append(f"{where}: no HGMMA (wgmma) in the machine code")
            # a one-step K (FLAT_K: few input channels) has no loop to pipeline
            looped = not k.config.get("FLAT_K")
            if looped and k.config.get("num_stages", 1) > 1 and not k.sass["LDGSTS"]:
                out.append(f"{where}: no LDGSTS (asynchronous copy): loads are not pipelined")
    return out
