"""Where fine-tuning runs, decided from the trainer's settings without loading Lightning (a run whose
fine-tuning is cached asks too, for its cache key)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class Device:
    """Where fine-tuning runs, and the Lightning settings that put it there."""

    torch: torch.device
    precision: str = "32-true"

    @classmethod
    def of(cls, trainer_options: dict[str, Any]) -> Device:
        """A GPU when the trainer's accelerator asks for one and there is one; the trainer's precision."""
        wants_gpu = str(trainer_options.get("accelerator", "cpu")) in ("gpu", "cuda", "auto")
        where = torch.device("cuda") if wants_gpu and torch.cuda.is_available() else torch.device("cpu")
        return cls(where, str(trainer_options.get("precision", "32-true")))

    def tensor(self, X: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(self.torch)
