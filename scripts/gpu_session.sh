#!/usr/bin/env bash
# One device call on a lent GPU (see the device tool); everything lands under $OUT.
#
#   bash scripts/gpu_session.sh all [BENCH ARGS...]   setup, GPU tests, CUDA runs of the kernel
#                                                     tests, per-layer tables with their error
#                                                     check, then (cache saved first) the benchmark
#                                                     in whatever time is left
#   bash scripts/gpu_session.sh tests | layers        one of those phases (after setup)
#   bash scripts/gpu_session.sh bench [ARGS...]       benchmarks/run.py ARGS (after setup)
#
# Every phase fits the call with its output intact (issue 15):
# * the clock: the call has CALL_LIMIT seconds (default 560, under the tool's 600 with room for
#   bringing $OUT back); each phase gets min(its plan, what is left minus what later phases
#   reserve), and one that cannot get its minimum is skipped with a line saying so;
# * pytest runs under `timeout -s INT`, so a run cut short still prints its failures and summary
#   (SIGTERM would leave only dots), with --maxfail and, where the image has pytest-xdist, -n 8;
# * the Triton cache (compiled kernels, tuning records) is saved to $OUT/triton-cache.tar.gz before
#   the last phase and again at exit, so a call killed in its last phase still returns it.
#
# Carried caches: copy triton-cache.tar.gz from what comes back to .cache/triton-cache.tar.gz and
# name `.cache` in the next call's `carry`. The ahead-of-time archive (kernels compiled on a CPU
# machine by scripts/aot_cache.py build) is the committed benchmarks/aot/aot-cache.tar.gz, which
# travels with the tree; AOT_ARCHIVE=<path> installs another one instead (AOT_ARCHIVE=none: none),
# and a carried .cache/aot-cache.tar.gz takes precedence over the committed one. It is checked
# against this machine's Triton (keys recomputed if they differ) and unpacked first. The session
# log says how many kernels each phase compiled (new cache entries): 0 means the archive held
# everything.
#
# At most 8 files come back from $OUT: session.log, tests.log, layers.txt, layers-json.tar.gz,
# triton-cache.tar.gz and the benchmark's JSON, PNG and bench.log.
#
# Plan for a 15-minute lease (benchmarks/NOTES.md): call 1 `all` (about 9.5 minutes), call 2 at
# once if at least 4 minutes are left: `bench` with the rows call 1 did not reach.
# The tree arrives without .git: pass UNET_FAST_GIT_REVISION=<sha> so the results record it.
set -uo pipefail
T0=$(date +%s)
phase="${1:-all}"
shift || true
OUT="${OUT:-/tmp/unet_fast_out}"
CALL_LIMIT="${CALL_LIMIT:-560}"
mkdir -p "$OUT" .cache
LOG="$OUT/session.log"
export PYTHONUNBUFFERED=1 UNET_FAST_REQUIRE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export TRITON_CACHE_DIR="$PWD/.cache/triton" UNET_FAST_CACHE_DIR="$PWD/.cache/triton/unet_fast"
mkdir -p "$TRITON_CACHE_DIR"

say() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
left() { echo $(( CALL_LIMIT - ($(date +%s) - T0) )); }
# budget WANT RESERVE MIN: min(WANT, left - RESERVE), or 0 when that is under MIN
budget() {
  local b=$(( $(left) - $2 ))
  [ "$b" -gt "$1" ] && b=$1
  [ "$b" -lt "$3" ] && b=0
  echo "$b"
}
entries() { find "$TRITON_CACHE_DIR" -mindepth 1 -maxdepth 1 -type d | wc -l; }
save_cache() {
  # a carried path must stay under 64 MiB in all
  tar czf "$OUT/triton-cache.tar.gz.tmp" -C "$TRITON_CACHE_DIR" . 2>/dev/null || return 0
  if [ "$(stat -c %s "$OUT/triton-cache.tar.gz.tmp")" -gt $((60 * 1024 * 1024)) ]; then
    rm -f "$OUT/triton-cache.tar.gz.tmp"
    say "triton cache over 60 MiB: not saved"
  else
    mv "$OUT/triton-cache.tar.gz.tmp" "$OUT/triton-cache.tar.gz"
    say "triton cache saved ($(entries) entries)"
  fi
}
trap save_cache EXIT

XDIST=()
python3 -c "import xdist" 2>/dev/null && XDIST=(-n 8 --dist loadfile)
# pytest_run NAME SECONDS PYTEST-ARGS...: bounded, SIGINT first so the summary is printed
pytest_run() {
  local name=$1 secs=$2
  shift 2
  if [ "$secs" -le 0 ]; then say "$name: skipped, not enough time left"; return 0; fi
  local before
  before=$(entries)
  say "$name: up to ${secs}s"
  timeout -s INT -k 20 "$secs" python3 -m pytest -q -rfE --tb=short --maxfail=10 \
    -p no:cacheprovider --durations=8 "${XDIST[@]}" "$@" >> "$OUT/tests.log" 2>&1
  local rc=$?
  say "$name: exit $rc ($([ $rc -eq 124 ] && echo 'timed out, ')$(( $(entries) - before )) kernels compiled)"
  tail -25 "$OUT/tests.log" | grep -E "passed|failed|error|FAILED|ERROR" | tail -12 | tee -a "$LOG"
}

setup() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv >> "$LOG" 2>&1
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    >> "$LOG" 2>&1
  say "revision ${UNET_FAST_GIT_REVISION:-unknown}, phase $phase, xdist: ${XDIST[*]:-no}"
  if [ -f .cache/triton-cache.tar.gz ]; then
    tar xzf .cache/triton-cache.tar.gz -C "$TRITON_CACHE_DIR" && say "carried triton cache: $(entries) entries"
  fi
  if ! timeout -s INT 150 python3 -m pip install -v --no-build-isolation --no-deps --no-index -e . \
      > "$OUT/build.log.tmp" 2>&1; then
    tail -40 "$OUT/build.log.tmp" | tee -a "$LOG"
    exit 1
  fi
  grep -m1 "unet_fast: building" "$OUT/build.log.tmp" | tee -a "$LOG"
  rm -f "$OUT/build.log.tmp"
  local aot="${AOT_ARCHIVE:-}"
  if [ -z "$aot" ]; then
    aot=benchmarks/aot/aot-cache.tar.gz
    [ -f .cache/aot-cache.tar.gz ] && aot=.cache/aot-cache.tar.gz
  fi
  if [ "$aot" = none ]; then
    say "ahead-of-time archive: none (AOT_ARCHIVE=none)"
  elif [ -f "$aot" ]; then
    python3 scripts/aot_cache.py install "$aot" "$TRITON_CACHE_DIR" 2>&1 | tee -a "$LOG"
    say "after the ahead-of-time archive $aot: $(entries) cache entries"
  else
    say "ahead-of-time archive $aot not found: every kernel compiles here"
  fi
  say "setup done"
}

phase_tests() {
  # $1: seconds the phases after this one need
  local after=$1
  # correctness on the GPU first: parity per precision, opcheck, determinism, memory, graphs, and
  # every autotuning candidate pinned on odd shapes (bf16, TF32)
  pytest_run "gpu tests" "$(budget 240 $(( after + 100 )) 60)" -m gpu tests
  # the kernel/tiling tests' CUDA runs (their odd shapes, layouts, opcheck, errors)
  pytest_run "cuda kernel tests" "$(budget 120 "$after" 30)" -m "not gpu" \
    tests/test_triton_kernels.py tests/test_triton_model.py tests/test_triton_ops.py \
    tests/test_self_check.py tests/test_layers.py tests/test_mirror_pad.py tests/test_tiles.py
}

phase_layers() {
  local after=$1 json_dir spec secs
  json_dir="$(mktemp -d)"
  for spec in "paper 1 bf16" "paper 16 bf16" "paper 1 tf32" "same 1 bf16" "same 16 bf16"; do
    set -- $spec
    secs=$(budget 75 "$after" 25)
    if [ "$secs" -le 0 ]; then say "layers $spec: skipped, not enough time left"; continue; fi
    local before
    before=$(entries)
    timeout -s INT -k 10 "$secs" python3 benchmarks/layers.py --model "$1" --batch "$2" \
      --dtype "$3" --out-dir "$json_dir" >> "$OUT/layers.txt" 2>> "$OUT/layers.txt"
    local rc=$?
    say "layers $spec: exit $rc$([ $rc -eq 1 ] && echo ' (ERROR CHECK FAILED)') ($(( $(entries) - before )) kernels compiled)"
    grep -E "^(FAIL|error check)" "$OUT/layers.txt" | tail -3 | tee -a "$LOG"
    tar czf "$OUT/layers-json.tar.gz" -C "$json_dir" .
  done
}

phase_bench() {
  local secs=$(( $(left) - 10 ))
  if [ "$secs" -lt 60 ]; then say "bench: skipped, ${secs}s left"; return 0; fi
  say "bench: up to ${secs}s, deadline $(( secs - 45 ))s: $*"
  timeout -s INT -k 10 "$secs" python3 benchmarks/run.py --out-dir "$OUT" \
    --deadline "$(( secs - 45 ))" "$@" > "$OUT/bench.log" 2>&1
  say "bench: exit $?"
  tail -30 "$OUT/bench.log" | tee -a "$LOG"
}

setup
case "$phase" in
  all)
    phase_tests 200
    phase_layers 110
    save_cache  # before the last step: a call killed in the benchmark still returns the cache
    phase_bench --model paper --image-sizes none --rows "${ROWS:-eager-*,unet_fast-*}" --tag paper "$@"
    ;;
  tests) phase_tests 20 ;;
  layers) phase_layers 20 ;;
  bench)
    save_cache
    phase_bench "$@"
    ;;
  *)
    echo "unknown phase '$phase': use all, tests, layers or bench" >&2
    exit 2
    ;;
esac
# a kernel that failed its first-call self-check fell back to the stock path: say so loudly
grep -h "failed their self-check" "$OUT"/*.log "$OUT"/layers.txt 2>/dev/null | sort -u | head -5 \
  | sed 's/^/SELF-CHECK FAILED: /' | tee -a "$LOG"
say "done"
