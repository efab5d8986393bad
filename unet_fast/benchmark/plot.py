"""The PNG: latency (median with the p20-p80 range) and throughput of every row, one pair of
panels per (case, batch)."""

from __future__ import annotations

from pathlib import Path

from .runtimes import RUNTIMES


def write_plot(result: dict, path: Path) -> None:
    """Draw the plot; raises ImportError when matplotlib is not installed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple, list[dict]] = {}
    for r in result["rows"]:
        if r["status"] == "ok":
            groups.setdefault((r["case"], r["batch"]), []).append(r)
    n = max(len(groups), 1)
    height = sum(0.35 * len(rs) + 1.2 for rs in groups.values()) or 2.0
    fig, axes = plt.subplots(n, 2, figsize=(13, max(height, 2.5)), squeeze=False,
                             gridspec_kw={"height_ratios": [len(rs) + 2 for rs in
                                                            groups.values()] or [1]})
    for ((case, batch), rows), (ax_t, ax_p) in zip(groups.items(), axes, strict=False):
        names = [r["row"] for r in rows]
        med = [r["median_ms"] for r in rows]
        err = [[r["median_ms"] - r["p20_ms"] for r in rows],
               [r["p80_ms"] - r["median_ms"] for r in rows]]
        # unet_fast orange, the other runtimes (OpenVINO, ONNX Runtime) blue, PyTorch gray
        colors = ["tab:orange" if r["impl"].startswith("unet_fast") else
                  "tab:blue" if r["impl"] in RUNTIMES else "tab:gray" for r in rows]
        ax_t.barh(names, med, xerr=err, color=colors, capsize=2)
        ax_t.invert_yaxis()
        ax_t.set_xlabel("latency, ms (median, p20-p80)")
        ax_t.set_title(f"{case}, batch {batch}", loc="left", fontsize=10)
        ax_p.barh(names, [r["images_per_s"] for r in rows], color=colors)
        ax_p.invert_yaxis()
        ax_p.tick_params(labelleft=False)
        ax_p.set_xlabel("throughput, images/s")
    if not groups:
        axes[0][0].text(0.5, 0.5, "no successful rows", ha="center")
    env = result["environment"]
    fig.suptitle(f"unet_fast benchmark: {env['device_name']} (torch {env['torch']}, "
                 f"{env['date'][:10]})", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
