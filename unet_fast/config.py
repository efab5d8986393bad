"""The U-Net hyper-parameters, validated once and shared by every model and backend."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PADDINGS = ("valid", "same")
NORMS = (None, "batch")
UPSAMPLES = ("transpose", "bilinear")


@dataclass(frozen=True)
class UNetConfig:
    """Constructor arguments of :class:`unet_fast.reference.UNet` and :class:`unet_fast.UNet`.

    The defaults are the paper's network: unpadded 3x3 convolutions, 64 base channels, four
    down-sampling levels, 2x2 transposed-convolution up-sampling, no normalisation.
    """

    in_channels: int = 1
    num_classes: int = 2
    base_channels: int = 64
    depth: int = 4
    padding: str = "valid"
    norm: str | None = None
    upsample: str = "transpose"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("in_channels", "num_classes", "base_channels", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.upsample == "bilinear" and self.base_channels % 2:
            raise ValueError(
                f"base_channels must be even with upsample='bilinear' (the bottleneck halves it), "
                f"got {self.base_channels}"
            )
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be one of {UPSAMPLES}, got {self.upsample!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise ValueError(f"dropout must be a float in [0, 1), got {self.dropout!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    def channels(self, level: int) -> int:
        """Feature channels of encoder level ``level`` (0 = top, ``depth`` = bottleneck)."""
        return self.base_channels * 2**level

    @property
    def conv_bias(self) -> bool:
        """Whether the 3x3 convolutions carry a bias (a following BatchNorm makes it redundant)."""
        return self.norm is None

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, used by checkpoints."""
        return asdict(self)
