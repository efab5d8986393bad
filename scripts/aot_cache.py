"""Ahead-of-time Triton cache for a lent GPU (issue 15): compile here, on a CPU, every kernel the
GPU session needs, so that the GPU compiles nothing of it (see unet_fast/aot_cache.py for how the
keys are made to match). The archive is committed as benchmarks/aot/aot-cache.tar.gz, which
scripts/gpu_session.sh installs by default; tests/test_aot_archive_current.py fails once it is
stale (kernel sources or launches changed since the build): then rebuild it and commit it.

    # the device's Triton wheel under the device's Python, for its triton_key (no torch needed):
    python3.12 -m venv /tmp/t312 && /tmp/t312/bin/pip install 'triton==3.6.0'
    # on the CPU machine, in a Python 3.11 venv with the CPU torch 2.13, 'triton==3.6.0' (the
    # device's) and unet_fast importable, no TRITON_INTERPRET (about 30 minutes on a busy 2-core
    # machine for the ~300 kernels; 10 MiB):
    python scripts/aot_cache.py build --out benchmarks/aot/aot-cache.tar.gz \
        --target-python /tmp/t312/bin/python
    python scripts/aot_cache.py check benchmarks/aot/aot-cache.tar.gz   # every launch's key present?
    # on the GPU (scripts/gpu_session.sh does this):
    python scripts/aot_cache.py install benchmarks/aot/aot-cache.tar.gz "$TRITON_CACHE_DIR"

The build also records in the archive's manifest what the CI test compares without Triton 3.6:
the sha256 of the kernels' source files and a launch listing (kernel, argument dtypes, constexprs,
specialisation, warps, stages per distinct kernel; the same under Triton 3.6 and 3.9). ``listing
--out FILE`` writes that listing for the installed Triton (a dry run); ``add-listing`` adds it to
an archive built without one (run with the archive's Triton; refused unless ``check`` passes).

Workloads (--workloads, comma-separated; default all): ``gpu-tests`` (tests/test_triton_gpu.py:
the paper network in IEEE fp32, TF32, fp16, bf16, the three fp32 variants, opcheck cases, the
torch.compile case), ``candidates`` (tests/test_triton_gpu_candidates.py: every tile pinned),
``layers`` (the session's benchmarks/layers.py runs), ``bench`` (benchmarks/run.py's unet_fast
rows: paper 572 and same 512, batch 1 and 16, four precisions), each model workload with the
backend's first-call self-check input; ``tiny`` (a small network, for the tests of this tool).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from unet_fast import aot_cache  # noqa: E402

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
# (dtype, tf32) of the four precisions the backend runs
PRECISIONS = {"fp32": (F32, False), "tf32": (F32, True), "fp16": (F16, False), "bf16": (BF16, False)}


def _model_calls(config, size: int, batch: int, precision: str) -> Iterator[tuple]:
    """(op name, args) of one forward of ``config`` and of the self-check before it."""
    from unet_fast.backends.self_check import check_input_size
    from unet_fast.benchmark.layers import TensorSpec, layer_plan

    dtype, tf32 = PRECISIONS[precision]
    stub = type("M", (), {"config": config})()
    for n, b in ((check_input_size(stub), 1), (size, batch)):
        for layer in layer_plan(config, n, n, b, dtype, tf32=tf32).layers:
            yield layer.op, tuple(a.empty("cpu") if isinstance(a, TensorSpec) else a
                                  for a in layer.args), None


def _gpu_tests() -> Iterator[tuple]:
    from unet_fast.triton_kernels.conv3x3 import pack_conv3x3_weight

    from unet_fast.config import UNetConfig

    for precision in PRECISIONS:
        yield from _model_calls(UNetConfig(), 572, 1, precision)
    for norm, upsample, padding in (("batch", "bilinear", "same"), (None, "transpose", "same"),
                                    ("batch", "transpose", "valid")):
        cfg = UNetConfig(in_channels=3, num_classes=5, base_channels=32, norm=norm,
                         upsample=upsample, padding=padding)
        yield from _model_calls(cfg, 189 if padding == "same" else 188, 2, "fp32")
    import tests.test_triton_ops as ops_tests
    from unet_fast.ops import fused

    ops_tests.DEVICE = "cpu"  # the cases' tensors, made here instead of on the GPU
    for op, args in ops_tests.opcheck_cases():
        (name,) = [n for n in fused.__all__ if getattr(fused, n) is op]
        yield name, args, None
    # test_torch_compile_traces_the_ops, run eagerly
    x = torch.empty(2, 16, 33, 35)
    pooled = torch.empty(2, 24, 16, 17, memory_format=torch.channels_last)
    yield "conv3x3_pool", (x, pack_conv3x3_weight(torch.empty(24, 16, 3, 3)),
                           torch.empty(24), 1, False), None
    yield "conv3x3", (pooled, pack_conv3x3_weight(torch.empty(8, 24, 3, 3)), None, 0, True,
                      False), None


def _candidates() -> Iterator[tuple]:
    from tests.test_triton_gpu_candidates import candidate_cases, case_args

    for precision, epilogue, c_in, c_out, cfg in candidate_cases():
        op, args = case_args(precision, epilogue, c_in, c_out, "cpu")
        yield op, args, cfg


def _layers() -> Iterator[tuple]:
    from unet_fast.benchmark.cases import model_config
    from unet_fast.benchmark.options import BenchOptions

    for name, batch, precision in (("paper", 1, "bf16"), ("paper", 16, "bf16"),
                                   ("paper", 1, "tf32"), ("same", 1, "bf16"),
                                   ("same", 16, "bf16")):
        size = 572 if name == "paper" else 512
        yield from _model_calls(model_config(name, BenchOptions()), size, batch, precision)


def _bench() -> Iterator[tuple]:
    from unet_fast.benchmark.cases import model_config
    from unet_fast.benchmark.options import BenchOptions

    for name, size in (("paper", 572), ("same", 512)):
        for batch in (1, 16):
            for precision in PRECISIONS:
                yield from _model_calls(model_config(name, BenchOptions()), size, batch,
                                        precision)


def _tiny() -> Iterator[tuple]:
    from unet_fast.config import UNetConfig

    cfg = UNetConfig(in_channels=1, num_classes=2, base_channels=8, depth=1)
    yield from _model_calls(cfg, 28, 1, "bf16")


WORKLOADS: dict[str, Callable[[], Iterator[tuple]]] = {
    "gpu-tests": _gpu_tests, "candidates": _candidates, "layers": _layers, "bench": _bench,
    "tiny": _tiny,
}
DEFAULT = "gpu-tests,candidates,layers,bench"


def launch_all(names: list[str], on_kernel: Callable | None = None) -> int:
    """Run every launch of the workloads through the compile-only driver for sm_90 (each kernel
    compiled by the JIT's own path, unless a dry run intercepts it). Returns the launch count."""
    from unet_fast.triton_kernels.tuning import pinned

    from unet_fast.benchmark.compile_report import _CompileOnly, cuda_target
    from unet_fast.ops.fused import LAUNCHES

    sink: list = []
    count = 0
    with cuda_target(90), torch.no_grad():
        for name in names:
            for op, args, cfg in WORKLOADS[name]():
                ctx = pinned(cfg) if cfg is not None else _null()
                with ctx:
                    LAUNCHES[op](*args, wrap=lambda k: _CompileOnly(k, sink, all_configs=False))
                count += 1
    return count


def _extra(doc: dict) -> dict:
    """The manifest fields that :func:`unet_fast.aot_cache.write_archive` takes as ``extra``."""
    return {k: v for k, v in doc.items()
            if k not in ("triton_version", "triton_key", "entries", "modules")}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def listing(names: list[str], tkey: str = "listing") -> tuple[int, dict[str, dict], list[dict]]:
    """Dry run of the workloads under this interpreter's Triton: (launch count, the kernels'
    cache key parts keyed with ``tkey`` (hash -> parts), their sorted launch records)."""
    seen: dict[str, dict] = {}
    records: dict[str, dict] = {}
    with aot_cache.dry_run(tkey, seen), aot_cache.record_launches(records):
        launches = launch_all(names)
    return launches, seen, [records[k] for k in sorted(records)]


def listing_diff(archived: list[dict], current: list[dict]) -> tuple[list[dict], list[dict]]:
    """(records launched now but not in the archive, archived records no longer launched)."""
    def key(r):
        return json.dumps(r, sort_keys=True)

    old, new = {key(r) for r in archived}, {key(r) for r in current}
    return ([r for r in current if key(r) not in old], [r for r in archived if key(r) not in new])


def _revision() -> str:
    import subprocess

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, text=True, capture_output=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+uncommitted" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/aot_cache.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile the workloads' kernels into an archive")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--target-python", help="interpreter with the device's Triton wheel (for its "
                   "triton_key); default this one")
    b.add_argument("--target-key-file", type=Path, help="the device's triton_key in a file")
    b.add_argument("--workloads", default=DEFAULT)
    c = sub.add_parser("check", help="is every kernel of the workloads in the archive?")
    c.add_argument("archive", type=Path)
    c.add_argument("--workloads", default=DEFAULT)
    c.add_argument("--json", type=Path, help="write the missing kernels here")
    m = sub.add_parser("add-modules", help="add the launcher stubs of the workloads (built by "
                       "--target-python's Triton) to an archive")
    m.add_argument("archive", type=Path)
    m.add_argument("--target-python", required=True)
    m.add_argument("--workloads", default=DEFAULT)
    a = sub.add_parser("add-listing", help="record the workloads' launch listing and kernel "
                       "source hashes in an archive built without them (same Triton as the build; "
                       "refused unless every kernel is present)")
    a.add_argument("archive", type=Path)
    a.add_argument("--workloads", default=DEFAULT)
    lst = sub.add_parser("listing", help="write the workloads' launch listing and kernel source "
                         "hashes under this Triton (a dry run: compiles nothing)")
    lst.add_argument("--out", type=Path, required=True)
    lst.add_argument("--workloads", default=DEFAULT)
    i = sub.add_parser("install", help="unpack an archive into Triton's cache, keyed for here")
    i.add_argument("archive", type=Path)
    i.add_argument("cache_dir", type=Path)
    args = p.parse_args(argv)

    if args.cmd == "install":
        try:
            aot_cache.install(args.archive, args.cache_dir)
        except (ValueError, OSError, KeyError) as e:
            print(f"aot cache: not installed: {e}", file=sys.stderr)
            return 1
        return 0
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("scripts/aot_cache.py: error: run without TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    names = args.workloads.split(",")
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        print(f"scripts/aot_cache.py: error: unknown workload(s) {unknown}; valid: "
              f"{', '.join(WORKLOADS)}", file=sys.stderr)
        return 2
    if args.cmd == "add-modules":
        import tarfile

        doc = aot_cache.read_manifest(args.archive)
        launchers: dict[str, str] = {}
        with aot_cache.dry_run(doc["triton_key"], {}), aot_cache.collect_launchers(launchers):
            launch_all(names)
        with tempfile.TemporaryDirectory() as cache:
            with tarfile.open(args.archive) as tar:
                tar.extractall(cache, filter="data")
            modules = aot_cache.build_modules(launchers, args.target_python, Path(cache))
            modules = sorted(set(doc.get("modules", [])) | set(modules))
            size = aot_cache.write_archive(Path(cache), doc["entries"], doc["triton_key"],
                                           args.archive, modules, _extra(doc))
        print(f"aot cache: {len(launchers)} launcher sources, {len(modules)} modules in "
              f"{args.archive} ({size / 2**20:.1f} MiB)")
        return 0
    if args.cmd == "listing":
        launches, _, records = listing(names)
        args.out.write_text(json.dumps({"launch_count": launches, "launches": records,
                                        "kernel_sources": aot_cache.kernel_sources()}))
        print(f"aot cache listing: {launches} launches, {len(records)} distinct kernels")
        return 0
    if args.cmd == "check":
        doc = aot_cache.read_manifest(args.archive)
        seen: dict[str, dict] = {}
        records: dict[str, dict] = {}
        launchers: dict[str, str] = {}
        # every launch keyed as the build keyed it (same triton_key, this machine's ptxas)
        with aot_cache.dry_run(doc["triton_key"], seen), aot_cache.collect_launchers(launchers), \
                aot_cache.record_launches(records):
            launches = launch_all(names)
        missing = [part for h, part in seen.items() if h not in doc["entries"]]
        print(f"aot cache check: {launches} launches, {len(seen)} distinct kernels, "
              f"{len(missing)} missing from {args.archive.name} ({len(doc['entries'])} entries); "
              f"{len(launchers)} launcher sources, {len(doc.get('modules', []))} modules archived")
        if "launches" in doc:
            new, gone = listing_diff(doc["launches"], list(records.values()))
            stale = [f for f, h in aot_cache.kernel_sources().items()
                     if doc["kernel_sources"].get(f) != h]
            print(f"aot cache check: launch listing {len(new)} new, {len(gone)} gone; kernel "
                  f"sources changed since the build: {stale or 'none'}")
        if args.json:
            args.json.write_text(json.dumps(missing, indent=1))
        return 1 if missing else 0
    if args.cmd == "add-listing":
        import tarfile

        import triton

        doc = aot_cache.read_manifest(args.archive)
        if doc["triton_version"] != triton.__version__:
            print(f"aot cache: the archive holds Triton {doc['triton_version']} kernels; run "
                  f"add-listing with that Triton (this one is {triton.__version__})",
                  file=sys.stderr)
            return 1
        launches, seen, records = listing(names, doc["triton_key"])
        missing = [h for h in seen if h not in doc["entries"]]
        if missing or len(records) != len(seen):
            print(f"aot cache: not listed: {len(missing)} of {len(seen)} kernels missing, "
                  f"{len(records)} launch records", file=sys.stderr)
            return 1
        extra = {**_extra(doc), "launches": records,
                 "kernel_sources": aot_cache.kernel_sources()}
        extra.setdefault("build", {})["listed"] = {
            "revision": _revision(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "launches": launches, "workloads": names}
        with tempfile.TemporaryDirectory() as cache:
            with tarfile.open(args.archive) as tar:
                tar.extractall(cache, filter="data")
            size = aot_cache.write_archive(Path(cache), doc["entries"], doc["triton_key"],
                                           args.archive, doc.get("modules", []), extra)
        print(f"aot cache: {len(records)} launch records ({launches} launches) added to "
              f"{args.archive} ({size / 2**20:.1f} MiB)")
        return 0

    tkey = (args.target_key_file.read_text().strip() if args.target_key_file
            else aot_cache.target_key(args.target_python))
    manifest: dict[str, dict] = {}
    launchers: dict[str, str] = {}
    records: dict[str, dict] = {}
    revision, date = _revision(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        from triton import knobs

        knobs.cache.dir = cache
        with aot_cache.keyed_as(tkey, manifest), aot_cache.collect_launchers(launchers), \
                aot_cache.record_launches(records):
            launches = launch_all(names)
        modules = []
        if args.target_python:
            modules = aot_cache.build_modules(launchers, args.target_python, Path(cache))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        build = {"revision": revision, "date": date, "launches": launches, "workloads": names,
                 "seconds": round(time.perf_counter() - start)}
        size = aot_cache.write_archive(
            Path(cache), manifest, tkey, args.out, modules,
            {"launches": [records[k] for k in sorted(records)],
             "kernel_sources": aot_cache.kernel_sources(), "build": build})
    from triton._C.libtriton import get_cache_invalidating_env_vars

    print(f"aot cache build: {launches} launches, {len(manifest)} kernels and {len(modules)} "
          f"launcher/driver modules ({len(launchers)} launcher sources) compiled in "
          f"{time.perf_counter() - start:.0f} s, {args.out} {size / 2**20:.1f} MiB; keyed for "
          f"triton_key sha256 {aot_cache._sha(tkey)[:12]}, cache-invalidating environment "
          f"{get_cache_invalidating_env_vars() or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
