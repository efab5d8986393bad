"""Output of a run: the table on stdout and the JSON document on disk."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TextIO

from .._atomic import atomic_path


def _clean(value):
    """JSON has no NaN/Inf: write them as null (the row's flags say why)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def result_paths(result: dict, out_dir: str, tag: str | None) -> tuple[Path, Path]:
    """``<out_dir>/<device-slug>[-tag].json`` and the matching ``.png``."""
    stem = result["environment"]["slug"] + (f"-{tag}" if tag else "")
    base = Path(out_dir)
    return base / f"{stem}.json", base / f"{stem}.png"


def write_json(result: dict, path: Path) -> None:
    """Write the document atomically (a temporary file in the same folder, then a rename): a
    kill part-way leaves the previous version, never a truncated file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_clean(result), indent=1, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _fmt(v, spec: str, missing: str = "-") -> str:
    return missing if v is None else format(v, spec)


def _runtime_lines(result: dict, case: str, batch: int) -> list[str]:
    """unet_fast against OpenVINO / ONNX Runtime in one (case, batch), per precision."""
    entry = next((s for s in result.get("summary", [])
                  if s["case"] == case and s["batch"] == batch), {})
    out = []
    for prec, cmp in entry.get("vs_runtimes", {}).items():
        parts = [f"{cmp[f'unet_fast_speedup_vs_{rt}']:.2f}x {rt} ({cmp[f'{rt}_ms']:.3f} ms)"
                 for rt in ("openvino", "onnxruntime") if f"{rt}_ms" in cmp]
        out.append(f"   {prec}: {cmp['unet_fast_row']} ({cmp['unet_fast_ms']:.3f} ms) is "
                   + ", ".join(parts) + " (>1: unet_fast faster)")
        for o in cmp.get("opt_in", []):
            parts = [f"{o[f'speedup_vs_{rt}']:.2f}x {rt}" for rt in ("openvino", "onnxruntime")
                     if f"speedup_vs_{rt}" in o]
            env = " ".join(f"{k}={v}" for k, v in o["env"].items())
            out.append(f"   {prec}, opt-in {env}: {o['row']} ({o['ms']:.3f} ms) is "
                       + ", ".join(parts))
    return out


def format_table(result: dict) -> str:
    """The results as a fixed-width text table, one block per (case, batch)."""
    cuda = result["environment"]["device"] == "cuda"
    rate_name, rate_scale = ("TFLOP/s", 1.0) if cuda else ("GFLOP/s", 1e3)
    head = ["row", "median ms", "p20-p80 ms", "img/s", rate_name, "% peak", "mem MB",
            "rel err", "labels %", "x eager", "backend / status"]
    lines: list[str] = []
    ceilings = result["ceilings"]
    peaks = ", ".join(
        f"{k.removeprefix('matmul_')} {v['tflops'] * rate_scale:.3g}"
        for k, v in ceilings.items() if k.startswith("matmul") and v.get("tflops"))
    conv = ", ".join(
        f"{k.removeprefix('conv3x3_')} {v['tflops'] * rate_scale:.3g}"
        for k, v in ceilings.items() if k.startswith("conv3x3") and v.get("tflops"))
    if conv:  # % peak is against these where they exist (summary.apply_peaks)
        peaks = f"3x3 conv {conv} (the % peak reference); matmul {peaks}"
    copy = ceilings.get("copy", {}).get("gbps")
    env = result["environment"]
    lines.append(f"device: {env['device_name']} | torch {env['torch']} | triton {env['triton']} "
                 f"| cuda {env['cuda']} | git {str(env['git'].get('revision'))[:10]}")
    lines.append(f"measured peaks ({rate_name}): {peaks}; copy "
                 f"{_fmt(copy, '.1f')} GB/s")
    groups: dict[tuple, list[dict]] = {}
    for r in result["rows"]:
        groups.setdefault((r["case"], r["batch"]), []).append(r)
    cases = {c["key"]: c for c in result["cases"]}
    for (case, batch), rows in groups.items():
        c = cases[case]
        gflop = c["flops_per_image"] / 1e9
        lines.append("")
        lines.append(f"== {case}  batch {batch}  ({c['kind']}, {gflop:.2f} GFLOP per image; "
                     f"{c['flops_note']})")
        table = [head]
        for r in rows:
            if r["status"] != "ok":
                table.append([r["row"]] + ["-"] * 9 + [f"{r['status']}: {r['error']}"])
                continue
            table.append([
                r["row"], f"{r['median_ms']:.3f}", f"{r['p20_ms']:.2f}-{r['p80_ms']:.2f}",
                f"{r['images_per_s']:.2f}", f"{r['tflops'] * rate_scale:.3g}",
                _fmt(r.get("pct_of_peak"), ".1f"), _fmt(r.get("peak_mem_mb"), ".0f"),
                _fmt(r.get("rel_l2_err"), ".1e", "nan" if r.get("nonfinite_output") else "-"),
                _fmt(None if r.get("label_agreement") is None
                     else 100 * r["label_agreement"], ".3f"),
                _fmt(r.get("speedup_vs_eager"), ".2f"), r.get("backend", ""),
            ])
        widths = [max(len(str(row[i])) for row in table) for i in range(len(head) - 1)]
        for row in table:
            cells = [str(v).rjust(w) if i else str(v).ljust(w)
                     for i, (v, w) in enumerate(zip(row, widths, strict=False))]
            lines.append("  ".join([*cells, str(row[-1])]))
        lines += _runtime_lines(result, case, batch)
    lines.append("")
    seen: dict[str, str] = {}
    for r in result["rows"]:
        seen.setdefault(r["row"], r["description"])
    lines.append("rows: " + "; ".join(f"{k}: {v}" for k, v in seen.items()))
    lines.append("x eager: speedup over the eager NCHW row of the same block; mem: "
                 + ("CUDA peak above the shared inputs (allocated, or reserved by a CUDA "
                    "graph's pool; see JSON mem_note)" if cuda else
                    "peak RSS growth (a lower bound, see JSON mem_note)")
                 + "; rel err/labels: vs the float64 reference on image 0")
    return "\n".join(lines)


def print_table(result: dict, stream: TextIO) -> None:
    print(format_table(result), file=stream, flush=True)
