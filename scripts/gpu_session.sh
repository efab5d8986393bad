#!/usr/bin/env bash
# One device call per phase on a lent GPU (see the device tool); everything lands under $OUT.
#
#   bash scripts/gpu_session.sh tests            build, then the GPU tests and the CUDA runs of
#                                                the kernel/tiling tests (no interpreter)
#   bash scripts/gpu_session.sh bench [ARGS...]  build, then benchmarks/run.py ARGS with its JSON
#                                                and PNG written to $OUT (copy them to
#                                                benchmarks/results/ and commit them)
#
# The device image has torch, triton and every dependency but cannot reach a package registry,
# hence --no-deps --no-index. The full GPU benchmark does not fit one 10-minute call: split it,
# e.g. `bench --model paper --tag paper` then `bench --model same --tag same`.
set -uo pipefail
phase="${1:-tests}"
shift || true
OUT="${OUT:-/tmp/unet_fast_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
  >> "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
if ! python3 -m pip install -q --no-build-isolation --no-deps --no-index -e . > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  exit 1
fi

case "$phase" in
  tests)
    python3 -m pytest -q -rfE -m gpu tests 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
    python3 -m pytest -q -rfE tests/test_triton_kernels.py tests/test_triton_model.py \
      tests/test_triton_ops.py tests/test_mirror_pad.py tests/test_tiles.py tests/test_segment.py \
      2>&1 | tee "$OUT/cuda_tests.log" | tail -20
    ;;
  bench)
    python3 benchmarks/run.py --out-dir "$OUT" "$@" 2>&1 | tee "$OUT/bench.log" | tail -60
    ;;
  *)
    echo "unknown phase '$phase': use tests or bench" >&2
    exit 2
    ;;
esac
