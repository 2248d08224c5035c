"""The encoder's pyfunc model, self-contained: shipped inside every logged model as ``code/sae_encoder_pyfunc.py``.

It imports only torch, numpy, safetensors, pandas and mlflow (never ``sae`` or ``pipeline``), so a model logged
by sae-pipeline loads, serves and builds a Docker image where sae-pipeline is not installed. It reads the
``StackedEncoder.save`` format (``config.json`` + ``model.safetensors``) and mirrors ``StackedEncoder.forward``:
scale the raw features, then each layer's encoder half. ``tests/pipeline/tracking/test_portable_encoder.py`` holds the
two implementations to the same codes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from safetensors.torch import load_file

ARTIFACT_KEY = "encoder"  # the key of the weights directory in the pyfunc model's artifacts
FORMAT, FORMAT_VERSIONS = "sae-stacked-encoder", (1, 2)  # 2 adds the code scalings between layers
ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh}


class PortableEncoder(torch.nn.Module):
    """Raw features (batch, d_in) -> top-layer codes (batch, d_out), rebuilt from a saved encoder folder."""

    def __init__(self, directory: str | Path) -> None:
        super().__init__()
        directory = Path(directory)
        config = json.loads((directory / "config.json").read_text())
        if config.get("format") != FORMAT or config.get("format_version") not in FORMAT_VERSIONS:
            raise ValueError(f"{directory}/config.json: format {config.get('format')!r} version "
                             f"{config.get('format_version')!r}; this model code reads {FORMAT!r} versions "
                             f"{', '.join(map(str, FORMAT_VERSIONS))}")
        tensors = load_file(str(directory / "model.safetensors"))
        scaling = config["scaling"]
        self.shift, self.factor = tensors["scaler.shift"].float(), tensors["scaler.factor"].float()
        self.offset, self.clip = float(scaling["offset"]), bool(scaling["clip"])
        self.layers = config["layers"]
        self.weights = [(tensors[f"encoders.{i}.weight"].float(), tensors[f"encoders.{i}.bias"].float())
                        for i in range(len(self.layers))]
        self.meta: dict[str, Any] = config.get("meta") or {}
        # Between layer k and k+1: the affine map fitted on layer k's training codes (version 1: none).
        self.between = [(tensors[f"code_scalers.{i}.shift"].float(), tensors[f"code_scalers.{i}.factor"].float(),
                         float(entry["offset"]), bool(entry["clip"]))
                        for i, entry in enumerate(config.get("code_scalings") or [])]

    @property
    def d_in(self) -> int:
        """Number of raw input features."""
        return int(self.shift.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, d_in) raw features -> (batch, d_out) top-layer codes."""
        h = (x - self.shift) * self.factor + self.offset
        if self.clip:
            h = h.clamp(0.0, 1.0)
        for i, (layer, (weight, bias)) in enumerate(zip(self.layers, self.weights, strict=True)):
            if 0 < i <= len(self.between):
                shift, factor, offset, clip = self.between[i - 1]
                h = (h - shift) * factor + offset
                h = h.clamp(0.0, 1.0) if clip else h
            pre = torch.nn.functional.linear(h, weight, bias)
            h = ACTIVATIONS[layer["encoder_activation"]](pre)
            if layer["sparsity"] == "topk":  # keep the k largest pre-activations per row
                keep = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, pre.topk(layer["k"], dim=1).indices, True)
                h = h * keep
        return h

    def transform(self, X: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """(n, d_in) raw features -> (n, d_out) float32 codes, in ``batch_size`` row chunks."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.d_in:
            raise ValueError(f"input has shape {X.shape} but the encoder expects (n, {self.d_in}) features")
        with torch.no_grad():
            parts = [self(torch.from_numpy(X[i : i + batch_size])).numpy() for i in range(0, len(X), batch_size)]
        width = self.weights[-1][0].shape[0] if self.weights else self.d_in
        return np.concatenate(parts) if parts else np.empty((0, width), np.float32)


def as_features(model_input: Any, d_in: int, names: list[str] | None = None) -> np.ndarray:
    """What callers pass to ``predict`` as a (n, d_in) float32 array: a DataFrame (its columns matched by name when
    they are the training's feature names, else taken in order), a numpy array of any float dtype, or a list of rows.
    """
    if isinstance(model_input, pd.DataFrame):
        columns = [str(c) for c in model_input.columns]
        known = [n for n in names or [] if n in columns]
        if known and len(known) < len(names or []):
            missing = [n for n in names or [] if n not in columns]
            # An MlflowException: a served model answers it as 400 with this message, not as an internal error.
            raise MlflowException(f"input has columns {columns[:5]}... but lacks feature column(s) {missing[:5]} "
                                  f"({len(missing)} of {d_in}); pass all {d_in} named columns, or {d_in} in order",
                                  error_code=INVALID_PARAMETER_VALUE)
        frame = model_input.set_axis(columns, axis=1)
        model_input = frame[names] if known else frame
        model_input = model_input.to_numpy()
    X = np.asarray(model_input, dtype=np.float32)
    if X.ndim == 1 and X.size == d_in:  # one row
        X = X.reshape(1, d_in)
    return X


class EncoderModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: raw features (n, d_in) -> top-layer codes (n, d_out) float32."""

    def load_context(self, context: Any) -> None:
        """Rebuild the encoder from the safetensors weights and config JSON in the artifacts."""
        self.encoder = PortableEncoder(context.artifacts[ARTIFACT_KEY])

    # The np.ndarray hint is one MLflow infers no schema from (any other hint warns), so the signature governs.
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """Top-layer codes of raw features: a DataFrame (by feature name, else in order), an array or a list of rows."""
        names = self.encoder.meta.get("feature_names")
        return self.encoder.transform(as_features(model_input, self.encoder.d_in, list(names) if names else None))
