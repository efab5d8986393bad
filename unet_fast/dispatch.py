"""The one place that decides which implementation runs a forward pass.

A backend serves one device type for inference. :func:`select_backend` picks the reference ops
whenever autograd is recording or train-mode layers (BatchNorm batch statistics, active dropout)
would change the result; otherwise the first registered backend for the input's device that
``supports`` the call. New kernels plug in with :func:`register_backend`, without touching the
model code. A traced forward (export, ONNX, ``torch.jit.trace``, ``torch.compile``) is decided by
:func:`traced_backend`; see :mod:`unet_fast.tracing` for what each tracer gets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

from . import tracing
from .backends.portable import PORTABLE
from .packing import uses_train_mode_layers

if TYPE_CHECKING:
    from .model import UNet


class Backend(Protocol):
    """An inference implementation of the U-Net forward for one device type."""

    name: str
    #: Whether ``forward`` can be traced by Dynamo/``torch.export`` (custom ops with fake
    #: kernels, no eager-only caches); optional, False when absent.
    traceable: bool

    def supports(self, model: UNet, x: torch.Tensor) -> bool:
        """Whether this backend can run ``model(x)`` exactly (dtype, shapes, availability)."""
        ...

    def forward(self, model: UNet, x: torch.Tensor) -> torch.Tensor:
        """``model(x)`` in inference mode; ``x`` has passed input validation and is non-empty."""
        ...


class ReferenceBackend:
    """The reference ops on the model's own parameters: autograd-capable, any device and dtype."""

    name = "reference"

    def supports(self, model: UNet, x: torch.Tensor) -> bool:
        return True

    def forward(self, model: UNet, x: torch.Tensor) -> torch.Tensor:
        return model.reference_forward(x)


REFERENCE = ReferenceBackend()
_REGISTRY: dict[str, list[Backend]] = {}


def register_backend(device_type: str, backend: Backend, first: bool = True) -> None:
    """Make ``backend`` a candidate for inputs on ``device_type`` (tried first unless first=False)."""
    backends = _REGISTRY.setdefault(device_type, [])
    backends[:] = [b for b in backends if b.name != backend.name]
    backends.insert(0 if first else len(backends), backend)


def registered_backends(device_type: str) -> list[str]:
    """Names of the backends registered for ``device_type``, in the order they are tried."""
    return [b.name for b in _REGISTRY.get(device_type, [])]


def compute_dtype(x: torch.Tensor, param_dtype: torch.dtype) -> torch.dtype:
    """The dtype PyTorch itself would compute a convolution in: autocast's, else the weights'."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return param_dtype


def needs_reference(model: UNet, x: torch.Tensor) -> bool:
    """Whether only the reference ops give the right answer (autograd or train-mode layers)."""
    if torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for p in model.parameters())
    ):
        return True
    return uses_train_mode_layers(model)


def select_backend(model: UNet, x: torch.Tensor) -> Backend:
    """The backend that :meth:`unet_fast.UNet.forward` uses for ``x``."""
    if tracing.is_tracing():
        return traced_backend(model, x)
    if needs_reference(model, x):
        return REFERENCE
    for backend in _REGISTRY.get(x.device.type, []):
        if backend.supports(model, x):
            return backend
    return REFERENCE


def traced_backend(model: UNet, x: torch.Tensor) -> Backend:
    """The backend a tracer records: the reference ops where train-mode layers (or, under
    ``torch.compile``, autograd) need them; a traceable backend of the device under
    ``torch.compile`` (and in exports inside :func:`unet_fast.tracing.kernels_in_export`);
    otherwise the portable graph."""
    if uses_train_mode_layers(model):
        return REFERENCE
    exporting = tracing.is_exporting()
    if not exporting and needs_reference(model, x):
        return REFERENCE
    if not exporting or tracing.kernels_wanted():
        for backend in _REGISTRY.get(x.device.type, []):
            if getattr(backend, "traceable", False) and backend.supports(model, x):
                return backend
    return PORTABLE
