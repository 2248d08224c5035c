"""Built-in data sets: shapes, ranges, labels, caching and the cheap descriptions."""

import numpy as np
import pytest
from scipy.ndimage import convolve

from pipeline.data.builtin import BUILTIN_DATASETS, describe_builtins, load_builtin, nudge, sample_patches
from pipeline.errors import InputError


def test_digits_is_sklearns_1797_by_64_with_labels():
    X, y = load_builtin("digits")
    assert X.shape == (1797, 64) and X.dtype == np.float32
    assert y is not None and y.dtype == np.int64 and set(y.tolist()) == set(range(10))
    assert X.min() == 0 and X.max() == 16


def test_nudged_digits_has_the_originals_and_four_shifted_copies():
    X, y = load_builtin("nudged-digits")
    digits, labels = load_builtin("digits")
    assert X.shape == (8985, 64) and X.dtype == np.float32
    np.testing.assert_array_equal(X[:1797], digits)
    np.testing.assert_array_equal(y, np.tile(labels, 5))
    assert X.max() == 16  # raw values: scaling is the pipeline's job


def test_nudge_matches_the_sklearn_rbm_example_convolutions():
    digits, _ = load_builtin("digits")
    kernels = [
        [[0, 1, 0], [0, 0, 0], [0, 0, 0]],
        [[0, 0, 0], [1, 0, 0], [0, 0, 0]],
        [[0, 0, 0], [0, 0, 1], [0, 0, 0]],
        [[0, 0, 0], [0, 0, 0], [0, 1, 0]],
    ]
    sample = digits[:30]
    expected = np.concatenate(
        [np.stack([convolve(x.reshape(8, 8), mode="constant", weights=w).ravel() for x in sample]) for w in kernels]
    )
    np.testing.assert_array_equal(nudge(sample), expected)


def test_patches_are_10000_unlabelled_8x8_patches_in_the_tutorial_range():
    X, y = load_builtin("patches")
    assert X.shape == (10_000, 64) and X.dtype == np.float32 and y is None
    assert X.min() >= 0.1 - 1e-6 and X.max() <= 0.9 + 1e-6
    assert abs(float(X.mean()) - 0.5) < 0.02  # per-patch mean removal centres the set on 0.5
    assert 0.05 < float(X.std()) < 0.2  # clipping at 3 std maps one std to about 0.13


def test_patches_depend_on_the_seed_and_are_reproducible():
    a, b = sample_patches(200, seed=1), sample_patches(200, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sample_patches(200, seed=2))


def test_builtins_are_cached_and_read_only():
    X, _ = load_builtin("digits")
    assert load_builtin("digits")[0] is X
    with pytest.raises(ValueError):
        X[0, 0] = 1.0


def test_unknown_builtin_lists_the_choices():
    with pytest.raises(InputError, match="digits, nudged-digits, patches"):
        load_builtin("mnist")


@pytest.mark.parametrize("row", describe_builtins(), ids=lambda r: r["name"])
def test_describe_builtins_matches_the_real_arrays(row):
    X, y = load_builtin(row["name"])
    assert (row["n_samples"], row["n_features"]) == X.shape
    assert row["has_labels"] == (y is not None)
    assert row["description"]


def test_describe_builtins_lists_every_data_set():
    assert [r["name"] for r in describe_builtins()] == list(BUILTIN_DATASETS)
