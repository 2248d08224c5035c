"""The logged encoder loads where sae-pipeline is not installed, and versions logged the old way still load."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from mlflow.types import DataType

from pipeline.tracking.pyfunc import MODEL_CODE, log_encoder_model, pip_requirements, signature
from pipeline.tracking.registry import register_model
from pipeline.tracking.sae_encoder_pyfunc import PortableEncoder
from pipeline.tracking.versions import Headline
from sae.config import SAEConfig
from sae.model import SparseAutoencoder
from sae.scaling import Scaling
from sae.stack import StackedEncoder
from tests.refuse_project import REFUSE_PROJECT

# Run in a child process: refuse the project's packages, load the registered model, print its codes as JSON.
LOAD_WITHOUT_PROJECT = REFUSE_PROJECT + """
import json
import mlflow, numpy as np
model = mlflow.pyfunc.load_model(sys.argv[1])
X = np.asarray(json.loads(sys.argv[2]), dtype=np.float64)
codes = model.predict(X)
assert np.array_equal(model.predict(X.astype(np.float32)), codes) and np.array_equal(model.predict(X.tolist()), codes)
print(json.dumps({"codes": codes.tolist(), "project": sorted(m for m in sys.modules if m.split(".")[0] in {"pipeline", "sae", "flows"})}))
"""


def stacked(scale: str = "standard") -> StackedEncoder:
    """64 -> 16 (sigmoid, kl) -> 8 (relu, top-3), the shapes and every code path the portable encoder mirrors."""
    torch.manual_seed(0)
    layers = [SparseAutoencoder(SAEConfig(64, 16)),
              SparseAutoencoder(SAEConfig(16, 8, sparsity="topk", k=3, encoder_activation="relu"))]
    rng = np.random.default_rng(0)
    clip = scale == "unit"
    scaling = Scaling(scale, rng.normal(size=64).astype(np.float32), rng.uniform(0.05, 0.2, 64).astype(np.float32),
                      0.1 if clip else 0.0, clip)
    between = Scaling("standard", rng.uniform(0.2, 0.8, 16).astype(np.float32),
                      rng.uniform(2.0, 5.0, 16).astype(np.float32), 0.0, False)  # layer 2 reads standardised codes
    return StackedEncoder.from_autoencoders(scaling, layers, meta={"name": "portable"}, code_scalings=[between])


def sample(n: int = 20) -> np.ndarray:
    return np.random.default_rng(n).normal(size=(n, 64))


@pytest.mark.parametrize("scale", ["standard", "unit"])
def test_the_portable_encoder_gives_the_stacked_encoders_codes(tmp_path, scale):
    encoder = stacked(scale)
    portable = PortableEncoder(encoder.save(tmp_path / "enc"))
    X = sample()
    np.testing.assert_allclose(portable.transform(X), encoder.transform(X), atol=1e-6)
    assert (portable.transform(X) > 0).sum(axis=1).max() <= 3  # top-3 kept per row
    with pytest.raises(ValueError, match=r"expects \(n, 64\)"):
        portable.transform(X[:, :10])


def test_the_signature_is_unnamed_double_columns_in_and_float32_codes_out():
    spec = signature(stacked())
    assert not spec.inputs.is_tensor_spec() and not spec.inputs.has_input_names()
    assert [c.type for c in spec.inputs.inputs] == [DataType.double] * 64
    (codes,) = spec.outputs.inputs
    assert (codes.type, codes.shape) == (np.dtype(np.float32), (-1, 8))


def test_the_pins_are_public_packages_only():
    names = [pin.split("==")[0] for pin in pip_requirements()]
    assert names == ["torch", "numpy", "pandas", "safetensors", "mlflow"]
    assert all("+" not in pin for pin in pip_requirements())  # torch's +cpu local tag is not on any index


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_TELEMETRY", "false")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    yield uri, MlflowClient(uri)
    mlflow.set_tracking_uri(None)


def test_a_registered_encoder_loads_in_a_process_without_the_project(store, tmp_path):
    uri, client = store
    encoder = stacked()
    run = client.create_run("0")
    info = log_encoder_model(encoder, run_id=run.info.run_id, tracking_uri=uri, input_example=sample(5))
    register_model(client, name="portable-encoder", source=info.model_uri, run_id=run.info.run_id,
                   headline=Headline("acc", 0.5, True), model_id=info.model_id)
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "model"),
                                                     tracking_uri=uri))
    assert (local / "code" / "sae_encoder_pyfunc.py").is_file()
    assert "sae-pipeline" not in (local / "requirements.txt").read_text()
    assert "from sae_encoder_pyfunc import EncoderModel" in next(local.glob("*.py")).read_text()

    X = sample(7)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"MLFLOW_TRACKING_URI": uri}
    done = subprocess.run([sys.executable, "-I", "-c", LOAD_WITHOUT_PROJECT, "models:/portable-encoder@champion",
                           json.dumps(X.tolist())], cwd=outside, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["project"] == []
    np.testing.assert_allclose(np.array(out["codes"]), encoder.transform(X), atol=1e-6)


@pytest.mark.parametrize("module", ["pipeline.tracking.pyfunc", "pipeline.pyfunc"])
def test_a_version_logged_in_the_old_layout_still_loads(store, tmp_path, module):
    uri, client = store
    encoder = stacked()
    weights = encoder.save(tmp_path / "encoder")
    code = tmp_path / "encoder_model.py"  # the model code versions were logged with before code_paths
    code.write_text(f"from mlflow.models import set_model\n\nfrom {module} import EncoderModel\n\n"
                    "set_model(EncoderModel())\n")
    assert "sae_encoder_pyfunc" in MODEL_CODE  # the current layout is different
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="encoder", python_model=str(code), artifacts={"encoder": str(weights)},
                                       pip_requirements=["sae-pipeline==0.1.0"])
    model = mlflow.pyfunc.load_model(info.model_uri)
    X = sample(9)
    np.testing.assert_allclose(model.predict(X), encoder.transform(X), atol=1e-6)


NAMES = [f"pixel_{i}" for i in range(64)]
FORMS = {  # how downstream code calls predict: (input, rows it stands for)
    "dataframe": lambda X, names: pd.DataFrame(X, columns=names),
    "dataframe, columns shuffled": lambda X, names: pd.DataFrame(X, columns=names)[names[::-1]],
    "numpy float32": lambda X, names: X.astype(np.float32),
    "numpy float64": lambda X, names: X.astype(np.float64),
    "list of lists": lambda X, names: X.tolist(),
}


@pytest.mark.parametrize("named", [True, False], ids=["named columns", "unnamed columns"])
def test_load_model_predicts_from_a_dataframe_an_array_of_either_float_and_a_list(store, tmp_path, named):
    uri, client = store
    encoder = stacked()
    names = NAMES if named else [f"x{i}" for i in range(64)]
    encoder.meta["feature_names"] = names
    run = client.create_run("0")
    info = log_encoder_model(encoder, run_id=run.info.run_id, tracking_uri=uri, input_example=sample(5))
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(info.model_uri)
    X = sample(6)
    expected = encoder.transform(X)
    for form, make in FORMS.items():
        if "shuffled" in form and not named:
            continue  # made-up names say nothing about order
        codes = model.predict(make(X, names))
        assert codes.dtype == np.float32 and codes.shape == (6, 8), form
        np.testing.assert_allclose(codes, expected, atol=1e-6, err_msg=form)
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "model")))
    example = json.loads((local / "input_example.json").read_text())
    assert (example["columns"] if named else len(example)) == (NAMES if named else 5)  # the names a caller sees on the model page


def test_a_dataframe_missing_a_named_feature_is_refused_with_the_column_named(store):
    uri, client = store
    encoder = stacked()
    encoder.meta["feature_names"] = NAMES
    run = client.create_run("0")
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(log_encoder_model(encoder, run_id=run.info.run_id, tracking_uri=uri).model_uri)
    frame = pd.DataFrame(sample(3), columns=NAMES).rename(columns={"pixel_7": "label"})
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"lacks feature column\(s\) \['pixel_7'\]"):
        model.predict(frame)
