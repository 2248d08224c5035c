"""Sparse autoencoder layers: the model, its penalties, its Lightning training and the stacked encoder."""

from sae.config import SAEConfig
from sae.model import Objective, SparseAutoencoder
from sae.scaling import InputScaler, Scaling
from sae.train import check_inputs, train_autoencoder

__all__ = [
    "InputScaler",
    "Objective",
    "SAEConfig",
    "Scaling",
    "SparseAutoencoder",
    "check_inputs",
    "train_autoencoder",
]
