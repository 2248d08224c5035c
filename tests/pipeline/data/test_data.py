"""Data loading: file formats, every bad-input message, splits, scaling and fingerprints."""

import numpy as np
import pandas as pd
import pytest

import pipeline.data.loading as loading_module
import pipeline.data.readers as readers_module
import pipeline.data.scaling as scaling_module
from pipeline.config import DataConfig
from pipeline.data.loading import LoadedData, load_data
from pipeline.data.readers import read_array_file
from pipeline.data.scaling import fit_scaling
from pipeline.errors import InputError


@pytest.fixture
def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.uniform(-2, 5, (40, 3)), columns=["a", "b", "c"])
    frame["label"] = np.repeat([0, 1], 20)
    return frame


def bad(match: str, *args, **kwargs) -> str:
    """Run read_array_file/load_data expecting an InputError matching ``match``; return the message."""
    func = load_data if isinstance(args[0], DataConfig) else read_array_file
    with pytest.raises(InputError, match=match) as caught:
        func(*args, **kwargs)
    return str(caught.value)


# ---- formats -------------------------------------------------------------------------------------------------


def test_csv_round_trip_with_label_column_and_feature_subset(tmp_path, table):
    path = tmp_path / "d.csv"
    table.to_csv(path, index=False)
    X, y, names = read_array_file(path, labels="label")
    assert names == ["a", "b", "c"] and X.dtype == np.float32
    np.testing.assert_allclose(X, table[["a", "b", "c"]].to_numpy(), rtol=1e-6)
    np.testing.assert_array_equal(y, table["label"])
    X, y, names = read_array_file(path, features=["c", "a"])
    assert names == ["c", "a"] and y is None
    np.testing.assert_allclose(X[:, 0], table["c"], rtol=1e-6)


def test_parquet_round_trip_keeps_string_labels(tmp_path, table):
    path = tmp_path / "d.parquet"
    table.assign(label=np.where(table["label"] == 1, "cat", "dog")).to_parquet(path)
    X, y, names = read_array_file(path, labels="label")
    assert X.shape == (40, 3) and names == ["a", "b", "c"]
    assert y[:20].tolist() == ["dog"] * 20 and y[20:].tolist() == ["cat"] * 20


def test_npz_features_by_default_key_or_by_name(tmp_path):
    X = np.arange(12, dtype=np.float64).reshape(6, 2)
    np.savez(tmp_path / "one.npz", anything=X)
    np.testing.assert_array_equal(read_array_file(tmp_path / "one.npz")[0], X)
    np.savez(tmp_path / "two.npz", X=X, y=np.arange(6), other=X * 2)
    got, y, names = read_array_file(tmp_path / "two.npz", labels="y")
    np.testing.assert_array_equal(got, X)
    assert y.dtype == np.int64 and names == ["x0", "x1"]
    np.testing.assert_array_equal(read_array_file(tmp_path / "two.npz", features="other")[0], X * 2)


def test_npy_is_memory_mapped_not_read(tmp_path):
    X = np.arange(20, dtype=np.float32).reshape(10, 2)
    np.save(tmp_path / "x.npy", X)
    got, y, names = read_array_file(tmp_path / "x.npy")
    assert isinstance(got, np.memmap) and y is None and names == ["x0", "x1"]
    np.testing.assert_array_equal(got, X)


# ---- bad inputs ----------------------------------------------------------------------------------------------


def test_missing_source_suggests_builtins(tmp_path):
    message = bad("no such file", DataConfig(source=str(tmp_path / "gone.csv")))
    assert "gone.csv" in message and "digits, nudged-digits, patches" in message
    bad("gone.npy: file not found", tmp_path / "gone.npy")


def test_unknown_extension_lists_supported(tmp_path):
    (tmp_path / "d.txt").write_text("1,2\n")
    assert ".npy, .npz, .csv, .parquet" in bad(r"d\.txt: unsupported file type '\.txt'", tmp_path / "d.txt")


def test_nan_and_inf_are_counted_with_their_first_positions(tmp_path, table):
    table.loc[3, "b"] = np.nan
    table.loc[7, "c"] = np.inf
    table.to_csv(tmp_path / "d.csv", index=False)
    message = bad(r"d\.csv: 2 NaN or infinite", tmp_path / "d.csv", labels="label")
    assert "(row 3, column 'b')" in message and "(row 7, column 'c')" in message


def test_nan_in_npy_is_found_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(readers_module, "CHUNK_ROWS", 4)
    X = np.ones((10, 3), np.float32)
    X[9, 2] = np.nan
    np.save(tmp_path / "x.npy", X)
    assert "(row 9, column 'x2')" in bad(r"x\.npy: 1 NaN", tmp_path / "x.npy")


def test_non_numeric_columns_are_named(tmp_path, table):
    table.assign(city="Oslo").to_csv(tmp_path / "d.csv", index=False)
    bad(r"d\.csv: non-numeric feature column\(s\) 'city'", tmp_path / "d.csv", labels="label")


def test_non_numeric_npy_is_rejected(tmp_path):
    np.save(tmp_path / "s.npy", np.array([["a", "b"], ["c", "d"]]))
    bad(r"s\.npy: features have dtype <U1, which is not numeric", tmp_path / "s.npy")


def test_missing_label_column_lists_the_columns(tmp_path, table):
    table.to_csv(tmp_path / "d.csv", index=False)
    bad(r"d\.csv: column\(s\) 'target' not found; the columns are: a, b, c, label", tmp_path / "d.csv", labels="target")
    bad(r"column\(s\) 'zz' not found", tmp_path / "d.csv", features=["a", "zz"])


def test_missing_npz_key_lists_the_keys(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.ones((4, 2)), y=np.arange(4))
    bad(r"d\.npz: labels key 'label' not found; the archive's keys are: X, y", tmp_path / "d.npz", labels="label")
    np.savez(tmp_path / "e.npz", a=np.ones((4, 2)), b=np.ones((4, 2)))
    bad(r"e\.npz: cannot tell which array holds the features \(keys: a, b\)", tmp_path / "e.npz")


def test_label_length_must_match_the_rows(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.ones((5, 2)), y=np.arange(4))
    message = bad(r"d\.npz: labels 'y' have shape \(4,\) but the features have 5 rows", tmp_path / "d.npz", labels="y")
    assert "(5,)" in message


def test_a_missing_label_marks_the_row_unlabeled_and_fractional_labels_are_rejected(tmp_path, table):
    table.assign(label=table["label"].astype(float).where(table.index != 2)).to_csv(tmp_path / "m.csv", index=False)
    y = read_array_file(tmp_path / "m.csv", labels="label")[1]
    assert y.dtype == np.int64 and y[2] == -1 and (np.delete(y, 2) >= 0).all()
    table.assign(label=table["label"] + 0.5).to_csv(tmp_path / "f.csv", index=False)
    bad(r"f\.csv: labels 'label' hold non-integer numbers", tmp_path / "f.csv", labels="label")


@pytest.mark.parametrize(("shape", "fix"), [((6,), r"reshape\(-1, 1\)"), ((3, 2, 2), r"reshape\(len\(X\), -1\)")])
def test_arrays_that_are_not_2d_are_rejected_with_the_reshape(tmp_path, shape, fix):
    np.save(tmp_path / "x.npy", np.ones(shape, np.float32))
    bad(rf"x\.npy: features have shape \({shape[0]},.*need a 2-D array.*{fix}", tmp_path / "x.npy")


def test_constant_data_set_is_rejected(tmp_path):
    np.save(tmp_path / "c.npy", np.full((20, 3), 7.0, np.float32))
    bad(r"c\.npy: every feature is constant", DataConfig(source=str(tmp_path / "c.npy")))


def test_too_few_samples_for_the_split_says_how_many(tmp_path):
    np.save(tmp_path / "s.npy", np.arange(6, dtype=np.float32).reshape(3, 2))
    bad(r"s\.npy: 3 samples are too few to split with test_fraction=0.2 \(2 train, 1 test\)",
        DataConfig(source=str(tmp_path / "s.npy")))


def test_test_source_must_have_the_same_feature_count(tmp_path):
    np.save(tmp_path / "train.npy", np.random.default_rng(0).random((10, 3), np.float32))
    np.save(tmp_path / "test.npy", np.random.default_rng(1).random((10, 4), np.float32))
    cfg = DataConfig(source=str(tmp_path / "train.npy"), test_source=str(tmp_path / "test.npy"))
    bad(r"test\.npy' has 4 features but data.source=.*train\.npy' has 3", cfg)


def test_npy_with_labels_and_builtin_with_features_are_rejected(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((4, 2), np.float32))
    bad(r"x\.npy: a \.npy file holds one array", tmp_path / "x.npy", labels="y")
    bad(r"data.source='digits' is a built-in data set: data.features", DataConfig(features="X"))


def test_unreadable_files_are_input_errors(tmp_path):
    (tmp_path / "x.npy").write_bytes(b"not numpy")
    bad(r"x\.npy: not a readable numeric \.npy file", tmp_path / "x.npy")
    (tmp_path / "p.parquet").write_text("nope")
    bad(r"p\.parquet: cannot be read as parquet", tmp_path / "p.parquet")
    (tmp_path / "e.csv").write_text("")
    bad(r"e\.csv: cannot be read as csv", tmp_path / "e.csv")


# ---- splits --------------------------------------------------------------------------------------------------


def test_builtin_split_is_stratified_and_seeded():
    loaded = load_data(DataConfig(source="digits", test_fraction=0.2), seed=0)
    assert isinstance(loaded, LoadedData)
    # 1797 rows: 360 test, then 10% of the remaining 1437 (144) for validation.
    assert loaded.X_train.shape == (1293, 64) and loaded.X_val.shape == (144, 64) and loaded.X_test.shape == (360, 64)
    assert loaded.n_features == 64
    train_counts = np.bincount(loaded.y_train) / len(loaded.y_train)
    for y in (loaded.y_val, loaded.y_test):
        assert np.abs(train_counts - np.bincount(y) / len(y)).max() < 0.02
    again = load_data(DataConfig(source="digits"), seed=0)
    np.testing.assert_array_equal(again.X_test, loaded.X_test)
    assert not np.array_equal(load_data(DataConfig(source="digits"), seed=1).X_test, loaded.X_test)


def test_file_split_with_labels_keeps_rows_and_labels_together(tmp_path, table):
    table.to_csv(tmp_path / "d.csv", index=False)
    loaded = load_data(DataConfig(source=str(tmp_path / "d.csv"), labels="label", test_fraction=0.25), seed=3)
    assert loaded.X_train.shape == (27, 3) and loaded.X_val.shape == (3, 3) and loaded.X_test.shape == (10, 3)
    assert loaded.feature_names == ["a", "b", "c"] and np.bincount(loaded.y_test).tolist() == [5, 5]
    row = loaded.X_test[0]
    match = np.flatnonzero(np.isclose(table[["a", "b", "c"]].to_numpy(np.float32), row).all(axis=1))
    assert table["label"][match[0]] == loaded.y_test[0]


def test_test_source_is_used_as_is(tmp_path, table):
    table.iloc[:30].to_parquet(tmp_path / "train.parquet")
    table.iloc[30:].to_parquet(tmp_path / "test.parquet")
    cfg = DataConfig(source=str(tmp_path / "train.parquet"), test_source=str(tmp_path / "test.parquet"), labels="label")
    loaded = load_data(cfg)
    assert loaded.X_train.shape == (27, 3) and loaded.X_val.shape == (3, 3) and loaded.X_test.shape == (10, 3)
    np.testing.assert_array_equal(loaded.y_test, table["label"].iloc[30:])


def test_max_samples_caps_rows_with_a_seeded_choice():
    loaded = load_data(DataConfig(source="digits", max_samples=100), seed=0)
    assert loaded.X_train.shape[0] + loaded.X_val.shape[0] + loaded.X_test.shape[0] == 100
    np.testing.assert_array_equal(load_data(DataConfig(source="digits", max_samples=100)).X_test, loaded.X_test)


def test_large_npy_splits_off_the_last_rows_as_memmap_views(tmp_path, monkeypatch):
    monkeypatch.setattr(loading_module, "LARGE_FILE_BYTES", 0)
    for module in (loading_module, readers_module, scaling_module):
        monkeypatch.setattr(module, "CHUNK_ROWS", 7)
    X = np.random.default_rng(0).uniform(0, 10, (50, 4)).astype(np.float32)
    np.save(tmp_path / "big.npy", X)
    loaded = load_data(DataConfig(source=str(tmp_path / "big.npy"), test_fraction=0.2))
    assert isinstance(loaded.X_train, np.memmap) and isinstance(loaded.X_test, np.memmap)
    np.testing.assert_array_equal(loaded.X_train, X[:36])
    np.testing.assert_array_equal(loaded.X_val, X[36:40])
    np.testing.assert_array_equal(loaded.X_test, X[40:])
    scaled = loaded.scaled().train
    assert isinstance(scaled, np.memmap) and scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, loaded.scaling.transform(X[:36]), atol=1e-6)
    assert loaded.scaled().train is scaled


# ---- scaling -------------------------------------------------------------------------------------------------


def test_unit_scaling_maps_train_range_to_0_1_and_0_9_and_clips_test():
    X = np.array([[0.0, 5.0], [10.0, 5.0], [5.0, 5.0]], np.float32)
    scaling = fit_scaling(X, "unit")
    assert scaling.kind == "unit" and scaling.clip and scaling.shift.dtype == np.float32
    np.testing.assert_allclose(scaling.transform(X)[:, 0], [0.1, 0.9, 0.5], atol=1e-6)
    np.testing.assert_allclose(scaling.transform(X)[:, 1], 0.1)  # the constant feature
    out = scaling.transform(np.array([[-100.0, 9.0], [100.0, 1.0]], np.float32))
    np.testing.assert_allclose(out[:, 0], [0.0, 1.0])


def test_standard_scaling_gives_mean_0_std_1_and_is_chunk_independent(monkeypatch):
    X = np.random.default_rng(0).normal(3.0, 2.0, (101, 3)).astype(np.float32)
    X[:, 2] = 4.0
    whole = fit_scaling(X, "standard")
    Z = whole.transform(X)
    np.testing.assert_allclose(Z[:, :2].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(Z[:, :2].std(axis=0), 1, atol=1e-5)
    np.testing.assert_array_equal(Z[:, 2], 0)
    monkeypatch.setattr(scaling_module, "CHUNK_ROWS", 10)
    chunked = fit_scaling(X, "standard")
    np.testing.assert_allclose(chunked.shift, whole.shift, rtol=1e-6)
    np.testing.assert_allclose(chunked.factor, whole.factor, rtol=1e-6)


def test_none_scaling_is_the_identity():
    X = np.array([[-3.0, 8.0], [1.0, 2.0]], np.float32)
    np.testing.assert_array_equal(fit_scaling(X, "none").transform(X), X)


def test_scaling_is_fitted_on_train_only_and_data_stays_raw():
    loaded = load_data(DataConfig(source="digits", scale="unit"))
    assert loaded.X_train.max() == 16  # raw
    np.testing.assert_allclose(loaded.scaling.shift, loaded.X_train.min(axis=0))
    assert loaded.scaled().train.min() >= 0.1 - 1e-6 and loaded.scaled().train.max() <= 0.9 + 1e-6
    np.testing.assert_allclose(loaded.scaled().test, loaded.scaling.transform(loaded.X_test))


# ---- fingerprint ---------------------------------------------------------------------------------------------


def test_fingerprint_is_stable_and_follows_the_data(tmp_path):
    X = np.random.default_rng(0).random((20, 3), np.float32)
    np.save(tmp_path / "x.npy", X)
    cfg = DataConfig(source=str(tmp_path / "x.npy"))
    first = load_data(cfg).fingerprint
    assert len(first) == 64 and load_data(cfg).fingerprint == first
    X[0, 0] += 1.0
    np.save(tmp_path / "x.npy", X)
    assert load_data(cfg).fingerprint != first
    assert load_data(cfg, seed=1).fingerprint != load_data(cfg).fingerprint  # a different split


def test_loaded_data_pickles_without_its_scaled_copies():
    import pickle

    loaded = load_data(DataConfig(source="digits"))
    loaded.scaled()
    copy = pickle.loads(pickle.dumps(loaded))
    assert copy.fingerprint == loaded.fingerprint and copy._scaled == {}
    np.testing.assert_array_equal(copy.scaled().train, loaded.scaled().train)


def test_the_three_splits_are_disjoint_and_scaling_is_fitted_on_train_only(tmp_path):
    X = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", X=X, y=np.arange(200) % 4)
    loaded = load_data(DataConfig(source=str(tmp_path / "d.npz"), labels="y", validation_fraction=0.2), seed=0)
    rows = {name: {r.tobytes() for r in X} for name, X in zip(("train", "val", "test"), loaded.raw(), strict=True)}
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]
    assert sum(map(len, rows.values())) == 200 and len(rows["val"]) == 32 and len(rows["test"]) == 40
    np.testing.assert_array_equal(loaded.scaling.shift, loaded.X_train.min(axis=0))
