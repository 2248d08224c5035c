"""Sparse autoencoder layers: the model, its penalties, its Lightning training and the stacked encoder."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sae.config import SAEConfig
    from sae.model import Objective, SparseAutoencoder
    from sae.scaling import InputScaler, Scaling
    from sae.stack import StackedEncoder
    from sae.train import check_inputs, train_autoencoder

# Resolved on first use: `sae.config` alone (the pipeline's config schema) must not pay for torch and Lightning.
_EXPORTS = {
    "InputScaler": "sae.scaling",
    "Objective": "sae.model",
    "SAEConfig": "sae.config",
    "Scaling": "sae.scaling",
    "SparseAutoencoder": "sae.model",
    "StackedEncoder": "sae.stack",
    "check_inputs": "sae.train",
    "train_autoencoder": "sae.train",
}
__all__ = ["InputScaler", "Objective", "SAEConfig", "Scaling", "SparseAutoencoder", "StackedEncoder", "check_inputs",
           "train_autoencoder"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sae' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
