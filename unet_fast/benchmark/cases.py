"""What is measured: the benchmark cases (network, input size, kind), their random inputs, their
FLOPs counted from the network, and the float64 reference output every row is compared with."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import reference, sizes
from ..config import UNetConfig
from ..flops import forward_flops
from .options import BenchOptions


@dataclass
class Case:
    """One network at one input size.

    ``kind`` is ``"tile"`` (one forward pass over an input of ``size``) or ``"image"`` (a whole
    ``size`` x ``size`` image segmented with ``unet_fast.segment``).
    """

    key: str
    model: str
    config: UNetConfig
    kind: str
    size: int
    out_size: int
    flops_per_image: int
    flops_note: str
    pass_size: int = 0  # the one-pass input size of an image case (mirror-extended image)
    reference_seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "key": self.key, "model": self.model, "config": self.config.to_dict(),
            "kind": self.kind, "size": self.size, "out_size": self.out_size,
            "flops_per_image": self.flops_per_image, "flops_note": self.flops_note,
            "reference_seconds": self.reference_seconds, "notes": self.notes,
        }


def network_config(name: str, *, in_channels: int | None = None, classes: int = 2,
                   base_channels: int = 64, depth: int = 4,
                   upsample: str = "transpose") -> UNetConfig:
    """The benchmark's networks: ``"paper"`` (valid padding, 1 input channel) or ``"same"`` (same
    padding, 3 input channels: the popular PyTorch U-Net's shape)."""
    return UNetConfig(in_channels=in_channels or (1 if name == "paper" else 3),
                      num_classes=classes, base_channels=base_channels, depth=depth,
                      padding="valid" if name == "paper" else "same", upsample=upsample)


def network_size(name: str, depth: int, quick: bool = False) -> int:
    """The default input size of a network's single-tile case (572 / 512 at depth 4)."""
    if name == "paper":
        if quick:
            return sizes.min_input_size(depth, "valid")
        return 572 if depth == 4 else sizes.input_size_for_output(388, depth)
    return 64 if quick else 512


def model_config(name: str, opts: BenchOptions) -> UNetConfig:
    """:func:`network_config` with a run's options."""
    return network_config(name, in_channels=opts.in_channels, classes=opts.classes,
                          base_channels=opts.base_channels, depth=opts.depth)


def build_cases(opts: BenchOptions) -> list[Case]:
    """The cases of a run, in order; raises ValueError naming valid sizes for a bad ``--sizes``."""
    cases: list[Case] = []
    for name in opts.models:
        cfg = model_config(name, opts)
        for n in opts.sizes or [network_size(name, opts.depth, opts.quick)]:
            sizes.check_input_size(n, cfg.depth, cfg.padding)
            out = sizes.output_size(n, cfg.depth, cfg.padding)
            cases.append(Case(
                key=f"{name}-{n}", model=name, config=cfg, kind="tile", size=n, out_size=out,
                flops_per_image=forward_flops(cfg, n, n),
                flops_note=f"one forward pass at {n}x{n}, counted from the network's layers",
            ))
        if cfg.padding == "valid":
            for n in opts.image_sizes:
                pass_size = sizes.input_size_for_output(n, cfg.depth, cfg.padding)
                cases.append(Case(
                    key=f"{name}-image-{n}", model=name, config=cfg, kind="image", size=n,
                    out_size=n, pass_size=pass_size,
                    flops_per_image=forward_flops(cfg, pass_size, pass_size),
                    flops_note=(f"one pass over the {n}x{n} image mirror-extended to "
                                f"{pass_size}x{pass_size} (the least work overlap-tile can do; "
                                "overlapping tiles add more)"),
                ))
    return cases


def make_inputs(case: Case, batch: int, n_sets: int, seed: int) -> list[torch.Tensor]:
    """``n_sets`` random N(0, 1) NCHW float32 batches on the CPU. Every image has its own seed, so
    image 0 of set 0 is the same for every batch size and one float64 reference serves them all."""
    shape = (case.config.in_channels, case.size, case.size)
    images = [torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + i))
              for i in range(batch * n_sets)]
    return [torch.stack(images[i * batch:(i + 1) * batch]) for i in range(n_sets)]


def reference_model(config: UNetConfig, seed: int) -> reference.UNet:
    """The reference network with seeded He-initialised weights (float32, CPU, eval mode)."""
    torch.manual_seed(seed)
    return reference.UNet(**config.to_dict()).eval()


def mirror_extend(image: torch.Tensor, case: Case) -> torch.Tensor:
    """Reflect-pad a (C, H, W) image the way numpy does (pads may exceed the image) to the
    one-pass input size of an image case, with the network's margin on the top/left."""
    m = sizes.margin(case.config.depth, case.config.padding)
    after = case.pass_size - case.size - m
    padded = np.pad(image.numpy(), ((0, 0), (m, after), (m, after)), mode="reflect")
    return torch.from_numpy(padded)


def float64_reference(model: reference.UNet, case: Case, image: torch.Tensor) -> torch.Tensor:
    """Logits (classes, H_out, W_out) of the reference network in float64 on the CPU for one
    (C, H, W) image; for an image case, one pass over the mirror-extended image, cropped."""
    ref64 = copy.deepcopy(model).double().eval()
    x = image.double()
    if case.kind == "image":
        x = mirror_extend(x, case)
    with torch.inference_mode():
        out = ref64(x.unsqueeze(0))[0]
    return out[:, :case.out_size, :case.out_size].contiguous()


def compare(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """Relative L2 error, max abs error and argmax label agreement of one (classes, H, W) output
    against the float64 reference; non-finite outputs are flagged, never averaged away."""
    out = out.detach().to("cpu", torch.float64)
    if out.shape != ref.shape:
        return {"rel_l2_err": None, "max_abs_err": None, "label_agreement": None,
                "error_note": f"output shape {tuple(out.shape)} != reference {tuple(ref.shape)}"}
    finite = bool(torch.isfinite(out).all())
    result: dict = {"nonfinite_output": not finite}
    if not finite:
        result.update(rel_l2_err=None, max_abs_err=None)
    else:
        diff = out - ref
        result["rel_l2_err"] = float(diff.norm() / ref.norm().clamp_min(1e-300))
        result["max_abs_err"] = float(diff.abs().max())
    result["label_agreement"] = float((out.argmax(0) == ref.argmax(0)).double().mean())
    return result
