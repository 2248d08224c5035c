"""Probes and fine-tuning fit and choose on labeled rows only; every layer trains on every training row."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from pipeline.config import PipelineConfig
from pipeline.evaluation import layer_probes
from pipeline.run import greedy
from pipeline.run.greedy import pretrain_stack


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("partial")
    X, y = load_digits(return_X_y=True)
    y = y.copy()
    y[np.random.default_rng(0).random(y.size) < 0.75] = -1
    np.savez(tmp / "p.npz", X=X.astype(np.float32), y=y)
    config = PipelineConfig.from_dict({
        "name": "partial", "data": {"source": str(tmp / "p.npz"), "features": "X", "labels": "y"},
        "defaults": {"epochs": 6, "lr": 0.01}, "trainer": {"accelerator": "cpu"},
        "layers": [{"hidden": 24}], "finetune": {"epochs": 3, "softmax_iterations": 100, "semi": {"steps": 200}},
    })
    probed, trained = [], []
    real_fit, real_train = layer_probes.fit_probe, greedy.train_autoencoder
    mp = pytest.MonkeyPatch()
    mp.setattr(layer_probes, "fit_probe", lambda *a, **k: probed.append((a[1], a[3])) or real_fit(*a, **k))
    real_cv = layer_probes.fit_probe_cv  # few labels: cross-validation over them, no validation split
    mp.setattr(layer_probes, "fit_probe_cv", lambda *a, **k: probed.append((a[1], a[1][:0])) or real_cv(*a, **k))
    mp.setattr(greedy, "train_autoencoder", lambda X, *a, **k: trained.append(X.shape[0]) or real_train(X, *a, **k))
    try:
        return pretrain_stack(config), probed, trained
    finally:
        mp.undo()


def test_layers_train_on_every_training_row_and_probes_on_the_labeled_ones(result):
    run, probed, trained = result
    data = run.data
    assert trained == [data.X_train.shape[0]] and data.counts()["unlabeled"] > 1000
    assert len(probed) == 2  # raw inputs and layer 1
    for y_train, y_val in probed:
        assert (y_train >= 0).all() and (y_val >= 0).all()
        labeled = data.labeled_rows("train").size + data.labeled_rows("val").size  # few: validation rows join
        assert y_train.size + y_val.size == labeled and np.unique(y_train).size == 10


def test_fine_tuning_learns_the_ten_classes_and_beats_chance_by_far(result):
    run, _, _ = result
    assert run.finetuned.classes.tolist() == list(range(10))
    assert run.finetuned.test_accuracy_after > 0.6 and run.headline()[1] > 0.6
    assert run.table().startswith(f"pretrained on {run.data.counts()['pretrained']:,} rows, ")
