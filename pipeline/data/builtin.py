"""Built-in data sets that ship with scikit-learn (no downloads): digits, nudged-digits, patches."""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.errors import InputError

Arrays = tuple[np.ndarray, np.ndarray | None]  # (n, d) float32 features, (n,) int64 labels or None
PATCH_SIZE = 8
N_PATCHES = 10_000
BUILTIN_FEATURES, BUILTIN_LABELS = "images", "labels"  # a built-in's array names, as in mnist-5k.npz


def _digits(seed: int) -> Arrays:
    """sklearn's digits, read as its ``load_digits`` reads them: without importing scikit-learn (and SciPy),
    which took a run on digits 1.5 s."""
    path = _sklearn_data_file("digits.csv.gz")
    if path is None:  # a scikit-learn that keeps its data elsewhere: ask it
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.data.astype(np.float32), digits.target.astype(np.int64)
    with gzip.open(path, mode="rt", encoding="utf-8") as text:
        data = np.loadtxt(text, delimiter=",")
    return data[:, :-1].astype(np.float32), data[:, -1].astype(np.int64)


def _sklearn_data_file(name: str) -> Path | None:
    """A data file shipped in ``sklearn/datasets/data`` (found without importing scikit-learn), or None."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec and spec.submodule_search_locations) or ():
        path = Path(folder) / "datasets" / "data" / name
        if path.is_file():
            return path
    return None


def nudge(X: np.ndarray, side: int = 8) -> np.ndarray:
    """(n, side*side) images -> (4n, side*side): copies moved one pixel up, left, right, down, zero-filled.

    The order and direction match scikit-learn's RBM digits example (``nudge_dataset``).
    """
    images = X.reshape(-1, side, side)
    moved = np.zeros((4, *images.shape), dtype=X.dtype)
    moved[0, :, :-1, :] = images[:, 1:, :]  # up
    moved[1, :, :, :-1] = images[:, :, 1:]  # left
    moved[2, :, :, 1:] = images[:, :, :-1]  # right
    moved[3, :, 1:, :] = images[:, :-1, :]  # down
    return moved.reshape(4 * X.shape[0], side * side)


def _nudged_digits(seed: int) -> Arrays:
    X, y = _digits(seed)
    assert y is not None
    return np.concatenate([X, nudge(X)]), np.tile(y, 5)


def sample_patches(n: int = N_PATCHES, size: int = PATCH_SIZE, seed: int = 0) -> np.ndarray:
    """(n, size*size) grey patches from sklearn's two sample photos, normalised as in the UFLDL exercise.

    Each patch loses its own mean, is clipped to +-3 standard deviations of the whole set, and is mapped
    from [-3 std, 3 std] to [0.1, 0.9].
    """
    from sklearn.datasets import load_sample_images

    grey = np.stack([image.mean(axis=2) / 255.0 for image in load_sample_images().images])  # (2, h, w)
    windows = np.lib.stride_tricks.sliding_window_view(grey, (size, size), axis=(1, 2))
    rng = np.random.default_rng(seed)
    which = rng.integers(0, grey.shape[0], n)
    rows = rng.integers(0, windows.shape[1], n)
    cols = rng.integers(0, windows.shape[2], n)
    patches = windows[which, rows, cols].reshape(n, size * size)
    patches = patches - patches.mean(axis=1, keepdims=True)
    limit = 3.0 * patches.std()
    patches = np.clip(patches, -limit, limit) / limit
    return ((patches + 1.0) * 0.4 + 0.1).astype(np.float32)


def _patches(seed: int) -> Arrays:
    return sample_patches(seed=seed), None


@dataclass(frozen=True)
class BuiltinDataset:
    """A named data set with its shape known without generating it."""

    name: str
    description: str
    n_samples: int
    n_features: int
    has_labels: bool
    make: Callable[[int], Arrays]  # seed -> (X, y)


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    d.name: d
    for d in (
        BuiltinDataset("digits", "8x8 handwritten digits, values 0-16 (sklearn load_digits)", 1797, 64, True, _digits),
        BuiltinDataset(
            "nudged-digits",
            "digits plus copies moved one pixel up/left/right/down (sklearn's RBM example)",
            5 * 1797,
            64,
            True,
            _nudged_digits,
        ),
        BuiltinDataset(
            "patches",
            f"{N_PATCHES} random {PATCH_SIZE}x{PATCH_SIZE} grey patches of sklearn's sample photos, "
            "UFLDL-normalised to [0.1, 0.9]",
            N_PATCHES,
            PATCH_SIZE * PATCH_SIZE,
            False,
            _patches,
        ),
    )
}


@lru_cache(maxsize=8)
def _load_cached(name: str, seed: int) -> Arrays:
    X, y = BUILTIN_DATASETS[name].make(seed)
    X.setflags(write=False)  # shared by every caller through the cache
    if y is not None:
        y.setflags(write=False)
    return X, y


def load_builtin(name: str, seed: int = 0) -> Arrays:
    """(X (n, d) float32, labels (n,) int64 or None) of a built-in data set; read-only, cached in memory."""
    if name not in BUILTIN_DATASETS:
        raise InputError(f"unknown built-in data set {name!r}; choose one of: {', '.join(BUILTIN_DATASETS)}")
    return _load_cached(name, seed)


def describe_builtins() -> list[dict[str, object]]:
    """Name, n_samples, n_features, has_labels and description of every built-in (nothing is generated)."""
    return [
        {
            "name": d.name,
            "n_samples": d.n_samples,
            "n_features": d.n_features,
            "has_labels": d.has_labels,
            "description": d.description,
        }
        for d in BUILTIN_DATASETS.values()
    ]
