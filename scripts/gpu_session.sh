#!/usr/bin/env bash
# One device call per phase on a lent GPU (see the device tool); everything lands under $OUT.
#
#   bash scripts/gpu_session.sh tests            build, then the GPU tests and the CUDA runs of
#                                                the kernel/tiling tests (no interpreter)
#   bash scripts/gpu_session.sh bench [ARGS...]  build, then benchmarks/run.py ARGS with its JSON
#                                                and PNG written to $OUT (copy them to
#                                                benchmarks/results/ and commit them)
#   bash scripts/gpu_session.sh layers           build, then the per-layer tables (time against
#                                                floor, unet_fast vs cuDNN, per-layer error) of
#                                                benchmarks/layers.py for the paper and the
#                                                same-padded network at batch 1 and 16, bf16
#
# The device image has torch, triton and every dependency but cannot reach a package registry,
# hence --no-deps --no-index; UNET_FAST_REQUIRE_CUDA=1 makes a build without the CUDA tiling
# kernels fail here rather than in the tests. The full GPU benchmark does not fit one 10-minute
# call: split it, e.g. `bench --model paper --tag paper` then `bench --model same --tag same`, and
# join the files with benchmarks/merge.py.
#
# Each call starts on a bare machine. Compiled kernels and autotuning results (TRITON_CACHE_DIR,
# TRITON_CACHE_AUTOTUNING=1) are saved to $OUT/triton-cache.tar.gz at the end; copy that file
# to .cache/triton-cache.tar.gz here and name `.cache` in the next call's `carry`, and the next
# call starts from them. The working tree arrives without .git: pass the revision in the command,
# `UNET_FAST_GIT_REVISION=<sha> bash scripts/gpu_session.sh ...`, so the results record it.
set -uo pipefail
phase="${1:-tests}"
shift || true
OUT="${OUT:-/tmp/unet_fast_out}"
mkdir -p "$OUT" .cache
export PYTHONUNBUFFERED=1 UNET_FAST_REQUIRE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export TRITON_CACHE_DIR="$PWD/.cache/triton" TRITON_CACHE_AUTOTUNING=1
if [ -f .cache/triton-cache.tar.gz ]; then
  mkdir -p "$TRITON_CACHE_DIR" && tar xzf .cache/triton-cache.tar.gz -C "$TRITON_CACHE_DIR"
fi
save_cache() {
  # at most 8 files come back from $OUT, and a carried path must stay under 64 MiB
  [ -d "$TRITON_CACHE_DIR" ] || return 0
  tar czf "$OUT/triton-cache.tar.gz" -C "$TRITON_CACHE_DIR" . 2>/dev/null
  if [ "$(stat -c %s "$OUT/triton-cache.tar.gz")" -gt $((60 * 1024 * 1024)) ]; then
    rm -f "$OUT/triton-cache.tar.gz"
    echo "triton cache over 60 MiB: not saved"
  fi
}
trap save_cache EXIT

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
  >> "$OUT/gpu.txt" 2>&1
echo "revision ${UNET_FAST_GIT_REVISION:-unknown}" >> "$OUT/gpu.txt"
cat "$OUT/gpu.txt"
if ! python3 -m pip install -v --no-build-isolation --no-deps --no-index -e . > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  exit 1
fi
grep -m1 "unet_fast: building" "$OUT/build.log"

case "$phase" in
  tests)
    # The build above compiles the CUDA extension (about a minute); the three runs below are bounded
    # so that their logs come back within the 10-minute call.
    # Parity does not depend on the tile choice, and autotuning every tiny test shape would not fit
    # one call: the first two runs pin the first candidate. The autotuned kernels are checked on
    # the GPU by the third run (torch.compile and CUDA graphs over autotuned launches; on a cold
    # cache it tunes the paper network's ~20 layer shapes), the layers phase (each layer against
    # cuDNN) and the benchmark (against float64).
    UNET_FAST_AUTOTUNE=0 timeout 220 python3 -m pytest -q -rfE --durations=15 -m gpu tests 2>&1 \
      | tee "$OUT/gpu_tests.log" | tail -40
    UNET_FAST_AUTOTUNE=0 timeout 100 python3 -m pytest -q -rfE --durations=10 -m "not gpu" \
      tests/test_triton_kernels.py tests/test_triton_model.py tests/test_triton_ops.py \
      tests/test_layers.py tests/test_mirror_pad.py tests/test_tiles.py 2>&1 \
      | tee "$OUT/cuda_tests.log" | tail -20
    timeout 180 python3 -m pytest -q -rfE -m gpu tests/test_triton_gpu.py \
      -k "torch_compile or cuda_graph" 2>&1 | tee "$OUT/autotuned_tests.log" | tail -10
    ;;
  layers)
    # at most 8 files come back from $OUT: one table file, one log, the JSONs in one archive
    # (re-made after each job, so a kill at the call's limit keeps what finished)
    json_dir="$(mktemp -d)"
    for spec in "paper 1" "paper 16" "same 1" "same 16"; do
      set -- $spec
      timeout 110 python3 benchmarks/layers.py --model "$1" --batch "$2" --out-dir "$json_dir" \
        >> "$OUT/layers.txt" 2>> "$OUT/layers.log"
      tar czf "$OUT/layers-json.tar.gz" -C "$json_dir" .
    done
    tail -80 "$OUT/layers.txt"
    ;;
  bench)
    # --deadline stops starting rows in time for the JSON (written after every row) to come back
    timeout 540 python3 benchmarks/run.py --out-dir "$OUT" --deadline "${DEADLINE:-450}" "$@" 2>&1 \
      | tee "$OUT/bench.log" | tail -60
    ;;
  *)
    echo "unknown phase '$phase': use tests, layers or bench" >&2
    exit 2
    ;;
esac
