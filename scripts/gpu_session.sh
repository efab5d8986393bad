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
    # The build above compiles the CUDA extension (about a minute); the three runs below are bounded
    # so that their logs come back within the 10-minute call.
    # Parity does not depend on the tile choice, and autotuning every tiny test shape would not fit
    # one call: these run the first candidate. The autotuned kernels are checked on the GPU by the
    # third run (torch.compile and CUDA graphs over autotuned launches), the layers phase (each
    # layer against cuDNN) and the benchmark (against float64).
    UNET_FAST_AUTOTUNE=0 timeout 250 python3 -m pytest -q -rfE -m gpu tests 2>&1 \
      | tee "$OUT/gpu_tests.log" | tail -40
    UNET_FAST_AUTOTUNE=0 timeout 150 python3 -m pytest -q -rfE tests/test_triton_kernels.py \
      tests/test_triton_model.py tests/test_triton_ops.py tests/test_layers.py \
      tests/test_mirror_pad.py tests/test_tiles.py tests/test_segment.py 2>&1 \
      | tee "$OUT/cuda_tests.log" | tail -20
    timeout 90 python3 -m pytest -q -rfE -m gpu tests/test_triton_gpu.py \
      -k "torch_compile or cuda_graph" 2>&1 | tee "$OUT/autotuned_tests.log" | tail -10
    ;;
  layers)
    # at most 8 files come back from $OUT: one table file, one log, the JSONs in one archive
    json_dir="$(mktemp -d)"
    for spec in "paper 1" "paper 16" "same 1" "same 16"; do
      set -- $spec
      timeout 140 python3 benchmarks/layers.py --model "$1" --batch "$2" --out-dir "$json_dir" \
        >> "$OUT/layers.txt" 2>> "$OUT/layers.log"
    done
    tar czf "$OUT/layers-json.tar.gz" -C "$json_dir" .
    tail -80 "$OUT/layers.txt"
    ;;
  bench)
    python3 benchmarks/run.py --out-dir "$OUT" "$@" 2>&1 | tee "$OUT/bench.log" | tail -60
    ;;
  *)
    echo "unknown phase '$phase': use tests, layers or bench" >&2
    exit 2
    ;;
esac
