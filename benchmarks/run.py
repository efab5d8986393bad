"""The project's benchmark: ``python benchmarks/run.py [--quick] [--help]``.

A thin wrapper over :mod:`unet_fast.benchmark` (also ``unet-fast bench``); results go to
``benchmarks/results/<device>-local.json`` and ``.png`` beside this file (``-quick`` with --quick);
``--publish`` replaces the committed ``<device>.json``; ``--out-dir`` writes ``<device>.json``
elsewhere.
"""

import sys
from pathlib import Path

from unet_fast.benchmark import main

if __name__ == "__main__":
    sys.exit(main(default_out_dir=str(Path(__file__).resolve().parent / "results")))
