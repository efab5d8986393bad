"""Adapters for other tools' APIs. Each submodule imports its tool; ``import unet_fast`` imports
none of them."""
