"""Input scaling fitted on training data and carried inside the stacked encoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

ScaleKind = Literal["unit", "standard", "none"]


@dataclass(frozen=True)
class Scaling:
    """Per-feature affine map ``(x - shift) * factor + offset``, optionally clipped to [0, 1]."""

    kind: ScaleKind
    shift: np.ndarray  # (d_in,) float32
    factor: np.ndarray  # (d_in,) float32
    offset: float
    clip: bool

    @classmethod
    def identity(cls, d_in: int) -> Scaling:
        """The ``none`` scaling for ``d_in`` features."""
        return cls("none", np.zeros(d_in, np.float32), np.ones(d_in, np.float32), 0.0, False)

    @property
    def d_in(self) -> int:
        return int(self.shift.shape[0])

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(n, d_in) raw features -> (n, d_in) float32 scaled features."""
        y = (np.asarray(x, dtype=np.float32) - self.shift) * self.factor + np.float32(self.offset)
        return np.clip(y, 0.0, 1.0) if self.clip else y


class InputScaler(nn.Module):
    """Torch twin of :class:`Scaling`: ``(batch, d_in) -> (batch, d_in)``."""

    def __init__(self, scaling: Scaling) -> None:
        super().__init__()
        self.kind: str = scaling.kind
        self.offset = float(scaling.offset)
        self.clip = bool(scaling.clip)
        self.register_buffer("shift", torch.as_tensor(np.asarray(scaling.shift, np.float32)))
        self.register_buffer("factor", torch.as_tensor(np.asarray(scaling.factor, np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (x - self.shift) * self.factor + self.offset
        return y.clamp(0.0, 1.0) if self.clip else y

    def to_scaling(self) -> Scaling:
        """Back to the numpy description (for saving)."""
        return Scaling(
            self.kind,  # type: ignore[arg-type]
            self.shift.detach().cpu().numpy(),
            self.factor.detach().cpu().numpy(),
            self.offset,
            self.clip,
        )
