"""Same-padded tiling against one whole-image pass: unet_fast.segment vs MONAI's sliding window.

For each image/tile size: a random same-padded U-Net (base 8, depth 4, BatchNorm with random
running statistics, eval mode, 3 -> 2 channels) on a smooth random image; both tilers use the
same tile size, overlap 0.25 and Gaussian weights (``monai.inferers.sliding_window_inference``,
``mode="gaussian"``). Reported: mean and max |logit difference| to one pass over the whole image,
and the share of pixels whose argmax label agrees with it::

    python benchmarks/samepad_vs_monai.py [--json benchmarks/results/samepad_vs_monai.json]
"""

from __future__ import annotations

import argparse
import json
import platform

import torch
import torch.nn.functional as F

import unet_fast as uf

CASES = ((700, 900, 256), (700, 900, 512), (600, 1000, 192), (1024, 768, 320))


def same_net(seed: int) -> torch.nn.Module:
    """Random same-padded BatchNorm U-Net, eval mode, with non-trivial running statistics."""
    torch.manual_seed(seed)
    net = uf.reference.UNet(in_channels=3, num_classes=2, base_channels=8, depth=4,
                            padding="same", norm="batch")
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return net.eval()


def smooth_image(h: int, w: int, seed: int) -> torch.Tensor:
    """(1, 3, h, w) values in about [0, 1], smooth over ~16 px."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 16 + 2, w // 16 + 2, generator=g)
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)


def compare(h: int, w: int, tile: int, seed: int = 0) -> dict:
    """One row of the table."""
    from monai.inferers import sliding_window_inference

    net, image = same_net(seed), smooth_image(h, w, seed + 1)
    with torch.no_grad():
        whole = net(image)
        peer = sliding_window_inference(image, (tile, tile), 4, net, overlap=0.25,
                                        mode="gaussian")
    ours = uf.segment(net, image, tile_size=tile, overlap=0.25, blend="gaussian")
    labels = whole.argmax(1)
    row = {"image": f"{h}x{w}", "tile": tile}
    for name, y in (("unet_fast", ours), ("monai", peer)):
        diff = (y - whole).abs()
        row[name] = {"mean_abs": diff.mean().item(), "max_abs": diff.max().item(),
                     "labels_agree": (y.argmax(1) == labels).float().mean().item()}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"{'image':>10} {'tile':>5} | {'unet_fast mean':>14} {'max':>7} {'labels':>8} | "
          f"{'MONAI mean':>10} {'max':>7} {'labels':>8} | mean ratio")
    rows = []
    for h, w, tile in CASES:
        r = compare(h, w, tile)
        rows.append(r)
        a, b = r["unet_fast"], r["monai"]
        print(f"{r['image']:>10} {tile:5d} | {a['mean_abs']:14.4f} {a['max_abs']:7.3f} "
              f"{a['labels_agree']:8.2%} | {b['mean_abs']:10.4f} {b['max_abs']:7.3f} "
              f"{b['labels_agree']:8.2%} | {a['mean_abs'] / b['mean_abs']:.3f}", flush=True)
    if args.json:
        import monai

        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "monai": monai.__version__,
                       "machine": platform.machine(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
