"""``SAETransformer``: the stacked encoder as a scikit-learn transformer (train in ``fit`` or wrap a model URI)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from pipeline.config import SAESettings
from pipeline.config.layer import auto_decoder
from pipeline.data.codes import encode_in_chunks
from pipeline.data.labels import UNLABELED, UNLABELED_NAME
from pipeline.data.scaling import fit_scaling
from pipeline.errors import InputError
from sae import SAEConfig, train_autoencoder
from sae.stack import StackedEncoder


class SAETransformer(TransformerMixin, BaseEstimator):
    """Greedily pretrains a sparse-autoencoder stack on X (or loads ``model_uri``); transform gives top codes.

    ``hidden`` lists the layer sizes, bottom first; every layer shares the other settings, which mean what
    ``sae.SAEConfig``'s fields and the config's layer settings (epochs, batch_size, lr, optimizer) mean, with
    the same defaults (tests/pipeline/config/test_single_source.py holds them equal). Inputs are scaled as ``scale``
    says, and each layer's codes as ``code_scaling`` says before the layer above trains on them (as the
    pipeline's ``code_scaling``: standard by default); both are fitted on X and carried inside the encoder.
    ``decoder_activation="auto"`` uses sigmoid where a layer's inputs lie in [0, 1] (``scale`` unit on layer 1;
    ``code_scaling`` unit, or none after sigmoid codes, above) and linear otherwise. With ``model_uri``
    (``models:/name@alias``, ``runs:/...`` or a folder) ``fit`` loads that encoder and trains nothing.
    """

    def __init__(
        self,
        hidden: Sequence[int] = (200,),
        *,
        sparsity: str = "kl",
        target: float = 0.1,
        beta: float = 3.0,
        k: int | None = None,
        weight_decay: float = 0.003,
        encoder_activation: str = "sigmoid",
        decoder_activation: str = "auto",
        tied: bool = False,
        noise: float = 0.0,
        epochs: int = 50,
        batch_size: int = 128,
        lr: float = 0.003,
        optimizer: str = "adam",
        scale: str = "unit",
        code_scaling: str = "standard",
        seed: int = 0,
        model_uri: str | None = None,
        tracking_uri: str | None = None,
    ) -> None:
        self.hidden = hidden
        self.sparsity = sparsity
        self.target = target
        self.beta = beta
        self.k = k
        self.weight_decay = weight_decay
        self.encoder_activation = encoder_activation
        self.decoder_activation = decoder_activation
        self.tied = tied
        self.noise = noise
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.scale = scale
        self.code_scaling = code_scaling
        self.seed = seed
        self.model_uri = model_uri
        self.tracking_uri = tracking_uri

    def fit(self, X: Any, y: Any = None) -> SAETransformer:
        """Train the stack on every row of X (n, d_in), or load ``model_uri``.

        ``y`` (optional, one label per row) is not used by the layers: they are unsupervised, so rows labeled -1
        (scikit-learn's semi-supervised convention), NaN or None train them like any other. That makes the
        transformer the first step of a semi-supervised pipeline, e.g. ``make_pipeline(SAETransformer(),
        LabelSpreading())`` or ``make_pipeline(SAETransformer(), SelfTrainingClassifier(LogisticRegression()))``:
        the stack learns from all rows, the next step from the labeled ones. ``n_labeled_`` counts those.
        """
        X = validate_data(self, X, dtype=np.float32, reset=True)
        if y is not None:
            y = np.asarray(y)
            if y.ndim != 1 or y.shape[0] != X.shape[0]:
                raise ValueError(f"y has shape {y.shape} but X has {X.shape[0]} rows; give one label per row "
                                 "(-1 or NaN for a row without one), or no y")
            missing = np.asarray(pd.isna(y), bool) | (y == (UNLABELED_NAME if y.dtype.kind in "US" else UNLABELED))
            self.n_labeled_ = int(y.shape[0] - np.count_nonzero(missing))
        if self.model_uri is not None:
            from pipeline.tracking.encoders import (
                resolve_encoder,  # imports mlflow: only when wrapping a model
            )

            self.encoder_ = resolve_encoder(self.model_uri, self.tracking_uri)
            if self.encoder_.d_in != X.shape[1]:
                raise InputError(f"X has {X.shape[1]} features but the encoder {self.model_uri} expects "
                                 f"{self.encoder_.d_in}; pass the columns it was trained on")
        else:
            self.encoder_ = self._train(X)
        self.n_features_out_ = self.encoder_.d_out
        return self

    def _train(self, X: np.ndarray) -> StackedEncoder:
        sizes = [self.hidden] if isinstance(self.hidden, int) else list(self.hidden)
        if not sizes:
            raise InputError("SAETransformer.hidden is empty: give at least one layer size, e.g. hidden=(200,)")
        scaling = fit_scaling(X, self.scale)  # type: ignore[arg-type]
        inputs = scaling.transform(X)
        layers, code_scalings = [], []
        for i, d_hidden in enumerate(sizes):
            if i > 0:
                code_scalings.append(fit_scaling(inputs, self.code_scaling))  # type: ignore[arg-type]
                inputs = code_scalings[-1].transform(inputs)
            layer = {name: getattr(self, name) for name in SAESettings.model_fields} | {"decoder_activation": self._decoder(i)}
            config = SAEConfig(d_in=int(inputs.shape[1]), d_hidden=int(d_hidden), **layer)
            model = train_autoencoder(inputs, config, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                                      optimizer=self.optimizer, seed=self.seed + i, patience=None)  # type: ignore[arg-type]
            layers.append(model)
            inputs = encode_in_chunks(model.encode, inputs, config.d_hidden)
        names = [str(n) for n in getattr(self, "feature_names_in_", [f"x{j}" for j in range(X.shape[1])])]
        return StackedEncoder.from_autoencoders(scaling, layers, meta={"feature_names": names},
                                                code_scalings=code_scalings)

    def _decoder(self, index: int) -> str:
        if self.decoder_activation != "auto":
            return self.decoder_activation
        return auto_decoder(index, self.scale, self.code_scaling, self.encoder_activation)

    def transform(self, X: Any) -> np.ndarray:
        """(n, d_in) raw features -> (n, d_out) float32 top-layer codes."""
        check_is_fitted(self, "encoder_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        return self.encoder_.transform(X)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """``sae0``, ``sae1``, ... one per top-layer unit."""
        check_is_fitted(self, "encoder_")
        return np.asarray([f"sae{i}" for i in range(self.n_features_out_)], dtype=object)
