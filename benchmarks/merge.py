"""Merge benchmark results of one device (runs split over several device calls by --model, --rows
or --tag) into one document with every row: ``python benchmarks/merge.py A.json B.json ...``.

A thin wrapper over :mod:`unet_fast.benchmark.merge`; the merged JSON and PNG go to
``benchmarks/results/<device>.json`` beside this file unless --out-dir says otherwise.
"""

import sys
from pathlib import Path

from unet_fast.benchmark.merge import main

if __name__ == "__main__":
    sys.exit(main(default_out_dir=str(Path(__file__).resolve().parent / "results")))
