"""One results document from several runs on the same device.

A full GPU benchmark does not fit in one 10-minute device call, so it is split by ``--model``,
``--rows`` or ``--tag`` into several runs, each with its own JSON. :func:`merge_documents` puts
their rows into one document (``benchmarks/merge.py``):

- every input must come from the same device and schema version (else a one-line ValueError);
- each input run becomes a ``sources`` entry (file, git revision, date, options, tag) and each row
  says which one it came from (``source``, an index into ``sources``); a merged document can be
  merged again, its sources are carried over;
- a (case, batch, row) measured more than once keeps the measurement with status ok, else the
  later run's, and a note says which;
- the ceilings are the best over all inputs (:func:`ceilings.best_ceilings`), and % of peak and
  the summary are recomputed from them;
- a row's speedup is over the eager row of its own run where that run measured one (clocks and
  temperature differ between device calls); where it did not, the baseline comes from another run,
  and both the row and the document's notes say so.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

from .ceilings import best_ceilings
from .report import result_paths, write_json
from .rows import all_rows
from .runner import SCHEMA_VERSION
from .summary import apply_peaks, summarize

# written by apply_peaks / summarize from the ceilings and baselines of the merged document
_DERIVED = ("pct_of_peak", "pct_of_matmul_peak", "peak_ref", "speedup_vs_eager",
            "speedup_baseline", "speedup_baseline_source")


def load(path: str | Path) -> dict:
    """A results document from ``path``; ValueError (one line) for anything else."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(doc, dict) or not {"environment", "rows", "ceilings"} <= doc.keys():
        raise ValueError(f"{path} is not a benchmark results file (no environment, rows and "
                         "ceilings)")
    return doc


def _runs(doc: dict, name: str) -> list[tuple[dict, list[dict]]]:
    """(source entry, rows) per run in ``doc``: one for a run's document, one per source of a
    merged one."""
    env = doc["environment"]
    if doc.get("merged"):
        runs = []
        for i, src in enumerate(doc.get("sources", [])):
            src = dict(src, via=src.get("via") or name)
            runs.append((src, [r for r in doc["rows"] if r.get("source") == i]))
        return runs
    options = doc.get("options") or {}
    src = {"file": name, "git": env.get("git"), "date": env.get("date"), "tag": options.get("tag"),
           "options": options, "complete": doc.get("complete", True),
           "wall_seconds": doc.get("wall_seconds"), "notes": doc.get("notes", [])}
    return [(src, doc["rows"])]


def _check_same(docs: list[dict], names: list[str]) -> None:
    def differ(what: str, values: list) -> None:
        if len(set(values)) > 1:
            listed = ", ".join(f"{n}: {v}" for n, v in zip(names, values, strict=True))
            raise ValueError(f"{what} differ ({listed}); merge only runs of one device and "
                             "schema")

    differ("schema versions", [d.get("schema_version") for d in docs])
    differ("device names", [f"{d['environment'].get('device_name')} "
                            f"({d['environment'].get('device')})" for d in docs])


def _merge_cases(docs: list[dict], names: list[str]) -> list[dict]:
    cases: dict[str, tuple[dict, str]] = {}
    for doc, name in zip(docs, names, strict=True):
        for c in doc.get("cases", []):
            seen = cases.get(c["key"])
            if seen is None:
                cases[c["key"]] = (c, name)
            elif (seen[0]["config"], seen[0]["flops_per_image"]) != (c["config"],
                                                                      c["flops_per_image"]):
                raise ValueError(f"case {c['key']} is a different network in {seen[1]} and "
                                 f"{name}; merge only runs of the same networks")
    return [c for c, _ in cases.values()]


def merge_documents(docs: list[dict], names: list[str]) -> dict:
    """Merge results documents of one device (see the module's docstring); ``names`` label them
    in ``sources`` and in the notes."""
    if not docs:
        raise ValueError("nothing to merge: give at least one results file")
    _check_same(docs, names)
    runs = [(src, rows, d) for d, (doc, name) in enumerate(zip(docs, names, strict=True))
            for src, rows in _runs(doc, name)]
    # "later" is the later run by date; the order given breaks ties
    order = sorted(range(len(runs)), key=lambda i: (runs[i][0].get("date") or "", i))
    sources = [runs[i][0] for i in order]
    cases = _merge_cases(docs, names)

    kept: dict[tuple, dict] = {}
    dropped: list[dict] = []
    doubles: dict[tuple[int, int, str], list[str]] = {}
    for s, i in enumerate(order):
        for row in runs[i][1]:
            r = {k: v for k, v in copy.deepcopy(row).items() if k not in _DERIVED}
            r["source"] = s
            r["notes"] = [n for n in r.get("notes", []) if not n.startswith("x eager: ")]
            key = (r["case"], r["batch"], r["row"])
            old = kept.get(key)
            if old is None:
                kept[key] = r
                continue
            take = r["status"] == "ok" or old["status"] != "ok"
            keep, drop = (r, old) if take else (old, r)
            kept[key] = keep
            dropped.append(drop)
            why = "status ok" if keep["status"] == "ok" and drop["status"] != "ok" else "later run"
            doubles.setdefault((drop["source"], keep["source"], why), []).append(
                f"{r['case']}/b{r['batch']}/{r['row']}")

    case_rank = {c["key"]: i for i, c in enumerate(cases)}
    device = docs[-1]["environment"].get("device", "cpu")
    row_rank = {spec.name: i for i, spec in enumerate(all_rows(device))}
    rows = sorted(kept.values(), key=lambda r: (case_rank.get(r["case"], len(case_rank)),
                                                r["batch"], row_rank.get(r["row"], len(row_rank)),
                                                r["row"]))
    notes = [f"{', '.join(keys)}: measured in {sources[a]['file']} and {sources[b]['file']}; "
             f"kept {sources[b]['file']} ({why})" for (a, b, why), keys in doubles.items()]

    ceiling_runs = []
    for d, doc in enumerate(docs):
        if doc.get("merged"):
            ceiling_runs.append(doc["ceilings"])  # already the best of its own sources
        else:
            s = next(s for s, i in enumerate(order) if runs[i][2] == d)
            ceiling_runs.append({k: dict(v, source=s) for k, v in doc["ceilings"].items()})
    ceilings = best_ceilings(*ceiling_runs)
    notes += apply_peaks(rows, ceilings)
    summary = summarize(rows, baselines=dropped)
    foreign = [r for r in rows if "speedup_baseline_source" in r]
    for r in foreign:
        r["notes"].append(f"x eager: baseline {r['speedup_baseline']} measured in another device "
                          f"call ({sources[r['speedup_baseline_source']]['file']})")
    if foreign:
        listed = ", ".join(f"{r['case']}/b{r['batch']}/{r['row']}" for r in foreign[:8])
        notes.append(f"{len(foreign)} row(s) have their x eager baseline from another device call "
                     f"(clocks and temperature differ between calls): {listed}"
                     + (", ..." if len(foreign) > 8 else ""))

    latest = max(docs, key=lambda d: d["environment"].get("date") or "")
    return {
        "schema_version": docs[0].get("schema_version", SCHEMA_VERSION),
        "complete": all(s.get("complete", True) for s in sources),
        "merged": True,
        "environment": latest["environment"],
        "sources": sources,
        "options": None,
        "ceilings": ceilings,
        "cases": cases,
        "rows": rows,
        "summary": summary,
        "notes": notes,
        "wall_seconds": sum(s.get("wall_seconds") or 0.0 for s in sources),
        "method": dict(latest.get("method", {}), merge=(
            "rows of several runs on this device (sources); ceilings are the best over all of "
            "them; x eager is over the eager row of the row's own run where it has one")),
    }


def merge_files(paths: list[str | Path], out_dir: str | Path, tag: str | None = None,
                plot: bool = True) -> tuple[dict, Path, Path | None]:
    """Merge the results files ``paths``; write ``<out_dir>/<device-slug>[-tag].json`` (and the
    PNG unless ``plot`` is False). Returns the document and the paths written."""
    from . import write_plot_or_note

    names = [str(p) for p in paths]
    doc = merge_documents([load(p) for p in paths], names)
    json_path, png_path = result_paths(doc, str(out_dir), tag)
    doc["plot"] = None
    write_json(doc, json_path)
    written = None
    if plot:
        written = write_plot_or_note(doc, png_path)
        write_json(doc, json_path)
    return doc, json_path, written


def main(argv: list[str] | None = None, default_out_dir: str = "benchmarks/results") -> int:
    """Entry point of ``benchmarks/merge.py``; bad input exits 2 with one line."""
    p = argparse.ArgumentParser(prog="benchmarks/merge.py",
                                description="Merge benchmark results of one device into one "
                                            "document with every row.")
    p.add_argument("files", nargs="+", help="results JSON files (runs or merged documents)")
    p.add_argument("--out-dir", default=default_out_dir,
                   help=f"where the merged JSON and PNG go (default {default_out_dir})")
    p.add_argument("--tag", default=None, help="suffix for the merged file names")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    args = p.parse_args(argv)
    try:
        doc, json_path, png = merge_files(args.files, args.out_dir, args.tag, not args.no_plot)
    except ValueError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"merged {len(doc['sources'])} run(s), {len(doc['rows'])} row(s): wrote {json_path}"
          + (f" and {png}" if png else ""), file=sys.stderr)
    return 0
