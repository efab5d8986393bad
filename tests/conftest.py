"""Shared fixtures; GPU tests skip on machines without CUDA (nothing here queries it at import)."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU the Triton kernels run through the interpreter on CPU tensors. This must be set
# before anything imports triton; it affects nothing but Triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
