"""Inference backends, one module per device family, registered with :mod:`unet_fast.dispatch`."""
