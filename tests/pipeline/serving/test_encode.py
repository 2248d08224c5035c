"""Encoding data files with an encoder found by URI: local folders, MLflow models, runs and registry aliases."""

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from sklearn.datasets import load_digits

from pipeline.data.scaling import fit_scaling
from pipeline.errors import InputError
from pipeline.tracking.encoders import encode_file, resolve_encoder
from pipeline.tracking.pyfunc import log_encoder_model
from pipeline.tracking.registry import register_model
from pipeline.tracking.store import experiment_id, use_tracking_uri
from pipeline.tracking.versions import Headline
from sae import SAEConfig, SparseAutoencoder
from sae.stack import StackedEncoder


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch):
    """Run in a temp dir so nothing can fall back to a ./mlflow.db in the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def digits():
    return load_digits().data.astype(np.float32)


@pytest.fixture(scope="module")
def encoder(digits):
    """An untrained two-layer stack: encoding only needs consistent weights, not good ones."""
    torch.manual_seed(0)
    layers = [SparseAutoencoder(SAEConfig(d_in=64, d_hidden=12)), SparseAutoencoder(SAEConfig(d_in=12, d_hidden=5))]
    names = [f"pixel_{i}" for i in range(64)]
    return StackedEncoder.from_autoencoders(fit_scaling(digits, "unit"), layers, meta={"feature_names": names})


@pytest.fixture(scope="module")
def registered(encoder, digits, tmp_path_factory):
    """The encoder logged to a temp sqlite store and registered as enc@champion."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)
        client = MlflowClient(uri)
        run = client.create_run(experiment_id(client, uri, "encode-tests"))
        info = log_encoder_model(encoder, run_id=run.info.run_id, tracking_uri=uri, input_example=digits[:3])
        register_model(client, name="enc", source=info.model_uri, run_id=run.info.run_id, model_id=info.model_id,
                       headline=Headline("acc", 0.5, True))
        client.set_terminated(run.info.run_id)
        yield uri, run.info.run_id


def test_npy_in_npy_out_equals_the_encoder_in_small_chunks(encoder, digits, tmp_path):
    np.save(tmp_path / "x.npy", digits[:300])
    out = encode_file(encoder, tmp_path / "x.npy", tmp_path / "codes.npy", chunk_rows=64)
    np.testing.assert_allclose(np.load(out), encoder.transform(digits[:300]), atol=1e-6)


def test_a_csv_with_a_label_column_is_encoded_from_its_training_columns_to_parquet(encoder, digits, tmp_path):
    frame = pd.DataFrame(digits[:100], columns=encoder.meta["feature_names"])
    frame.insert(0, "label", np.arange(100) % 10)
    frame.to_csv(tmp_path / "x.csv", index=False)
    out = encode_file(encoder, tmp_path / "x.csv", tmp_path / "codes.parquet", chunk_rows=30)
    codes = pd.read_parquet(out)
    assert list(codes.columns) == ["sae0", "sae1", "sae2", "sae3", "sae4"]
    np.testing.assert_allclose(codes.to_numpy(), encoder.transform(digits[:100]), atol=1e-6)


def test_a_csv_with_the_training_columns_in_another_order_is_encoded_by_name(encoder, digits, tmp_path):
    names = encoder.meta["feature_names"]
    frame = pd.DataFrame(digits[:40], columns=names)[list(reversed(names))]
    frame.to_csv(tmp_path / "x.csv", index=False)
    out = encode_file(encoder, tmp_path / "x.csv", tmp_path / "codes.npy")
    np.testing.assert_allclose(np.load(out), encoder.transform(digits[:40]), atol=1e-6)


def test_a_feature_count_mismatch_names_both_counts(encoder, digits, tmp_path):
    np.save(tmp_path / "x.npy", digits[:10, :60])
    with pytest.raises(InputError, match="has 60 features but the encoder expects 64"):
        encode_file(encoder, tmp_path / "x.npy", tmp_path / "codes.npy")


def test_an_unknown_output_type_is_refused_before_any_work(encoder, tmp_path):
    with pytest.raises(InputError, match=r"codes\.txt.*\.npy, \.parquet"):
        encode_file(encoder, tmp_path / "missing.npy", tmp_path / "codes.txt")


def test_a_saved_encoder_folder_resolves_and_a_missing_one_is_an_input_error(encoder, digits, tmp_path):
    encoder.save(tmp_path / "enc")
    np.testing.assert_array_equal(resolve_encoder(tmp_path / "enc").transform(digits[:5]), encoder.transform(digits[:5]))
    np.testing.assert_array_equal(resolve_encoder((tmp_path / "enc").as_uri()).transform(digits[:5]),
                                  encoder.transform(digits[:5]))
    with pytest.raises(InputError, match="no such directory"):
        resolve_encoder(tmp_path / "nope")
    with pytest.raises(InputError, match="neither an encoder folder"):
        resolve_encoder(tmp_path)


@pytest.mark.parametrize("uri", ["models:/enc@champion", "models:/enc/1", "runs:/{run_id}/encoder"])
def test_mlflow_uris_resolve_to_the_same_encoder(registered, encoder, digits, uri):
    tracking, run_id = registered
    loaded = resolve_encoder(uri.format(run_id=run_id), tracking)
    np.testing.assert_array_equal(loaded.transform(digits[:20]), encoder.transform(digits[:20]))


def test_a_downloaded_mlflow_model_folder_resolves(registered, encoder, digits, tmp_path):
    tracking, _ = registered
    with use_tracking_uri(tracking):
        path = mlflow.artifacts.download_artifacts("models:/enc/1", dst_path=str(tmp_path), tracking_uri=tracking)
    assert (tmp_path / "MLmodel").is_file()
    np.testing.assert_array_equal(resolve_encoder(path).transform(digits[:5]), encoder.transform(digits[:5]))


def test_an_unknown_model_is_an_input_error_naming_it(registered):
    tracking, _ = registered
    with pytest.raises(InputError, match="models:/enc@nobody"):
        resolve_encoder("models:/enc@nobody", tracking)


def test_encode_file_works_from_the_champion_alias(registered, encoder, digits, tmp_path):
    tracking, _ = registered
    np.save(tmp_path / "x.npy", digits[:50])
    out = encode_file("models:/enc@champion", tmp_path / "x.npy", tmp_path / "codes.npy", tracking_uri=tracking)
    np.testing.assert_allclose(np.load(out), encoder.transform(digits[:50]), atol=1e-6)
