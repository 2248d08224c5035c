"""The stacked encoder as an MLflow pyfunc model: weights as an artifact directory, never a pickled object.

A logged model directory holds ``artifacts/encoder/`` (``config.json`` + ``model.safetensors`` from
``StackedEncoder.save``) and a three-line "model from code" script that instantiates ``EncoderModel``
(so not even the wrapper is cloudpickled); ``load_context`` rebuilds the module with ``StackedEncoder.load``.
Its ``predict`` takes raw features, a numpy array (float64, float32 or int32) or a DataFrame with the
training columns in training order (matched by position), and returns the top-layer codes (n, d_out)
float32. Loading needs ``sae-pipeline`` installed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.tracking.context.registry import resolve_tags
from mlflow.types import ColSpec, DataType, Schema, TensorSpec

from pipeline.tracking.store import client, use_tracking_uri
from sae.stack import StackedEncoder

ARTIFACT_KEY = "encoder"  # the key of the weights directory in the pyfunc model's artifacts
EXAMPLE_ROWS = 5
_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
_PACKAGES = ("torch", "numpy", "pandas", "safetensors", "mlflow", "sae-pipeline")
MODEL_CODE = """\
# sae-pipeline encoder: the pyfunc model is pipeline.tracking.pyfunc.EncoderModel; weights are in artifacts/encoder.
from mlflow.models import set_model

from pipeline.tracking.pyfunc import EncoderModel

set_model(EncoderModel())
"""


class EncoderModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: raw features (n, d_in) -> top-layer codes (n, d_out)."""

    def load_context(self, context: Any) -> None:
        """Rebuild the StackedEncoder from the safetensors weights and config JSON in the artifacts."""
        self.encoder = StackedEncoder.load(Path(context.artifacts[ARTIFACT_KEY]))

    # The np.ndarray hint is one MLflow infers no schema from (any other hint warns), so the signature governs.
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """Top-layer codes (n, d_out) float32 of raw features (MLflow hands over a DataFrame after its checks)."""
        X = model_input.to_numpy() if isinstance(model_input, pd.DataFrame) else np.asarray(model_input)
        return self.encoder.transform(np.asarray(X, dtype=np.float32))


def pip_requirements() -> list[str]:
    """Exact pins of what loading the model needs (explicit: inferring them costs ~10 s a model)."""
    pins = []
    for name in _PACKAGES:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def signature(encoder: StackedEncoder) -> ModelSignature:
    """d_in unnamed double columns in, float32 (-1, d_out) codes out.

    Unnamed columns (not one float64 tensor) because MLflow then accepts float64, float32 and int32 arrays and
    DataFrames alike, checking only the column count and that values convert safely to double.
    """
    inputs = Schema([ColSpec(DataType.double) for _ in range(encoder.d_in)])
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, encoder.d_out))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_encoder_model(
    encoder: StackedEncoder,
    *,
    run_id: str,
    tracking_uri: str,
    name: str = "encoder",
    input_example: np.ndarray | None = None,
    tags: dict[str, str] | None = None,
) -> ModelInfo:
    """Log ``encoder`` as pyfunc model ``name`` of run ``run_id``; its ``model_uri`` can be registered."""
    example = None if input_example is None else np.asarray(input_example[:EXAMPLE_ROWS], dtype=np.float64)
    mlflow_client = client(tracking_uri)
    # Created here because Model.log would file it under the fluent default experiment, not the run's.
    model = mlflow_client.create_logged_model(
        mlflow_client.get_run(run_id).info.experiment_id, name=name, source_run_id=run_id, tags=resolve_tags(tags)
    )
    with tempfile.TemporaryDirectory(prefix="sae-encoder-") as tmp, use_tracking_uri(tracking_uri), _no_progress_bars():
        weights = Path(tmp) / ARTIFACT_KEY
        encoder.save(weights)
        code = Path(tmp) / "encoder_model.py"
        code.write_text(MODEL_CODE)
        return Model.log(
            artifact_path=None,
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=model.model_id,
            python_model=str(code),
            artifacts={ARTIFACT_KEY: str(weights)},
            signature=signature(encoder),
            input_example=example,
            pip_requirements=pip_requirements(),
        )


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Silence the download bars MLflow prints while it checks the input example against the model."""
    old = os.environ.get(_PROGRESS_BAR)
    os.environ[_PROGRESS_BAR] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(_PROGRESS_BAR, None)
        else:
            os.environ[_PROGRESS_BAR] = old


def weights_dir(model_dir: Path) -> Path | None:
    """The encoder weights inside a downloaded pyfunc model directory, or None if it is not one of ours."""
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        return None
    flavor = Model.load(str(mlmodel)).flavors.get("python_function", {})
    path = flavor.get("artifacts", {}).get(ARTIFACT_KEY, {}).get("path")
    return None if path is None else model_dir / path
