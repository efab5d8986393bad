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


@pytest.fixture(autouse=True)
def _ieee_fp32():
    """fp32 means IEEE fp32 in the tests, whose fp32 tolerances (1e-5) TF32 cannot meet; PyTorch's
    default on CUDA is TF32 for convolutions, which the fast model follows. Tests of TF32 turn it
    on themselves."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
