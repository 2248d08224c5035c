"""examples/self-taught.yaml: pretrain on digits 5-9 without their labels, learn 0-4; the same config on a file in
the mnist-5k layout (images, labels) by changing data.source alone."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

import pipeline.run.greedy as greedy
from pipeline.config import PipelineConfig
from pipeline.data.loading import load_data
from pipeline.errors import InputError
from pipeline.run.greedy import pretrain_stack
from pipeline.run.layer_store import input_fingerprint
from tests import ROOT

EXAMPLE = ROOT / "examples" / "self-taught.yaml"
QUICK = ["defaults.epochs=3", "finetune.epochs=2", "finetune.semi.steps=40", "layers.0.hidden=32"]


def test_classes_5_to_9_only_pretrain_and_0_to_4_are_learned(monkeypatch):
    fitted: list[np.ndarray] = []
    real = greedy.train_autoencoder
    monkeypatch.setattr(greedy, "train_autoencoder", lambda x, *a, **k: fitted.append(np.asarray(x)) or real(x, *a, **k))
    config = PipelineConfig.from_yaml(EXAMPLE, QUICK)
    result = pretrain_stack(config)
    data = result.data
    for split in ("val", "test"):
        assert set(data.labels(split).tolist()) == {0, 1, 2, 3, 4}
    y = load_digits().target
    assert data.counts()["unlabeled"] == int((y >= 5).sum())  # the 5-9 rows, unlabeled
    assert data.counts_line().startswith(f"pretrained on {int((y >= 5).sum()):,} rows, plus {data.counts()['labeled']:,} labeled;")
    (x,) = fitted  # the layer learned from the 5-9 rows alone: none of the labeled 0-4 training rows
    assert x.shape[0] == int((y >= 5).sum()) == data.pretrain_rows.size
    np.testing.assert_array_equal(x, data.scaled().train[data.pretrain_rows])
    assert result.layers[0].codes.train.shape[0] == data.X_train.shape[0]  # yet every training row is encoded
    assert result.finetuned.classes.tolist() == [0, 1, 2, 3, 4]
    assert set(result.probes) == {"raw", "layer_1"} and result.probes["raw"] > 0.9


def test_the_same_config_reads_a_file_in_the_mnist_5k_layout(tmp_path):
    X, y = load_digits(return_X_y=True)
    np.savez(tmp_path / "digits.npz", images=(X * 16).astype(np.uint8), labels=y.astype(np.uint8))
    config = PipelineConfig.from_yaml(EXAMPLE, [f"data.source={tmp_path / 'digits.npz'}"])
    data = load_data(config.data, config.seed)
    assert set(data.labels("test").tolist()) == {0, 1, 2, 3, 4} and data.X_train.shape[1] == 64


def test_pretraining_on_unlabeled_rows_has_its_own_cache_key_and_needs_unlabeled_rows():
    every = load_data(PipelineConfig.from_yaml(EXAMPLE, ["data.pretrain_on=all"]).data, 0)
    unlabeled = load_data(PipelineConfig.from_yaml(EXAMPLE).data, 0)
    assert every.pretrain_rows is None and input_fingerprint(every) != input_fingerprint(unlabeled)
    labeled_only = PipelineConfig.from_yaml(EXAMPLE, ["data.unlabeled_classes=null"])
    with pytest.raises(InputError, match="data.pretrain_on=unlabeled: .* no unlabeled training rows"):
        load_data(labeled_only.data, 0)
