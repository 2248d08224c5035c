"""A run on a file where most labels are -1: few labels choose by k-fold CV and semi fine-tuning keeps its last
step, end to end; and nothing that chooses reads the test split (perturbing only it changes only test numbers)."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from pipeline.config import PipelineConfig
from pipeline.data.budgets import draw_per_class
from pipeline.evaluation import layer_probes
from pipeline.run.greedy import pretrain_stack
from tests.pipeline.run.two_test_splits import write_test_splits

PER_CLASS = 6


def _config(tmp_path, test_file):
    return PipelineConfig.from_dict({
        "name": "few", "seed": 0,
        "data": {"source": str(tmp_path / "train.npz"), "test_source": str(tmp_path / test_file),
                 "features": "X", "labels": "y"},
        "defaults": {"epochs": 6, "batch_size": 64, "lr": 0.3, "weight_decay": 1e-4},
        "layers": [{"hidden": 24}, {"hidden": 12}],
        "finetune": {"epochs": 4, "softmax_iterations": 60,
                     "semi": {"steps": 40, "eval_every": 20, "batch_labeled": 32, "batch_unlabeled": 64}},
    })


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("few")
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    keep = draw_per_class(y[:1300], PER_CLASS, 0)
    partial = np.full(1300, -1)
    partial[keep] = y[:1300][keep]
    np.savez(tmp_path / "train.npz", X=X[:1300], y=partial)
    write_test_splits(tmp_path, X, y)
    out = []
    real = layer_probes.fit_probe_cv
    for name in ("test_a.npz", "test_b.npz"):
        chosen: list[tuple[int, float]] = []  # (input width, the C cross-validation chose)

        def spy(*args, _seen=chosen, **kwargs):
            fit = real(*args, **kwargs)
            _seen.append((args[0].shape[1], fit.c))
            return fit

        mp = pytest.MonkeyPatch()
        mp.setattr(layer_probes, "fit_probe_cv", spy)
        try:
            out.append((pretrain_stack(_config(tmp_path, name)), sorted(chosen)))
        finally:
            mp.undo()
    return out


def test_a_partly_labeled_file_runs_end_to_end_choosing_by_cross_validation(runs):
    (result, chosen), _ = runs
    ft = result.finetuned
    assert ft is not None and not ft.validated and ft.method == "semi" and ft.kept == "semi: last step"
    assert ft.n_labeled == 10 * PER_CLASS and ft.n_unlabeled == 1300 - 10 * PER_CLASS  # validation rows joined
    assert np.isnan(ft.val_accuracy_after) and len(ft.history) == 2
    assert [width for width, _ in chosen] == [12, 24, 64]  # every probe's C came from cross-validation
    assert result.encoder_choice[0] == "finetuned" and "by rule" in result.encoder_choice[1]
    assert set(result.probes) == {"raw", "layer_1", "layer_2"} and ft.test_accuracy_after > 0.5
    assert "semi: last step" in result.table()


def test_with_few_labels_nothing_that_chooses_reads_the_test_split(runs):
    (a, chosen_a), (b, chosen_b) = runs
    assert chosen_a == chosen_b  # the probes' C
    fa, fb = a.finetuned, b.finetuned
    assert fa.history == fb.history and torch.equal(fa.head.weight, fb.head.weight)
    for ta, tb in zip(fa.encoder.state_dict().values(), fb.encoder.state_dict().values(), strict=True):
        assert torch.equal(ta, tb)
    assert a.encoder_choice == b.encoder_choice
    assert fa.test_accuracy_after != fb.test_accuracy_after and a.probes != b.probes
