"""Registration of the Triton ops: shared namespace with the native library, opcheck."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from unet_fast.triton_kernels.conv3x3 import pack_conv3x3_weight, pack_head_weight
from unet_fast.triton_kernels.upconv import pack_upconv_weight

from unet_fast.ops import fused

from .triton_helpers import DEVICE, needs_triton

pytestmark = needs_triton


@pytest.mark.parametrize("native_first", [True, False])
def test_triton_ops_share_the_namespace_with_torch_library(native_first):
    """csrc's TORCH_LIBRARY(unet_fast) (a DEF library) and triton_op's FRAGMENT registrations
    coexist, whichever loads first."""
    native = "from unet_fast._native import load_native; load_native(); "
    triton = "import unet_fast.ops.fused; "
    code = ("import torch; " + (native + triton if native_first else triton + native)
            + "print(torch.ops.unet_fast.conv3x3_cat.default._schema)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("unet_fast::conv3x3_cat(Tensor skip, Tensor up")


def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype, device=DEVICE)


def opcheck_cases():
    x = _t(1, 3, 7, 6)
    w = pack_conv3x3_weight(_t(5, 3, 3, 3))
    return [
        (fused.conv3x3, (x, w, _t(5), 0, True, False)),
        (fused.conv3x3_pool, (x, w, None, 1, False)),
        (fused.conv3x3_cat, (_t(1, 2, 9, 8), x, pack_conv3x3_weight(_t(5, 5, 3, 3)), _t(5), 0,
                             True, False)),
        (fused.conv3x3_head, (x, w, _t(5), pack_head_weight(_t(2, 5, 1, 1)), _t(2), 1, False)),
        (fused.upconv2x2, (x, pack_upconv_weight(_t(3, 4, 2, 2)), _t(4), False)),
        (fused.crop_concat, (_t(1, 2, 9, 8), x, True)),
        (fused.maxpool2x2, (x,)),
        (fused.upsample_bilinear2x, (x,)),
    ]


def test_opcheck_all_ops():
    # schema, fake-tensor, autograd-registration and AOT-dispatch checks of every op
    for op, args in opcheck_cases():
        torch.library.opcheck(op, args,
                              test_utils=("test_schema", "test_faketensor",
                                          "test_autograd_registration"))


def test_every_op_launches_on_its_input_device(monkeypatch):
    """Triton launches on the *current* CUDA device: each op makes its input's device current
    first, so a model on cuda:1 does not launch on device 0's stream."""
    from unet_fast import _device

    seen = []
    real = _device.device_guard

    def recording(device):
        seen.append(device)
        return real(device)

    monkeypatch.setattr(_device, "device_guard", recording)
    for op, args in opcheck_cases():
        seen.clear()
        op(*args)
        assert seen == [args[0].device], op


def test_device_guard_selects_the_tensor_device():
    from unet_fast._device import device_guard

    guard = device_guard(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    with device_guard(torch.device("cpu")):  # nothing to select on the CPU
        pass
