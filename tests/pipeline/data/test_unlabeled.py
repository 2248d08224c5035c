"""Partial labels and unlabeled pools: -1/NaN/empty cells, data.unlabeled_source, data.unlabeled_classes."""

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

import pipeline.data.loading as loading_module
from pipeline.config import DataConfig
from pipeline.data.labels import class_indices, labeled_mask
from pipeline.data.loading import load_data
from pipeline.data.readers import read_array_file
from pipeline.errors import InputError
from pipeline.run import layer_store


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y.astype(np.int64)


def partial(tmp_path, X, y, unlabeled_every=3, name="p.npz"):
    """An npz of X with every ``unlabeled_every``-th label set to -1; returns (path, y as written)."""
    y = y.copy()
    y[::unlabeled_every] = -1
    np.savez(tmp_path / name, X=X, y=y)
    return tmp_path / name, y


def rows_of(A):
    return {row.tobytes() for row in np.asarray(A, np.float32)}


def test_minus_one_nan_and_empty_cells_mark_unlabeled_rows_in_every_format(tmp_path):
    frame = pd.DataFrame({"a": np.arange(6.0), "b": np.arange(6.0) ** 2})
    frame["label"] = [0, 1, None, 1, -1, 0]
    frame.to_csv(tmp_path / "d.csv", index=False)
    assert (tmp_path / "d.csv").read_text().splitlines()[3].endswith(",")  # an empty cell, not "nan"
    frame.to_parquet(tmp_path / "d.parquet")
    np.savez(tmp_path / "d.npz", X=frame[["a", "b"]].to_numpy(), y=frame["label"].to_numpy(float))
    for path in ("d.csv", "d.parquet", "d.npz"):
        y = read_array_file(tmp_path / path, features=None if path != "d.npz" else "X", labels="label"
                            if path != "d.npz" else "y")[1]
        assert y.tolist() == [0, 1, -1, 1, -1, 0] and y.dtype == np.int64, path
    names = frame.assign(label=["cat", "dog", None, "dog", "", "cat"])
    names.to_parquet(tmp_path / "n.parquet")
    y = read_array_file(tmp_path / "n.parquet", labels="label")[1]
    assert y.tolist() == ["cat", "dog", "", "dog", "", "cat"] and labeled_mask(y).tolist() == [1, 1, 0, 1, 0, 1]


def test_validation_and_test_come_from_labeled_rows_and_training_keeps_every_row(tmp_path, digits):
    X, y = digits
    path, written = partial(tmp_path, X, y)
    data = load_data(DataConfig(source=str(path), features="X", labels="y"), seed=0)
    n_labeled = int((written >= 0).sum())
    assert labeled_mask(data.y_val).all() and labeled_mask(data.y_test).all()
    assert data.X_test.shape[0] == int(np.ceil(0.2 * n_labeled))
    assert data.X_train.shape[0] + data.X_val.shape[0] + data.X_test.shape[0] == X.shape[0]
    assert rows_of(X[written == -1]) <= rows_of(data.X_train)  # every unlabeled row trains the layers
    assert not rows_of(X[written == -1]) & (rows_of(data.X_val) | rows_of(data.X_test))
    labeled = data.labeled_rows("train")
    assert labeled.size == n_labeled - data.X_val.shape[0] - data.X_test.shape[0]
    X_lab, y_lab = data.labeled_train()
    assert (y_lab >= 0).all() and np.unique(y_lab).tolist() == list(range(10)) and X_lab.shape == (labeled.size, 64)
    c = data.counts()
    assert c["pretrained"] == X.shape[0] - c["test"] - c["validation"] == data.X_train.shape[0]
    assert c["labeled"] == labeled.size
    assert c["unlabeled"] == int((written == -1).sum()) and c["pool"] == 0
    assert data.counts_line() == (f"pretrained on {c['pretrained']:,} rows, {c['labeled']:,} labeled; "
                                  f"validation {c['validation']:,}, test {c['test']:,} rows")


def test_fully_labeled_data_loads_exactly_as_before(digits):
    """Splitting by row numbers draws the rows train_test_split drew from the arrays themselves."""
    from sklearn.model_selection import train_test_split

    X, y = digits
    data = load_data(DataConfig(source="digits"), seed=0)
    X_dev, X_test, y_dev, _ = train_test_split(X, y, test_size=360, random_state=0, stratify=y)
    X_train, X_val = train_test_split(X_dev, test_size=144, random_state=0, stratify=y_dev)
    np.testing.assert_array_equal(data.X_test, X_test)
    np.testing.assert_array_equal(data.X_train, X_train)
    np.testing.assert_array_equal(data.X_val, X_val)
    dev = np.concatenate([data.X_train, data.X_val])[np.argsort(data.dev_positions)]
    np.testing.assert_array_equal(dev, X_dev)  # the development order: what label draws index


def test_an_unlabeled_pool_in_any_format_joins_the_training_rows_only(tmp_path, digits):
    X, y = digits
    np.savez(tmp_path / "lab.npz", X=X[:600], y=y[:600])
    np.save(tmp_path / "pool.npy", X[600:900])
    np.savez(tmp_path / "pool.npz", X=X[900:1000], y=np.zeros(100))  # its labels are ignored
    pd.DataFrame(X[1000:1100], columns=[f"c{i}" for i in range(64)]).to_csv(tmp_path / "pool.csv", index=False)
    pools = [str(tmp_path / n) for n in ("pool.npy", "pool.npz", "pool.csv")]
    data = load_data(DataConfig(source=str(tmp_path / "lab.npz"), features="X", labels="y", unlabeled_source=pools))
    assert data.n_pool == 500 and data.counts()["pool"] == 500 and data.counts()["unlabeled"] == 500
    np.testing.assert_array_equal(data.X_train[-500:], X[600:1100])  # the pool's rows, last, in file order
    assert (data.y_train[-500:] == -1).all() and labeled_mask(data.y_train[:-500]).all()
    assert data.X_test.shape[0] == 120 and not rows_of(X[600:1100]) & rows_of(data.X_test)
    assert "(500 from the unlabeled pool)" in data.counts_line()
    single = load_data(DataConfig(source=str(tmp_path / "lab.npz"), features="X", labels="y",
                                  unlabeled_source=pools[0]))
    assert single.n_pool == 300


def test_an_unlabeled_npz_without_the_labels_key_is_read(tmp_path, digits):
    X, y = digits
    np.savez(tmp_path / "lab.npz", X=X[:600], y=y[:600])
    np.savez(tmp_path / "pool.npz", X=X[600:700])  # unlabeled rows: no y in it
    data = load_data(DataConfig(source=str(tmp_path / "lab.npz"), labels="y",
                                unlabeled_source=str(tmp_path / "pool.npz")))
    assert data.n_pool == 100
    np.testing.assert_array_equal(data.X_train[-100:], X[600:700])


def test_the_layer_cache_key_follows_the_pretraining_rows_not_the_labels(tmp_path, digits):
    X, y = digits
    np.savez(tmp_path / "lab.npz", X=X[:600], y=y[:600])
    np.save(tmp_path / "pool.npy", X[600:900])
    cfg = DataConfig(source=str(tmp_path / "lab.npz"), features="X", labels="y", unlabeled_source=str(tmp_path / "pool.npy"))
    data = load_data(cfg)
    key = layer_store.input_fingerprint(data)
    fewer = data.keep_labels(data.labeled_rows("train")[:50], data.labeled_rows("val")[:5])
    assert fewer.labeled_rows("train").size == 50 and fewer.fingerprint != data.fingerprint
    assert layer_store.input_fingerprint(fewer) == key  # same rows, fewer labels: the same layers
    np.save(tmp_path / "pool.npy", X[600:901])
    assert layer_store.input_fingerprint(load_data(cfg)) != key  # another pool: other layers
    assert layer_store.input_fingerprint(load_data(cfg.model_copy(update={"unlabeled_source": None}))) != key


def test_a_large_npy_pool_stays_on_disk(tmp_path, digits, monkeypatch):
    X, y = digits
    np.savez(tmp_path / "lab.npz", X=X[:600], y=y[:600])
    np.save(tmp_path / "pool.npy", X[600:])
    monkeypatch.setattr(loading_module, "LARGE_FILE_BYTES", 1000)  # the pool file counts as large
    data = load_data(DataConfig(source=str(tmp_path / "lab.npz"), features="X", labels="y",
                                unlabeled_source=str(tmp_path / "pool.npy")))
    assert isinstance(data.X_train, np.memmap) and data.X_train.dtype == np.float32
    np.testing.assert_array_equal(data.X_train[-(X.shape[0] - 600):], X[600:])
    assert isinstance(data.scaled().train, np.memmap)


def test_unlabeled_classes_become_pretraining_rows(digits):
    data = load_data(DataConfig(source="digits", unlabeled_classes=[5, 6, 7, 8, 9]), seed=0)
    for split in ("train", "val", "test"):
        assert set(np.unique(data.labels(split)[data.labeled_rows(split)])) == {0, 1, 2, 3, 4}
    X, y = digits
    assert data.counts()["unlabeled"] == int((y >= 5).sum())
    assert rows_of(X[y >= 5]) <= rows_of(data.X_train)


@pytest.mark.parametrize(("setup", "message"), [
    ("all_unlabeled", r"p\.npz: no row has a label \(-1, NaN and empty cells mark unlabeled rows\)"),
    ("one_class", r"only class 3 has labeled rows"),
    ("class_only_in_test", r"class 9 has labeled rows in the test split but none in training"),
    ("pool_width", r"data\.unlabeled_source='.*pool\.npy': 63 features but data\.source=.* has 64"),
    ("pool_columns", r"data\.unlabeled_source='.*pool\.csv': column\(s\) 'extra' are not features of data\.source"),
    ("pool_missing_column", r"pool\.csv: column\(s\) 'c63' not found"),
    ("pool_list_item", r"data\.unlabeled_source\.1='.*gone\.npy': no such file"),
    ("unknown_class", r"data\.unlabeled_classes: class 12 is not among the labels of digits \(0, 1, 2"),
    ("classes_without_labels", r"data\.unlabeled_classes is set but patches has no labels"),
    ("unlabeled_test_file", r"t\.npz: 2 test rows have no label; a test file needs every label"),
])
def test_bad_combinations_are_one_input_error(setup, message, tmp_path, digits):
    X, y = digits
    y = y.copy()
    cfg = {"source": str(tmp_path / "p.npz"), "features": "X", "labels": "y"}
    columns = [f"c{i}" for i in range(64)]
    match setup:
        case "all_unlabeled":
            y[:] = -1
        case "one_class":
            y[y != 3] = -1
        case "class_only_in_test":
            y[y == 9] = -1
            y[np.flatnonzero(np.asarray(load_digits().target) == 9)[0]] = 9  # one labeled 9: it goes to test
            cfg["test_fraction"] = 0.5
        case "pool_width":
            np.save(tmp_path / "pool.npy", X[:10, 1:])
            cfg["unlabeled_source"] = str(tmp_path / "pool.npy")
        case "pool_columns" | "pool_missing_column":
            frame = pd.DataFrame(X, columns=columns).assign(label=y)
            frame.to_csv(tmp_path / "p.csv", index=False)
            pool = frame.drop(columns="label").assign(extra=1.0) if setup == "pool_columns" else \
                frame.drop(columns=["label", "c63"])
            pool.to_csv(tmp_path / "pool.csv", index=False)
            cfg = {"source": str(tmp_path / "p.csv"), "labels": "label", "unlabeled_source": str(tmp_path / "pool.csv")}
        case "pool_list_item":
            np.save(tmp_path / "pool.npy", X[:10])
            cfg["unlabeled_source"] = [str(tmp_path / "pool.npy"), str(tmp_path / "gone.npy")]
        case "unknown_class":
            cfg = {"source": "digits", "unlabeled_classes": [5, 12]}
        case "classes_without_labels":
            cfg = {"source": "patches", "unlabeled_classes": [1]}
        case "unlabeled_test_file":
            np.savez(tmp_path / "t.npz", X=X[:10], y=np.r_[y[:8], -1, -1])
            cfg["test_source"] = str(tmp_path / "t.npz")
    np.savez(tmp_path / "p.npz", X=X, y=y)
    with pytest.raises(InputError, match=message):
        load_data(DataConfig(**cfg), seed=0)


def test_no_classifier_can_take_the_unlabeled_marker_for_a_class():
    with pytest.raises(ValueError, match="2 unlabeled rows .* reached a classifier"):
        class_indices(np.array([0, 1, -1, 1, -1]))
    with pytest.raises(ValueError, match="reached a classifier"):
        class_indices(np.array(["cat", ""]))


def test_a_builtin_answers_to_the_mnist_layouts_names_so_one_config_serves_both():
    plain = load_data(DataConfig(source="digits"))
    named = load_data(DataConfig(source="digits", features="images", labels="labels"))
    assert named.fingerprint == plain.fingerprint
    with pytest.raises(InputError, match=r"data.source='patches' is a built-in data set: .* arrays are 'images', as"):
        load_data(DataConfig(source="patches", labels="labels"))
