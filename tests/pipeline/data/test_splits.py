"""The numpy splits draw exactly what scikit-learn's train_test_split drew, so data and caches stay the same,
and reading digits no longer imports scikit-learn."""

import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from pipeline.config import DataConfig
from pipeline.data.builtin import load_builtin
from pipeline.data.loading import load_data
from pipeline.data.splits import shuffle_split, stratified_split
from tests import ROOT


def cases(count: int = 120):
    """(n rows, n test, seed, labels) for many sizes, class counts, tied shares and label kinds."""
    rng = np.random.default_rng(7)
    for i in range(count):
        n = int(rng.integers(6, 400))
        y = rng.integers(0, int(rng.integers(2, 9)), n)
        if i % 3 == 0:
            y = np.array([f"class-{v}" for v in y])
        yield n, int(rng.integers(2, n - 2)), int(rng.integers(0, 10_000)), y


@pytest.mark.parametrize(("n", "n_test", "seed", "y"), list(cases()))
def test_splits_equal_scikit_learns(n, n_test, seed, y):
    rows = np.arange(n)
    want_train, want_test = train_test_split(rows, test_size=n_test, random_state=seed)
    train, test = shuffle_split(n, n_test, seed)
    np.testing.assert_array_equal(train, want_train)
    np.testing.assert_array_equal(test, want_test)
    counts = np.unique(y, return_counts=True)[1]
    if counts.min() < 2 or min(n - n_test, n_test) < len(counts):
        return  # scikit-learn refuses to stratify these; the loader does not ask
    want_train, want_test = train_test_split(rows, test_size=n_test, random_state=seed, stratify=y)
    train, test = stratified_split(y, n_test, seed)
    np.testing.assert_array_equal(train, want_train)
    np.testing.assert_array_equal(test, want_test)


def test_digits_are_scikit_learns_digits():
    X, y = load_builtin("digits")
    digits = load_digits()
    assert X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(X, digits.data.astype(np.float32))
    np.testing.assert_array_equal(y, digits.target)


def test_the_default_digits_data_keeps_its_fingerprint_so_cached_layers_stay_valid():
    # Fingerprints of the data as scikit-learn's train_test_split split it (main at aabd145, before this module).
    assert load_data(DataConfig(source="digits"), seed=0).fingerprint == \
        "3c7701c4b3ffa08971d20fb505587c46631434901f3928e37ac83bb1af0f80dd"
    assert load_data(DataConfig(source="nudged-digits", max_samples=2000), seed=1).fingerprint == \
        "96340679667f39eefafbf481c4bc2aab796e95be17bf0f6fa5d05d14145365be"


def test_reading_and_splitting_digits_imports_no_scikit_learn():
    code = ("import sys; from pipeline.config import DataConfig; from pipeline.data.loading import load_data; "
            "load_data(DataConfig(source='digits'), 0); import flows.pretrain; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
