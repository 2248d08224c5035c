"""The stacked encoder as an MLflow pyfunc model: weights as an artifact directory, never a pickled object.

A logged model directory holds ``artifacts/encoder/`` (``config.json`` + ``model.safetensors`` from
``StackedEncoder.save``), ``code/sae_encoder_pyfunc.py`` (the self-contained model class, bundled with
``code_paths``) and a three-line "model from code" script that instantiates it, so nothing is cloudpickled and
loading needs only torch, numpy, safetensors, pandas and mlflow: not sae-pipeline. Its ``predict`` takes raw
features (a DataFrame, a numpy array of float32 or float64, or a list of rows) and returns the top-layer codes
(n, d_out) float32; the signature (``signature``) is chosen so MLflow's enforcement lets all three through.

Versions logged before the code was bundled import ``pipeline.tracking.pyfunc.EncoderModel`` (or
``pipeline.pyfunc.EncoderModel``): both names still point at the same class.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow
import numpy as np
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.tracking.context.registry import resolve_tags
from mlflow.types import ColSpec, DataType, Schema, TensorSpec

from pipeline.tracking import sae_encoder_pyfunc
from pipeline.tracking.sae_encoder_pyfunc import ARTIFACT_KEY, EncoderModel
from pipeline.tracking.store import client, use_tracking_uri
from sae.stack import StackedEncoder

EXAMPLE_ROWS = 5
_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
PACKAGES = ("torch", "numpy", "pandas", "safetensors", "mlflow")  # public packages the bundled code imports
MODEL_CODE = """\
# sae-pipeline encoder: the model class is code/sae_encoder_pyfunc.py; weights are in artifacts/encoder.
from mlflow.models import set_model

from sae_encoder_pyfunc import EncoderModel

set_model(EncoderModel())
"""


def pip_requirements() -> list[str]:
    """Exact pins of the public packages loading the model needs (explicit: inferring them costs ~10 s a model)."""
    pins = []
    for name in PACKAGES:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")  # torch 2.x+cpu -> the index's 2.x
        except PackageNotFoundError:
            pins.append(name)
    return pins


def generated_names(names: Sequence[str]) -> bool:
    """True for the ``x0, x1, ...`` names the readers make up for files without column names."""
    return list(names) == [f"x{i}" for i in range(len(names))]


def signature(encoder: StackedEncoder) -> ModelSignature:
    """``d_in`` unnamed double columns in, float32 (-1, d_out) codes out: the one input schema MLflow 3.17's strict
    enforcement lets a DataFrame, a numpy array (float32 or float64) and a list of rows all through.

    Named columns would refuse arrays and lists, a float64 tensor refuses float32 arrays (the dtype this
    pipeline trains in), a float32 tensor refuses float64. The bundled ``predict`` matches a DataFrame's
    columns by the training's feature names when it has them (any order), else takes them in order; the names
    show in the input example and the model version's description.
    """
    inputs = Schema([ColSpec(DataType.double) for _ in range(encoder.d_in)])
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, encoder.d_out))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def feature_names(encoder: StackedEncoder) -> list[str] | None:
    """The training data's column names, when it had real ones (not the readers' made-up ``x0, x1, ...``)."""
    names = list(encoder.meta.get("feature_names") or [])
    return names if len(names) == encoder.d_in and not generated_names(names) else None


def _example(encoder: StackedEncoder, rows: np.ndarray | None) -> object:
    """The first rows, as a DataFrame named by the features when the data named them (the names a caller sees)."""
    if rows is None:
        return None
    X = np.asarray(rows[:EXAMPLE_ROWS], dtype=np.float64)
    names = feature_names(encoder)
    if names is None:
        return X
    import pandas as pd

    return pd.DataFrame(X, columns=names)


def warm_requirement_checks() -> None:
    """Build MLflow's map of installed packages now: logging a model builds it once per process (~0.4 s) to
    compare the model's requirements with this environment, on the run's critical path unless done earlier."""
    from mlflow.utils.requirements_utils import _init_modules_to_packages_map  # private; mlflow is pinned

    _init_modules_to_packages_map()


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
    mlflow_client = client(tracking_uri)
    # Created here because Model.log would file it under the fluent default experiment, not the run's.
    model = mlflow_client.create_logged_model(
        mlflow_client.get_run(run_id).info.experiment_id, name=name, source_run_id=run_id, tags=resolve_tags(tags)
    )
    spec = signature(encoder)
    with tempfile.TemporaryDirectory(prefix="sae-encoder-") as tmp, use_tracking_uri(tracking_uri), \
            _no_progress_bars(), _on_sys_path(Path(tmp) / "code"):
        weights = Path(tmp) / ARTIFACT_KEY
        encoder.save(weights)
        code = Path(tmp) / "encoder_model.py"
        code.write_text(MODEL_CODE)
        bundled = Path(tmp) / "code" / Path(sae_encoder_pyfunc.__file__).name
        bundled.parent.mkdir()
        shutil.copyfile(sae_encoder_pyfunc.__file__, bundled)
        return Model.log(
            artifact_path=None,
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=model.model_id,
            python_model=str(code),
            code_paths=[str(bundled)],
            artifacts={ARTIFACT_KEY: str(weights)},
            signature=spec,
            input_example=_example(encoder, input_example),
            pip_requirements=pip_requirements(),
        )


@contextmanager
def _on_sys_path(directory: Path) -> Iterator[None]:
    """MLflow runs the model code once while logging: let it import the bundled module as it will when loading."""
    sys.path.insert(0, str(directory))
    try:
        yield
    finally:
        sys.path.remove(str(directory))


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


__all__ = ["EncoderModel", "feature_names", "log_encoder_model", "pip_requirements", "signature", "warm_requirement_checks",
           "weights_dir"]
