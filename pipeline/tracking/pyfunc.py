"""The stacked encoder as an MLflow pyfunc model: weights as an artifact directory, never a pickled object.

A logged model directory holds ``artifacts/encoder/`` (``config.json`` + ``model.safetensors`` from
``StackedEncoder.save``), ``code/sae_encoder_pyfunc.py`` (the self-contained model class, bundled with
``code_paths``) and a three-line "model from code" script that instantiates it, so nothing is cloudpickled and
loading needs only torch, numpy, safetensors, pandas and mlflow: not sae-pipeline. Its ``predict`` takes raw
features and returns the top-layer codes (n, d_out) float32. The signature names the input columns when the
data had real column names, and is a float64 (-1, d_in) tensor otherwise.

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


def signature(encoder: StackedEncoder, feature_names: Sequence[str] | None = None) -> ModelSignature:
    """Named double columns when the data had column names, else one float64 (-1, d_in) tensor; float32 codes out.

    Named columns take a DataFrame with those columns (any order: MLflow matches them by name, so a table
    with the columns shuffled still encodes right; a bare array is refused); the tensor takes a float64
    (n, d_in) array. Either way MLflow checks the input before the encoder runs.
    """
    names = list(feature_names or encoder.meta.get("feature_names") or [])
    if len(names) == encoder.d_in and not generated_names(names):
        inputs = Schema([ColSpec(DataType.double, name) for name in names])
    else:
        inputs = Schema([TensorSpec(np.dtype(np.float64), (-1, encoder.d_in))])
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, encoder.d_out))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _example(encoder: StackedEncoder, signature_: ModelSignature, rows: np.ndarray | None) -> object:
    """The first rows as the signature expects them: a DataFrame for named columns, a float64 array otherwise."""
    if rows is None:
        return None
    X = np.asarray(rows[:EXAMPLE_ROWS], dtype=np.float64)
    if signature_.inputs.has_input_names() and not signature_.inputs.is_tensor_spec():
        import pandas as pd

        return pd.DataFrame(X, columns=signature_.inputs.input_names())
    return X


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
            input_example=_example(encoder, spec, input_example),
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


__all__ = ["EncoderModel", "log_encoder_model", "pip_requirements", "signature", "warm_requirement_checks",
           "weights_dir"]
