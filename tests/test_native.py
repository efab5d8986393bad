"""The native extension is built by the install and loads on a CPU-only machine."""

from __future__ import annotations

import importlib

import torch

from unet_fast._native import load_native, native_available


def test_native_library_loads_and_registers_namespace():
    load_native()
    assert native_available()
    mod = importlib.import_module("unet_fast._C")
    assert mod.__file__.endswith((".so", ".pyd"))
    assert hasattr(torch.ops, "unet_fast")
