#!/usr/bin/env bash
# Installs unet_fast and what it needs into the current Python, from scratch, on a CPU machine or a
# GPU machine that already has a CUDA build of torch.
#
# torch: the machine's own build is kept if it satisfies the project's range; otherwise the CPU
# build 2.13.0 is installed. The package is then built with --no-build-isolation, so the extension
# compiles against that torch instead of pip downloading another one into an isolated build env.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

if ! "$PY" - <<'PYEOF' 2>/dev/null
import sys
import torch
major, minor = (int(v) for v in torch.__version__.split(".")[:2])
sys.exit(0 if (2, 11) <= (major, minor) < (2, 14) else 1)
PYEOF
then
  echo "== installing torch 2.13.0 (CPU build)"
  "$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
echo "== build tools"
"$PY" -m pip install --quiet --disable-pip-version-check "setuptools>=64" wheel ninja pybind11
# the optional extras the tests use; zarr 3 (the distributed extra) needs Python 3.11+
EXTRAS="dev,onnx,monai"
if "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  EXTRAS="$EXTRAS,distributed"
fi
echo "== unet_fast (builds unet_fast._C), with the extras $EXTRAS"
"$PY" -m pip install --quiet --disable-pip-version-check --no-build-isolation -e ".[$EXTRAS]"
"$PY" -c "import unet_fast, unet_fast._C; print('unet_fast', unet_fast.__version__, 'installed')"
