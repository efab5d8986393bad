"""What a run's rows add up to: each row's % of the measured peak, its speedup over the eager
baseline, and per (case, batch) the best stock, unet_fast and runtime rows. Shared by the runner
and by merge (which recomputes them for the merged document)."""

from __future__ import annotations

from .ceilings import PEAK_FOR_PRECISION, peak_key
from .runtimes import RUNTIMES


def apply_peaks(rows: list[dict], ceilings: dict) -> list[str]:
    """Write each row's % of the measured peak of its precision (``pct_of_peak``, against
    ``peak_ref``: the 3x3-convolution ceiling where the document has one, else the matmul
    ceiling) and its % of the matmul ceiling (``pct_of_matmul_peak``); return notes on anything
    odd."""
    over = []
    for r in rows:
        if r["status"] != "ok":
            continue
        key = peak_key(r["precision"], ceilings)
        peak = ceilings.get(key, {}).get("tflops")
        matmul = ceilings.get(PEAK_FOR_PRECISION[r["precision"]], {}).get("tflops")
        r["peak_ref"] = key
        r["pct_of_peak"] = 100 * r["tflops"] / peak if peak else None
        r["pct_of_matmul_peak"] = 100 * r["tflops"] / matmul if matmul else None
        if r["pct_of_peak"] and r["pct_of_peak"] > 100:
            over.append(f"{r['case']}/b{r['batch']}/{r['row']}")
    if not over:
        return []
    return [f"{len(over)} row(s) above 100% of the measured peak ({', '.join(over[:6])}"
            f"{', ...' if len(over) > 6 else ''}): a convolution library can beat the ceiling's "
            "convolution or matmul (another algorithm, such as Winograd, does fewer "
            "multiplications than the FLOPs counted), or the machine was busier while the "
            "ceilings were measured; compare rows with each other rather than with the % column"]


def _runtime_comparison(ok: list[dict]) -> dict:
    """Per precision with a unet_fast row and a runtime row (OpenVINO, ONNX Runtime) measured:
    the best of each and unet_fast's speedup over each runtime (> 1: unet_fast is faster).
    unet_fast rows run with an opt-in setting (``env``) are not candidates for the best; each is
    compared in ``opt_in`` instead."""
    out = {}
    for prec in sorted({r["precision"] for r in ok}):
        ours = [r for r in ok if r["precision"] == prec and r["impl"].startswith("unet_fast")]
        fast = [r for r in ours if _default_unet_fast(r)]
        if not fast:
            continue
        best = min(fast, key=lambda r: r["median_ms"])
        entry: dict = {}
        opt_in = [r for r in ours if not _default_unet_fast(r)]
        for runtime in RUNTIMES:
            theirs = [r for r in ok if r["precision"] == prec and r["impl"] == runtime]
            if theirs:
                other = min(theirs, key=lambda r: r["median_ms"])
                entry[f"{runtime}_row"] = other["row"]
                entry[f"{runtime}_ms"] = other["median_ms"]
                entry[f"unet_fast_speedup_vs_{runtime}"] = other["median_ms"] / best["median_ms"]
        if entry and opt_in:
            entry["opt_in"] = [
                {"row": r["row"], "env": r["env"], "ms": r["median_ms"],
                 **{f"speedup_vs_{rt}": entry[f"{rt}_ms"] / r["median_ms"]
                    for rt in RUNTIMES if f"{rt}_ms" in entry}}
                for r in opt_in]
        if entry:
            out[prec] = {"unet_fast_row": best["row"], "unet_fast_ms": best["median_ms"], **entry}
    return out


def _default_unet_fast(row: dict) -> bool:
    """A unet_fast row in its default configuration (no opt-in ``env``)."""
    return row["impl"].startswith("unet_fast") and not row.get("env")


def summarize(rows: list[dict], baselines: list[dict] | None = None) -> list[dict]:
    """Per (case, batch): the eager baseline, the best stock PyTorch row, the best unet_fast row, and
    each row's speedup over the eager baseline (written into the rows).

    Rows of a merged document carry ``source`` (the run they come from). A row's speedup is then
    taken over the baseline row measured in its own run when that run has one (``baselines``:
    rows a merge dropped as duplicates, still valid baselines of their run), else over the
    merged baseline, and the row names the other run in ``speedup_baseline_source``.
    ``vs_runtimes`` (where runtime rows ran) compares unet_fast with OpenVINO and ONNX Runtime
    precision by precision."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["case"], r["batch"]), []).append(r)
    own: dict[tuple, dict] = {}
    for r in [*rows, *(baselines or [])]:
        if r["status"] == "ok" and r["impl"] == "eager":
            own.setdefault((r["case"], r["batch"], r["row"], r.get("source")), r)
    out = []
    for (case, batch), rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        eager = next((r for r in ok if r["impl"] == "eager"), None)
        for r in ok:
            base = eager
            if eager is not None and "source" in r:
                base = own.get((case, batch, eager["row"], r["source"]), eager)
            r["speedup_vs_eager"] = base["median_ms"] / r["median_ms"] if base else None
            r["speedup_baseline"] = base["row"] if base else None
            r.pop("speedup_baseline_source", None)
            if base is not None and base.get("source") != r.get("source"):
                r["speedup_baseline_source"] = base.get("source")
        # stock = PyTorch as a user would run it; the other runtimes are compared in vs_runtimes
        stock = [r for r in ok
                 if not r["impl"].startswith("unet_fast") and r["impl"] not in RUNTIMES]
        fast = [r for r in ok if _default_unet_fast(r)]
        best_stock = min(stock, key=lambda r: r["median_ms"], default=None)
        best_fast = min(fast, key=lambda r: r["median_ms"], default=None)
        entry = {
            "case": case, "batch": batch,
            "eager_row": eager["row"] if eager else None,
            "best_stock_row": best_stock["row"] if best_stock else None,
            "best_stock_ms": best_stock["median_ms"] if best_stock else None,
            "best_unet_fast_row": best_fast["row"] if best_fast else None,
            "best_unet_fast_ms": best_fast["median_ms"] if best_fast else None,
            "unet_fast_speedup_vs_best_stock": (best_stock["median_ms"] / best_fast["median_ms"]
                                                if best_stock and best_fast else None),
        }
        runtimes = _runtime_comparison(ok)
        if runtimes:
            entry["vs_runtimes"] = runtimes
        if any("source" in r for r in ok):
            entry["best_stock_source"] = best_stock.get("source") if best_stock else None
            entry["best_unet_fast_source"] = best_fast.get("source") if best_fast else None
        out.append(entry)
    return out
