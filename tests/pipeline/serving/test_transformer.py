"""SAETransformer behaves like a scikit-learn transformer: fit/transform, clone, Pipeline, GridSearchCV."""

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline

from pipeline.serving.transformer import SAETransformer

FAST = {"epochs": 3, "batch_size": 128, "lr": 0.01}


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)


@pytest.fixture(scope="module")
def fitted(digits):
    X_train, *_ = digits
    return SAETransformer(hidden=(24, 12), **FAST).fit(X_train)


def test_fit_transform_gives_top_layer_codes_named_sae0_and_up(fitted, digits):
    _, X_test, _, _ = digits
    codes = fitted.transform(X_test)
    assert codes.shape == (X_test.shape[0], 12) and codes.dtype == np.float32
    assert ((codes > 0) & (codes < 1)).all()  # sigmoid codes
    assert list(fitted.get_feature_names_out()) == [f"sae{i}" for i in range(12)]
    assert fitted.n_features_in_ == 64 and fitted.encoder_.depth == 2


def test_fitting_is_deterministic_for_a_seed(fitted, digits):
    X_train, X_test, _, _ = digits
    again = SAETransformer(hidden=(24, 12), **FAST).fit(X_train)
    np.testing.assert_array_equal(again.transform(X_test), fitted.transform(X_test))


def test_clone_keeps_the_parameters_and_drops_the_fit(fitted):
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params()
    assert not hasattr(copy, "encoder_")


def test_a_wrong_feature_count_at_transform_is_refused(fitted, digits):
    _, X_test, _, _ = digits
    with pytest.raises(ValueError, match="64 features"):
        fitted.transform(X_test[:, :10])


def test_dataframe_columns_are_remembered(digits):
    X_train, *_ = digits
    frame = pd.DataFrame(X_train, columns=[f"p{i}" for i in range(64)])
    sae = SAETransformer(hidden=(8,), epochs=1).fit(frame)
    assert list(sae.feature_names_in_) == list(frame.columns)
    assert sae.encoder_.meta["feature_names"] == list(frame.columns)


def test_in_a_pipeline_with_logistic_regression_it_classifies_digits(digits):
    X_train, X_test, y_train, y_test = digits
    model = Pipeline([("sae", SAETransformer(hidden=(64,), epochs=10, lr=0.01)),
                      ("clf", LogisticRegression(max_iter=1000))])
    model.fit(X_train, y_train)
    assert model.score(X_test, y_test) > 0.85


def test_grid_search_tries_each_setting_and_refits_the_best(digits):
    X_train, _, y_train, _ = digits
    search = GridSearchCV(
        Pipeline([("sae", SAETransformer(epochs=1, lr=0.01)), ("clf", LogisticRegression(max_iter=300))]),
        {"sae__hidden": [(4,), (16,)]},
        cv=2,
    )
    search.fit(X_train[:400], y_train[:400])
    assert len(search.cv_results_["params"]) == 2
    assert search.best_estimator_.named_steps["sae"].encoder_.d_out == search.best_params_["sae__hidden"][0]


def test_a_model_uri_wraps_an_existing_encoder_without_training(fitted, digits, tmp_path):
    X_train, X_test, _, _ = digits
    fitted.encoder_.save(tmp_path / "enc")
    wrapped = SAETransformer(model_uri=str(tmp_path / "enc"), epochs=999).fit(X_train)
    np.testing.assert_array_equal(wrapped.transform(X_test), fitted.transform(X_test))
    with pytest.raises(ValueError, match="expects 64"):
        SAETransformer(model_uri=str(tmp_path / "enc")).fit(X_train[:, :5])


def test_upper_layers_train_on_standardised_codes_with_a_linear_decoder_as_the_pipeline_does(fitted, digits):
    X_train, *_ = digits
    encoder = fitted.encoder_
    assert [c.decoder_activation for c in encoder.configs] == ["sigmoid", "linear"]
    (between,) = encoder.code_scalings
    assert between.kind == "standard"
    first = encoder.transform(X_train.astype(np.float32), depth=1)
    np.testing.assert_allclose(between.transform(first).mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(between.transform(first).std(axis=0), 1.0, atol=1e-3)


def test_code_scaling_unit_keeps_a_sigmoid_decoder_above_and_none_adds_no_scaling(digits):
    X_train, *_ = digits
    unit = SAETransformer(hidden=(8, 4), code_scaling="unit", epochs=1).fit(X_train).encoder_
    assert unit.configs[1].decoder_activation == "sigmoid" and unit.code_scalings[0].kind == "unit"
    none = SAETransformer(hidden=(8, 4), code_scaling="none", epochs=1).fit(X_train).encoder_
    assert none.configs[1].decoder_activation == "sigmoid" and none.code_scalings[0].kind == "none"


def test_fit_takes_minus_one_labels_and_trains_every_row_as_without_them(fitted, digits):
    X_train, X_test, y_train, _ = digits
    y = y_train.copy()
    y[::2] = -1
    with_y = SAETransformer(hidden=(24, 12), **FAST).fit(X_train, y)
    np.testing.assert_array_equal(with_y.transform(X_test), fitted.transform(X_test))  # the labels change nothing
    assert with_y.n_labeled_ == (y != -1).sum()
    nan = np.where(y == -1, np.nan, y.astype(float))
    assert SAETransformer(hidden=(4,), epochs=1).fit(X_train, nan).n_labeled_ == with_y.n_labeled_
    with pytest.raises(ValueError, match=r"y has shape \(10,\) but X has \d+ rows; give one label per row"):
        SAETransformer(hidden=(4,), epochs=1).fit(X_train, y[:10])


def test_it_composes_with_scikit_learns_semi_supervised_tools(digits):
    from sklearn.semi_supervised import LabelSpreading, SelfTrainingClassifier

    X_train, X_test, y_train, y_test = digits
    y = y_train.copy()
    y[np.random.default_rng(0).random(y.size) < 0.8] = -1  # 80% of the rows without a label
    spreading = Pipeline([("sae", SAETransformer(hidden=(32,), **FAST)), ("spread", LabelSpreading(kernel="knn"))])
    assert spreading.fit(X_train, y).score(X_test, y_test) > 0.6
    assert spreading.named_steps["sae"].n_labeled_ == (y != -1).sum()
    self_training = Pipeline([("sae", SAETransformer(hidden=(32,), **FAST)),
                              ("clf", SelfTrainingClassifier(LogisticRegression(max_iter=500)))])
    assert self_training.fit(X_train, y).score(X_test, y_test) > 0.3
