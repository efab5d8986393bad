"""Where the CPU backend's peak memory goes: a breakdown of the paper tile (or any case) measured
the way benchmarks/run.py measures a row's peak (unet_fast.benchmark.memory.MemoryProbe: resident
set growth over the RSS before the model was built, the high-water mark reset right before the
measured call).

    python benchmarks/cpu_memory.py [--model paper|same] [--dtype fp32|bf16] [--threads 2]

Prints, in MB (2**20 bytes):

* ``module``: the model's own parameters (tensor bytes) and the RSS growth building it;
* ``first call``: the high-water mark of the first call (which measures the plan) and the RSS
  it leaves behind, both over the same base;
* ``packed``: the bytes of every packed form the backend holds after planning beyond the
  module's own weights, per tactic, and the 2x2 up-convolutions and head;
* ``measured call``: what the benchmark reports (``peak_mem_mb``), the part of it already
  resident when the call starts, and the call's own growth (activations and workspace);
* ``plan``: the tactic of each 3x3 layer.

Run each precision in its own process (the default) so that heap left by one does not hide the
other's growth; memory figures do not depend on the load of a shared machine, times do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from unet_fast.backends import cpu_onednn  # noqa: E402
from unet_fast.benchmark.cases import make_inputs, reference_model  # noqa: E402
from unet_fast.benchmark.memory import MemoryProbe, _status_kb  # noqa: E402
from unet_fast.benchmark.rows import build_module, cpu_rows, make_call  # noqa: E402
from unet_fast.config import UNetConfig  # noqa: E402

MB = 2**20


def _bytes(obj: object) -> int:
    """Bytes of the tensors in a packed form (a tuple of tensors or a dataclass of them)."""
    items = obj if isinstance(obj, (tuple, list)) else vars(obj).values()
    # oneDNN's prepacked weights are opaque tensors (no storage): count their logical size
    return sum(t.numel() * t.element_size() if t.is_mkldnn else t.untyped_storage().nbytes()
               for t in items if isinstance(t, torch.Tensor))


def packed_bytes(packed: cpu_onednn.PackedUNet) -> dict[str, float]:
    """MB of the backend's packed weights, by tactic, plus up-convolutions and head."""
    out: dict[str, float] = {}
    for layer in packed.planner.layers:
        for tactic, form in layer._forms.items():
            # a direct form that is the module's own weight adds only its bias
            size = layer.form_bytes(tactic) if layer.shares_module_weight else _bytes(form)
            out[tactic] = out.get(tactic, 0.0) + size / MB
        if layer.folded is not None:
            out["folded"] = out.get("folded", 0.0) + _bytes(layer.folded) / MB
    ups = [u for u, _, _ in packed.layers.decoder if u is not None]
    out["upconv"] = sum(_bytes(u) for u in ups) / MB
    out["head"] = _bytes(packed.layers.head) / MB
    return out


def _rss_mb(base_kb: int, key: str = "VmRSS") -> float:
    return (_status_kb(key) - base_kb) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["paper", "same"], default="paper")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config = UNetConfig() if args.model == "paper" else UNetConfig(padding="same")
    size = 572 if args.model == "paper" else 512
    spec = next(r for r in cpu_rows() if r.name == f"unet_fast-{args.dtype}")
    state = {k: v.detach().clone() for k, v in reference_model(config, args.seed).state_dict().items()}
    x = make_inputs(type("C", (), {"config": config, "size": size})(), 1, 1, args.seed)[0]

    with torch.device("meta"):  # its one-time imports (~150 MB) fall on the benchmark's first row
        reference_model(config, args.seed)
    probe = MemoryProbe("cpu")
    probe.start()
    base = probe.base
    module = build_module(spec, config, state, "cpu")
    params = sum(t.nbytes for t in module.parameters()) / MB
    print(f"module: parameters {params:.1f} MB, RSS growth {_rss_mb(base):.1f} MB")
    call = make_call(spec, module, "cpu", None)

    probe.arm()
    call(x)
    print(f"first call (plan): high-water {_rss_mb(base, 'VmHWM'):.1f} MB, "
          f"RSS after {_rss_mb(base):.1f} MB")
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    packed = module.weight_cache.get(module, ("cpu", dtype), lambda: None)
    parts = packed_bytes(packed)
    print("packed: " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
          + f" MB; total {sum(parts.values()):.1f} MB")

    probe.arm()
    resident = _rss_mb(base)
    out = call(x)
    peak = probe.peak_mb()
    print(f"measured call (the benchmark's peak_mem_mb): {peak:.1f} MB = resident at its start "
          f"{resident:.1f} + the call's growth {peak - resident:.1f} MB")
    del out
    plan = next(iter(packed.planner.plans.values()), None)
    print("plan: " + (" ".join(plan) if plan else "none (UNET_FAST_CPU_CONV forced)"))


if __name__ == "__main__":
    main()
