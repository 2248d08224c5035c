"""`sae-pipeline run` on a file whose unlabeled rows say -1, with an unlabeled pool: ten classes, an honest
champion, and the row counts in MLflow and Prefect (before: -1 was an eleventh class and test accuracy 0.000)."""

import json

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from sklearn.datasets import load_digits

from flows.cli import main as cli_main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("partial")
    X, y = load_digits(return_X_y=True)
    y = y.copy()
    y[np.random.default_rng(0).random(y.size) < 0.7] = -1  # 70% of the rows without a label
    np.savez(tmp / "partial.npz", X=X[:1500].astype(np.float32), y=y[:1500])
    np.save(tmp / "pool.npy", X[1500:].astype(np.float32))
    config = {
        "name": "partial", "seed": 0, "cache_dir": str(tmp / "cache"), "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "data": {"source": str(tmp / "partial.npz"), "features": "X", "labels": "y",
                 "unlabeled_source": str(tmp / "pool.npy")},
        "defaults": {"epochs": 8, "lr": 0.01}, "trainer": {"accelerator": "cpu"},
        "layers": [{"hidden": 32}], "finetune": {"epochs": 5, "lr": 0.003},
    }
    (tmp / "partial.yaml").write_text(yaml.safe_dump(config))
    return tmp, config


def test_run_on_minus_one_labels_learns_ten_classes_and_shows_the_counts(run, capsys):
    tmp, config = run
    capsys.readouterr()
    assert cli_main(["run", str(tmp / "partial.yaml"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    metrics = printed["metrics"]
    assert metrics["encoder.test_accuracy"] > 0.6  # was 0.000: every test row "mispredicted" as class -1
    assert metrics["probe_accuracy.layer_1"] > 0.6 and printed["model_version"] == "1"

    client = MlflowClient(config["tracking_uri"])
    parent = client.get_run(printed["run_id"])
    params = parent.data.params
    n_pool = 1797 - 1500
    assert int(params["data.rows.pool"]) == n_pool and int(params["data.rows.unlabeled"]) > n_pool
    assert int(params["data.rows.labeled"]) < int(params["data.rows.pretrained"])
    assert params["data.unlabeled_source"] == str(tmp / "pool.npy")
    contexts = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
                for d in parent.inputs.dataset_inputs}
    assert set(contexts) == {"train", "validation", "test", "unlabeled"}
    unlabeled = json.loads(contexts["unlabeled"].profile)["features_shape"][0]
    assert unlabeled == int(params["data.rows.unlabeled"])
    note = parent.data.tags["mlflow.note.content"]
    assert f"labeled; validation {int(params['data.rows.validation']):,}, test {int(params['data.rows.test']):,} rows" in note
    finetune = [r for r in client.search_runs([parent.info.experiment_id]) if r.info.run_name == "finetune"][0]
    assert finetune.data.metrics["test_accuracy_after"] > 0.6

    with get_client(sync_client=True) as prefect:
        (artifact,) = [a for a in prefect.read_artifacts() if a.key == "partial-results"]
    assert "Pretrained on" in artifact.data and f"{int(params['data.rows.labeled']):,} labeled" in artifact.data


def test_the_printed_table_starts_with_the_row_counts(run, capsys):
    tmp, _ = run
    capsys.readouterr()
    assert cli_main(["run", str(tmp / "partial.yaml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("pretrained on ") and " labeled; validation " in out[0] and "(297 from the unlabeled pool)" in out[0]
    assert out[1].split()[:2] == ["layer", "shape"]


def test_an_unlabeled_file_of_another_width_exits_2_with_one_line_before_anything_runs(tmp_path):
    import os
    import subprocess
    import sys

    from tests import ROOT

    np.save(tmp_path / "pool.npy", np.ones((20, 63), np.float32))
    argv = ["run", "--set", "data.unlabeled_source=pool.npy", "--set", f"cache_dir={tmp_path / 'cache'}"]
    probe = "import sys; from flows.cli import main; code = main(sys.argv[1:]); print(code, 'prefect' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe, *argv], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr  # before Prefect is even imported
    assert done.stderr.strip() == ("error: data.unlabeled_source='pool.npy': 63 features but data.source='digits' "
                                   "has 64; unlabeled rows need the same features (columns) as the labeled ones")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "cache").exists()
