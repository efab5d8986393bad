"""Triton kernels compiled ahead of time on a machine without a GPU, for a GPU run to load.

Triton finds a compiled kernel in its file cache (``TRITON_CACHE_DIR``) under
``sha256(f"{triton_key}-{src.hash()}-{backend.hash()}-{options.hash()}-{env}")``
(``triton.runtime.cache.get_cache_key``, Triton 3.x):

* ``triton_key``: Triton's version plus hashes of its Python sources and of ``libtriton.so``; the
  last differs between the wheels of two Python versions of the same release (cp311 here, cp312
  on the device image), so a build names the key of the device's Triton (:func:`target_key`
  computes it with that wheel's interpreter);
* ``src.hash()``: the kernel's source and its dependencies, the specialisation of its arguments
  (alignment, divisibility by 16, equality to 1) and the constexpr values: the same wherever the
  same launcher runs on tensors of the same shapes, strides and dtypes;
* ``backend.hash()``: the ptxas version and the architecture (sm_90 here, via a compile-only
  target); ``options.hash()``: warps, stages, libdevice's content hash, option knobs; ``env``:
  the cache-invalidating ``TRITON_*`` variables that are set.

A build records these parts per kernel in ``manifest.json`` beside the cache entries. Install
recomputes each key with the installing machine's ``triton_key``, ptxas and environment and
files the entry under that hash (a copy under the same hash when they agree), rewriting the
absolute paths that Triton's group files hold. Rekeying asserts that a kernel compiled by the
same Triton release for the same architecture is what this machine would compile; that holds
for one release built from one source (the install refuses another version), and the backend's
first-call self-check guards the rest.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

MANIFEST = "manifest.json"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def entry_dir(h: str) -> str:
    """The cache folder Triton uses for the hex hash ``h`` (its base32 form)."""
    return base64.b32encode(bytes.fromhex(h)).decode("utf-8").rstrip("=")


def local_key() -> str:
    """This process's ``triton_key()``."""
    from triton.runtime.cache import triton_key

    return triton_key()


def target_key(python: str | None) -> str:
    """The ``triton_key()`` of the Triton that ``python`` imports (this process's if None)."""
    if python is None:
        return local_key()
    out = subprocess.run([python, "-c", "from triton.runtime.cache import triton_key; "
                          "print(triton_key())"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def full_key(tkey: str, part: dict, backend: str | None = None, env: str | None = None) -> str:
    """The string Triton hashes, from a manifest entry's parts (``backend``/``env``: overrides)."""
    return (f"{tkey}-{part['src']}-{backend or part['backend']}-{part['options']}-"
            f"{env if env is not None else part['env']}")


def _env_text(env_vars: dict) -> str:
    return str(sorted(env_vars.items()))


@contextlib.contextmanager
def keyed_as(tkey: str, manifest: dict[str, dict]) -> Iterator[None]:
    """Within the block, kernels Triton compiles are filed under keys made with ``tkey`` as the
    ``triton_key``, and their key parts are added to ``manifest`` (hash -> parts)."""
    import triton.compiler.compiler as cc

    real = cc.get_cache_key

    def get_cache_key(src, backend, options, env_vars):
        part = {"name": src.name, "src": src.hash(), "backend": backend.hash(),
                "options": options.hash(), "env": _env_text(env_vars)}
        key = full_key(tkey, part)
        manifest[_sha(key)] = part
        return key

    cc.get_cache_key = get_cache_key
    try:
        yield
    finally:
        cc.get_cache_key = real


@contextlib.contextmanager
def dry_run(tkey: str, seen: dict[str, dict]) -> Iterator[None]:
    """Within the block, JIT launches compile nothing: each kernel that would be compiled has its
    cache hash (keyed with ``tkey``) and key parts added to ``seen``. Fast: no code generation."""
    from triton._C.libtriton import get_cache_invalidating_env_vars
    from triton.runtime.jit import JITFunction

    real = JITFunction._do_compile

    def do_compile(self, key, signature, device, constexprs, options, attrs, warmup):
        _, _, _, backend, _ = self.device_caches[device]
        src = self.ASTSource(self, signature, constexprs, attrs)
        # what triton.compile does with the options before keying them
        opts = backend.parse_options(dict(options.__dict__, **src.parse_options()))
        part = {"name": src.name, "src": src.hash(), "backend": backend.hash(),
                "options": opts.hash(), "env": _env_text(get_cache_invalidating_env_vars())}
        seen[_sha(full_key(tkey, part))] = part
        return None

    JITFunction._do_compile = do_compile
    try:
        yield
    finally:
        JITFunction._do_compile = real


def _plain(value):
    """A constexpr value as JSON (repr for anything but the plain scalars the kernels take)."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


def launch_record(fn, signature: dict, constexprs: dict, options, attrs: dict) -> dict:
    """What decides a compiled kernel, apart from its source and Triton's own build: its name,
    the argument types, the constexpr values, the specialisation of the other arguments
    (divisibility by 16, ...) and the launch options the launchers set. Arguments are named, not
    numbered, and unspecialised ones left out, so Triton 3.6 and 3.9 give the same record."""
    names = fn.arg_names
    return {
        "kernel": f"{fn.__module__}.{fn.__name__}",
        "signature": dict(signature),
        "constexprs": {names[i[0]]: _plain(v) for i, v in sorted(constexprs.items())},
        "specialization": {names[i[0]]: [list(a) for a in v]
                           for i, v in sorted(attrs.items()) if v},
        **{k: getattr(options, k, None) for k in ("num_warps", "num_stages", "num_ctas",
                                                   "maxnreg")},
    }


@contextlib.contextmanager
def _on_compile(observe: Callable[..., None]) -> Iterator[None]:
    """Within the block, ``observe(fn, signature, constexprs, options, attrs)`` is called for every
    kernel the JIT compiles (or would, inside a :func:`dry_run` block), before it compiles."""
    from triton.runtime.jit import JITFunction

    inner = JITFunction._do_compile

    def do_compile(self, key, signature, device, constexprs, options, attrs, warmup):
        observe(self, signature, constexprs, options, attrs)
        return inner(self, key, signature, device, constexprs, options, attrs, warmup)

    JITFunction._do_compile = do_compile
    try:
        yield
    finally:
        JITFunction._do_compile = inner


@contextlib.contextmanager
def record_launches(records: dict[str, dict]) -> Iterator[None]:
    """Within the block, the :func:`launch_record` of every kernel the JIT compiles (or would:
    open it inside a :func:`dry_run` block) is added to ``records`` (its JSON -> record)."""

    def observe(fn, signature, constexprs, options, attrs):
        record = launch_record(fn, signature, constexprs, options, attrs)
        records[json.dumps(record, sort_keys=True)] = record

    with _on_compile(observe):
        yield


def kernel_sources() -> dict[str, str]:
    """sha256 of the source file of each module the kernels are written in: every module of
    ``unet_fast.triton_kernels`` and the unet_fast modules they import, keyed by module name (the
    same for an editable and a regular install). A kernel's cache key covers its source, the
    ``@triton.jit`` helpers it calls and its first line number, so any edit to these files may
    change it."""
    import importlib
    import inspect
    import pkgutil
    import sys

    import unet_fast.triton_kernels as pkg

    modules = {pkg.__name__: pkg}
    for info in pkgutil.iter_modules(pkg.__path__):
        modules[f"{pkg.__name__}.{info.name}"] = importlib.import_module(
            f"{pkg.__name__}.{info.name}")
    for m in list(modules.values()):
        for value in vars(m).values():
            owner = value if inspect.ismodule(value) else sys.modules.get(
                getattr(value, "__module__", None) or "")
            name = getattr(owner, "__name__", "")
            if name.split(".")[0] == "unet_fast" and getattr(owner, "__file__", None):
                modules.setdefault(name, owner)
    return {name: hashlib.sha256(Path(m.__file__).read_bytes()).hexdigest()
            for name, m in sorted(modules.items())}


# What a cache hit loads: the metadata and the binary (Triton keeps the IRs only for inspection).
_KEEP = (".json", ".cubin")


def _launcher_source(fn, src) -> str:
    """The C source of the launcher stub Triton builds for ``src`` (as ``CudaLauncher`` makes it)."""
    from triton.backends.nvidia.driver import make_launcher

    constants = {(fn.arg_names.index(k),) if isinstance(k, str) else k: v
                 for k, v in src.constants.items()}
    return make_launcher(constants, dict(src.signature), None)


@contextlib.contextmanager
def collect_launchers(sources: dict[str, str]) -> Iterator[None]:
    """Within the block, the launcher stub source of every kernel the JIT compiles (or would, in
    a :func:`dry_run` opened inside this block) is added to ``sources`` (sha256 -> C source).

    Triton builds one such stub per distinct source with the C compiler on first use, cached
    under ``sha256(source + platform)``, independent of ``triton_key``.
    """
    from triton.backends.nvidia import driver

    if not hasattr(driver, "make_launcher"):  # Triton >= 3.7 builds no per-signature stub
        yield
        return

    def observe(fn, signature, constexprs, options, attrs):
        text = _launcher_source(fn, fn.ASTSource(fn, signature, constexprs, attrs))
        sources[_sha(text)] = text

    with _on_compile(observe):
        yield


# Run by the device's Python (with the device's Triton): builds the launcher stubs and Triton's
# driver utilities into TRITON_CACHE_DIR, linking a stand-in libcuda.so.1 (TRITON_LIBCUDA_PATH;
# the real one is loaded on the GPU).
_BUILD_MODULES = """
import json, os, sys
from pathlib import Path
from triton.runtime.build import compile_module_from_src
from triton.backends.nvidia import driver
if not hasattr(driver, "make_launcher"):  # Triton >= 3.7: no per-signature C modules
    sys.exit(0)
sources = json.loads(Path(sys.argv[1]).read_text())
sources.append(["cuda_utils", Path(driver.dirname, "driver.c").read_text()])
for name, src in sources:
    try:
        compile_module_from_src(src=src, name=name, library_dirs=driver.library_dirs(),
                                include_dirs=driver.include_dirs, libraries=driver.libraries)
    except ImportError:
        pass  # built and cached; it loads only where the real libcuda is
print(len(sources))
"""


def build_modules(sources: dict[str, str], python: str, cache_dir: Path) -> list[str]:
    """Build the launcher stubs ``sources`` (and Triton's CUDA utilities) with ``python``'s
    Triton into ``cache_dir``; returns the new cache folders."""
    before = {p.name for p in cache_dir.iterdir()}
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp) / "stub.c"
        stub.write_text("int unet_fast_libcuda_stand_in;\n")
        subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o",
                        str(Path(tmp) / "libcuda.so.1"), str(stub)], check=True)
        # Ubuntu's linker drops a library none of whose symbols it resolved (--as-needed): the
        # stand-in defines none, but the real libcuda must stay a dependency of each module
        cc = Path(tmp) / "cc"
        cc.write_text('#!/bin/sh\nexec gcc -Wl,--no-as-needed "$@"\n')
        cc.chmod(0o755)
        listing = Path(tmp) / "sources.json"
        listing.write_text(json.dumps([["__triton_launcher", s] for s in sources.values()]))
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRITON_")}
        env.update(TRITON_CACHE_DIR=str(cache_dir), TRITON_LIBCUDA_PATH=tmp, CC=str(cc))
        subprocess.run([python, "-c", _BUILD_MODULES, str(listing)], check=True, env=env,
                       capture_output=True, text=True)
    return sorted(p.name for p in cache_dir.iterdir() if p.name not in before)


def write_archive(cache_dir: Path, manifest: dict[str, dict], tkey: str, out: Path,
                  modules: list[str] | None = None, extra: dict | None = None) -> int:
    """Pack the entries of ``manifest`` found in ``cache_dir`` (metadata and cubin of each; the
    group files list only those) and the manifest into the ``.tar.gz`` ``out``; returns its size
    in bytes. ``extra``: more fields for ``manifest.json`` (``launches``, ``kernel_sources``,
    ``build``: what tests/test_aot_archive_current.py compares with the tree)."""
    import triton

    doc = {**(extra or {}), "triton_version": triton.__version__, "triton_key": tkey,
           "entries": manifest, "modules": modules or []}
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(out, "w:gz") as tar:
        (Path(tmp) / MANIFEST).write_text(json.dumps(doc, indent=0, sort_keys=True))
        tar.add(Path(tmp) / MANIFEST, arcname=MANIFEST)
        for name in modules or []:  # compiled C modules: keyed by their source, kept as they are
            tar.add(cache_dir / name, arcname=name,
                    filter=lambda info: None if info.name.endswith("/lock") else info)
        for h in sorted(manifest):
            entry = cache_dir / entry_dir(h)
            if not entry.is_dir():
                continue
            for f in sorted(entry.iterdir()):
                if f.name.startswith("__grp__"):
                    data = json.loads(f.read_text())
                    data["child_paths"] = {n: p for n, p in data["child_paths"].items()
                                           if n.endswith(_KEEP)}
                    staged = Path(tmp) / f.name
                    staged.write_text(json.dumps(data))
                    tar.add(staged, arcname=f"{entry.name}/{f.name}")
                elif f.name.endswith(_KEEP):
                    tar.add(f, arcname=f"{entry.name}/{f.name}")
    return out.stat().st_size


def read_manifest(archive: Path) -> dict:
    """The manifest of an archive made by :func:`write_archive`."""
    with tarfile.open(archive) as tar:
        return json.loads(tar.extractfile(MANIFEST).read())


def install(archive: Path, cache_dir: Path, tkey: str | None = None,
            backend_hash: str | None = None, env: str | None = None,
            log: Callable[[str], None] = print) -> dict[str, int]:
    """Unpack ``archive`` into Triton's cache ``cache_dir`` under the keys this machine's Triton
    computes (``tkey``, ``backend_hash``, ``env``: the local ones unless given).

    Returns counts: ``entries``, ``same_key`` (filed under their built hash), ``rekeyed``,
    ``modules`` (launcher stubs and driver utilities: keyed by their C source, copied as built;
    one that does not load is rebuilt by Triton).
    Raises ValueError for an archive of another Triton version.
    """
    import triton

    doc = read_manifest(archive)
    if doc["triton_version"] != triton.__version__:
        raise ValueError(f"archive {archive} holds Triton {doc['triton_version']} kernels, this "
                         f"machine has Triton {triton.__version__}: build one for it")
    if tkey is None:
        tkey = local_key()
    if backend_hash is None or env is None:
        from triton._C.libtriton import get_cache_invalidating_env_vars
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import make_backend

        backend_hash = backend_hash or make_backend(GPUTarget("cuda", 90, 32)).hash()
        env = env if env is not None else _env_text(get_cache_invalidating_env_vars())
    counts = {"entries": 0, "same_key": 0, "rekeyed": 0}
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp, tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
        for old, part in doc["entries"].items():
            src_dir = Path(tmp) / entry_dir(old)
            if not src_dir.is_dir():
                continue
            backend = backend_hash if part["backend"].endswith("-90") else part["backend"]
            new = _sha(full_key(tkey, part, backend, env))
            dest = cache_dir / entry_dir(new)
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(src_dir, dest)
            for grp in dest.glob("__grp__*.json"):
                data = json.loads(grp.read_text())
                data["child_paths"] = {name: str(dest / Path(p).name)
                                       for name, p in data.get("child_paths", {}).items()}
                grp.write_text(json.dumps(data))
            counts["entries"] += 1
            counts["same_key" if new == old else "rekeyed"] += 1
        counts["modules"] = 0
        for name in doc.get("modules", []):
            if (Path(tmp) / name).is_dir() and not (cache_dir / name).exists():
                shutil.copytree(Path(tmp) / name, cache_dir / name)
                counts["modules"] += 1
    log(f"aot cache: {counts['entries']} kernels from {archive.name} (Triton "
        f"{doc['triton_version']}): {counts['same_key']} under their built keys, "
        f"{counts['rekeyed']} rekeyed for this machine's Triton/ptxas/environment; "
        f"{counts['modules']} launcher/driver modules")
    return counts
