"""Two test splits for the honest-choice tests: the real held-out rows, and a very different one."""

from pathlib import Path

import numpy as np


def write_test_splits(folder: Path, X: np.ndarray, y: np.ndarray) -> None:
    """``test_a.npz``: digits rows 1300 on; ``test_b.npz``: other rows with noisy pixels and shuffled labels.
    Nothing that chooses may change when the test split is swapped for the other."""
    np.savez(folder / "test_a.npz", X=X[1300:], y=y[1300:])
    rng = np.random.default_rng(1)
    noisy = np.clip(X[1300:1650][::-1] + rng.normal(0, 4, (350, 64)), 0, 16).astype(np.float32)
    np.savez(folder / "test_b.npz", X=noisy, y=rng.permutation(y[1300:1650]))
