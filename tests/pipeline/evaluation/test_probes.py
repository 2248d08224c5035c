"""The torch probe: same answer as scikit-learn's logistic regression, warm-started path, device choice; the
run's probes on threads, and the raw one fitted ahead."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.preprocessing import StandardScaler

from pipeline.data.loading import Splits
from pipeline.evaluation import layer_probes
from pipeline.evaluation.probes import PROBE_CS, PROBE_PATIENCE, fit_probe, probe_device


@pytest.fixture(scope="module")
def codes() -> tuple[np.ndarray, ...]:
    """Sigmoid codes (1,797 x 96) of the digits through a fixed random layer, split 1,000 / 400 / 397."""
    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    X, y = X[order] / 16.0, y[order]
    weights = np.random.default_rng(1).normal(0, 0.3, (64, 96))
    h = (1 / (1 + np.exp(-(X @ weights - 1.0)))).astype(np.float32)
    return h[:1000], y[:1000], h[1000:1400], y[1000:1400], h[1400:], y[1400:]


def test_probe_accuracy_matches_scikit_learn_at_the_chosen_c(codes: tuple[np.ndarray, ...]) -> None:
    train, y_train, val, y_val, test, y_test = codes
    fit = fit_probe(train, y_train, val, y_val, test, y_test)
    scaler = StandardScaler().fit(train)
    reference = LogisticRegression(C=fit.c, max_iter=1000, tol=1e-6).fit(scaler.transform(train), y_train)
    assert fit.c in PROBE_CS
    assert fit.val_accuracy == pytest.approx(reference.score(scaler.transform(val), y_val), abs=0.003)
    assert fit.test_accuracy == pytest.approx(reference.score(scaler.transform(test), y_test), abs=0.003)
    assert 0.8 < fit.test_accuracy < 1.0  # a real probe on real digits, not a degenerate fit


def test_regularisation_path_is_warm_started(codes: tuple[np.ndarray, ...]) -> None:
    path = fit_probe(*codes).path
    assert [p.c for p in path] == sorted(PROBE_CS)[:len(path)]
    for point in path[1:]:
        (cold,) = fit_probe(*codes, cs=(point.c,)).path
        assert point.iterations < cold.iterations, f"C={point.c}: {point.iterations} warm, {cold.iterations} cold"


def test_the_c_with_the_lowest_validation_log_loss_is_chosen(codes: tuple[np.ndarray, ...]) -> None:
    train, y_train, val, y_val, test, y_test = codes
    fit = fit_probe(train, y_train, val, y_val, test, y_test)
    best = min(fit.path, key=lambda p: p.val_log_loss)
    assert (fit.c, fit.val_accuracy) == (best.c, best.val_accuracy)
    scaler = StandardScaler().fit(train)
    for point in fit.path:  # each C's log-loss is that of the converged fit, as scikit-learn computes it
        reference = LogisticRegression(C=point.c, max_iter=2000, tol=1e-8).fit(scaler.transform(train), y_train)
        expected = log_loss(y_val, reference.predict_proba(scaler.transform(val)), labels=reference.classes_)
        assert point.val_log_loss == pytest.approx(expected, rel=0.01, abs=1e-3), point


def test_the_path_stops_once_the_validation_log_loss_keeps_rising(codes: tuple[np.ndarray, ...]) -> None:
    fit = fit_probe(*codes, cs=(1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4))
    losses = [p.val_log_loss for p in fit.path]
    best = losses.index(min(losses))
    assert len(fit.path) == best + 1 + PROBE_PATIENCE < 8
    assert losses[best:] == sorted(losses[best:])


def test_validation_split_chooses_c_and_test_is_only_scored(codes: tuple[np.ndarray, ...]) -> None:
    train, y_train, val, y_val, test, y_test = codes
    path = fit_probe(train, y_train, val, y_val, test, y_test)
    # Validating on the training rows rewards the weakest regularisation: the choice follows validation...
    assert fit_probe(train, y_train, train, y_train, test, y_test, cs=(1e-3, 100.0)).c == 100.0
    # ...and never the test labels.
    scrambled = fit_probe(train, y_train, val, y_val, test, np.roll(y_test, 1))
    assert scrambled.c == path.c and scrambled.val_accuracy == path.val_accuracy


def test_labels_unseen_in_training_count_as_errors(codes: tuple[np.ndarray, ...]) -> None:
    train, y_train, val, y_val, test, y_test = codes
    fit = fit_probe(train, y_train, val, y_val, test, np.full_like(y_test, 99))
    assert fit.test_accuracy == 0.0


def test_probe_device_follows_the_trainer_accelerator() -> None:
    assert probe_device("cpu") == torch.device("cpu")
    assert probe_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown accelerator 'tpu'"):
        probe_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            probe_device("gpu")


def test_empty_c_path_is_refused(codes: tuple[np.ndarray, ...]) -> None:
    with pytest.raises(ValueError, match="cs is empty"):
        fit_probe(*codes, cs=())


def test_columns_constant_in_training_are_left_out_without_changing_the_probe(codes: tuple[np.ndarray, ...]) -> None:
    train, y_train, val, y_val, test, y_test = codes
    plain = fit_probe(train, y_train, val, y_val, test, y_test)

    def pad(x: np.ndarray, fill: float) -> np.ndarray:  # two constant columns, as MNIST's border pixels
        return np.hstack([np.full((x.shape[0], 1), fill, np.float32), x, np.full((x.shape[0], 1), 0.5, np.float32)])

    # Constant in training only: in validation and test those columns vary, and must still weigh nothing.
    padded = fit_probe(pad(train, 0.0), y_train, pad(val, 3.0), y_val, pad(test, -2.0), y_test)
    assert (padded.c, padded.val_accuracy, padded.test_accuracy) == (plain.c, plain.val_accuracy, plain.test_accuracy)
    # Same fits up to rounding (the means and deviations are summed over another layout): within convergence.
    assert [p.val_log_loss for p in padded.path] == pytest.approx([p.val_log_loss for p in plain.path], abs=2e-3)


def _fake_run(codes: tuple[np.ndarray, ...]) -> tuple[SimpleNamespace, list[SimpleNamespace]]:
    train, y_train, val, y_val, test, y_test = codes
    data = SimpleNamespace(y_train=y_train, y_val=y_val, y_test=y_test,
                           scaled=lambda: Splits(train[:, :48], val[:, :48], test[:, :48]),
                           labeled_rows=lambda split: np.arange(len(y_train if split == "train" else y_val)))
    layers = [SimpleNamespace(index=i, codes=Splits(train[:, cols], val[:, cols], test[:, cols]))
              for i, cols in enumerate((slice(0, 96), slice(32, 96)))]
    return data, layers


def test_probes_on_threads_give_the_answers_of_probes_one_after_another(codes, monkeypatch) -> None:
    data, layers = _fake_run(codes)
    threaded = layer_probes.probe_accuracies(data, layers)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # one worker: the probes run in turn
    assert layer_probes.probe_accuracies(data, layers) == threaded
    assert set(threaded) == {"raw", "layer_1", "layer_2"}


def test_a_raw_probe_fitted_ahead_is_taken_instead_of_fitted_again(codes, monkeypatch) -> None:
    data, layers = _fake_run(codes)
    expected = layer_probes.probe_accuracies(data, layers)
    widths: list[int] = []
    real = layer_probes.fit_probe
    monkeypatch.setattr(layer_probes, "fit_probe", lambda *a, **k: widths.append(a[0].shape[1]) or real(*a, **k))
    with layer_probes.raw_probe_ahead(data) as raw:
        assert layer_probes.probe_accuracies(data, layers, raw=raw) == expected
        assert layer_probes.probe_accuracies(data, layers, seed=5)["raw"] == expected["raw"]  # not given: fitted
    assert sorted(widths) == [48, 48, 64, 64, 96, 96]  # raw once ahead, once fitted again; each layer twice


def test_one_cpu_thread_blocks_ending_in_any_order_give_the_thread_count_back() -> None:
    from pipeline.evaluation.probes import one_cpu_thread

    before = torch.get_num_threads()
    cpu = torch.device("cpu")
    first, second = one_cpu_thread(cpu), one_cpu_thread(cpu)
    first.__enter__()
    second.__enter__()  # e.g. a raw probe fitted ahead and a tuning trial's probe, on two threads
    assert torch.get_num_threads() == 1
    first.__exit__(None, None, None)  # the first one ends first: the other still runs on one thread
    assert torch.get_num_threads() == 1
    second.__exit__(None, None, None)
    assert torch.get_num_threads() == before
