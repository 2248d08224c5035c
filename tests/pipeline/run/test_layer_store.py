"""The layer store: cache keys that change with everything that changes weights, and a safe on-disk layout."""

import json
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.config import PipelineConfig
from pipeline.data.loading import load_data
from pipeline.run import entries, layer_store
from pipeline.run.greedy import layer_trainer
from pipeline.run.hooks import PipelineHooks

CONFIG = {
    "name": "store",
    "data": {"source": "digits", "max_samples": 300},
    "defaults": {"epochs": 2, "batch_size": 64, "lr": 0.01},
    "trainer": {"accelerator": "cpu"},
    "layers": [{"hidden": 12}, {"hidden": 6}],
    "finetune": {"epochs": 0},
}


@pytest.fixture(scope="module")
def setup():
    config = PipelineConfig.from_dict(CONFIG)
    data = load_data(config.data, config.seed)
    return config, data


@pytest.fixture(scope="module")
def stored(setup, tmp_path_factory):
    config, data = setup
    settings = config.layer_settings(0)
    fingerprint = layer_store.input_fingerprint(data)
    key = layer_store.layer_cache_key(fingerprint, settings, 0, None)
    directory = layer_store.layer_dir(tmp_path_factory.mktemp("cache"), key)
    layer_store.train_into(directory, layer_trainer(settings, data.scaled(), seed=0), seed=0, key=key)
    return directory, settings, data, key


def test_key_is_stable_and_changes_with_every_setting_seed_parent_and_data(setup):
    config, data = setup
    fingerprint = layer_store.input_fingerprint(data)
    base = config.layer_settings(1)
    key = layer_store.layer_cache_key(fingerprint, base, 1, "below")
    assert key == layer_store.layer_cache_key(fingerprint, config.layer_settings(1), 1, "below")
    assert len(key) == 64 and int(key, 16) >= 0
    changed = {
        layer_store.layer_cache_key(fingerprint, base.model_copy(update={field: value}), 1, "below")
        for field, value in [("hidden", 7), ("lr", 0.02), ("epochs", 3), ("beta", 2.0), ("noise", 0.1),
                             ("batch_size", 32), ("optimizer", "sgd"), ("weight_decay", 0.0), ("tied", True)]
    }
    trainer = base.model_copy(update={"trainer": base.trainer.model_copy(update={"precision": "64-true"})})
    changed |= {
        layer_store.layer_cache_key(fingerprint, trainer, 1, "below"),
        layer_store.layer_cache_key(fingerprint, base, 2, "below"),
        layer_store.layer_cache_key(fingerprint, base, 1, "other"),
        layer_store.layer_cache_key("f" * 64, base, 1, "below"),
    }
    assert key not in changed and len(changed) == 13


def test_input_fingerprint_covers_the_scaling(setup):
    config, data = setup
    standard = load_data(config.data.model_copy(update={"scale": "standard"}), config.seed)
    assert standard.fingerprint == data.fingerprint  # the raw data are the same ...
    assert layer_store.input_fingerprint(standard) != layer_store.input_fingerprint(data)  # ... layer 1's inputs not


def test_a_stored_layer_loads_back_bit_for_bit_without_pickle(stored):
    directory, settings, data, key = stored
    assert sorted(p.name for p in directory.iterdir()) == sorted([*layer_store.FILES, entries.CHECKSUMS_FILE])
    assert layer_store.is_complete(directory)
    layer = layer_store.load_layer(directory, settings, reused=True)
    assert layer.reused and layer.index == 0 and layer.model.config.d_hidden == 12
    weights = load_file(str(directory / "model.safetensors"))
    assert torch.equal(layer.model.encoder.weight, weights["encoder.weight"])
    assert layer.model.rho_hat is not None and layer.model.rho_hat.shape == (12,)
    assert len(layer.history) == 2 and "loss" in layer.history[-1]
    codes = np.load(directory / "train_codes.npy", allow_pickle=False)
    with torch.no_grad():
        expected = layer.model.encode(torch.from_numpy(data.scaled().train)).numpy()
    np.testing.assert_array_equal(codes, expected)
    np.testing.assert_array_equal(layer.codes.train, codes)
    meta = json.loads((directory / "config.json").read_text())
    assert meta["key"] == key and meta["settings"]["hidden"] == 12
    assert layer.test_metrics == pytest.approx(meta["test_metrics"])


def test_a_missing_file_makes_a_layer_incomplete(stored, tmp_path):
    directory, *_ = stored
    copy = tmp_path / directory.name
    copy.mkdir()
    for name in layer_store.FILES[:-1]:
        (copy / name).write_bytes((directory / name).read_bytes())
    assert not layer_store.is_complete(copy)
    assert not layer_store.is_complete(tmp_path / "absent")


def test_a_failing_layer_leaves_nothing_and_dead_partials_are_cleared(setup, tmp_path):
    config, data = setup
    settings = config.layer_settings(0).model_copy(update={"optimizer": "sgd", "lr": 1e30})
    directory = layer_store.layer_dir(tmp_path, "k" * 64)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = directory.with_name(f"{directory.name}.partial-{socket.gethostname()}-{dead.pid}")
    stale.mkdir(parents=True)

    class Probe(PipelineHooks):
        seen: list[bool] = []

        def layer_callbacks(self, index, s):
            Probe.seen.append(stale.exists())
            return []

    with pytest.raises(FloatingPointError):
        layer_store.train_into(directory, layer_trainer(settings, data.scaled(), seed=0, hooks=Probe()), seed=0)
    assert Probe.seen == [False]
    assert list(tmp_path.joinpath("layers").iterdir()) == []


def _garbage_weights(directory):
    """Valid safetensors with the right names and shapes, but other values."""
    tensors = load_file(str(directory / "model.safetensors"))
    save_file({k: torch.full_like(v, 0.5) for k, v in tensors.items()}, str(directory / "model.safetensors"))


def _truncate(name):
    def damage(directory):
        path = directory / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return damage


TAMPERING = {
    "garbage weights": (_garbage_weights, "model.safetensors does not match its recorded sha256"),
    "truncated weights": (_truncate("model.safetensors"), "model.safetensors has"),
    "truncated codes": (_truncate("val_codes.npy"), "val_codes.npy has"),
    "empty config": (lambda d: (d / "config.json").write_text(""), "config.json has 0 bytes"),
    "missing file": (lambda d: (d / "history.json").unlink(), "history.json missing"),
    "missing checksums": (lambda d: (d / "checksums.json").unlink(), "checksums.json missing"),
    "garbage checksums": (lambda d: (d / "checksums.json").write_text("{"), "checksums.json unreadable"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_a_damaged_entry_is_reported_with_what_is_wrong(stored, tmp_path, case):
    directory, *_ = stored
    copy = tmp_path / directory.name
    shutil.copytree(directory, copy)
    assert layer_store.check_entry(copy) is None
    damage, problem = TAMPERING[case]
    damage(copy)
    assert problem in layer_store.check_entry(copy)
    assert not layer_store.is_complete(copy)


def test_checksums_are_written_last_and_cover_every_file(stored):
    directory, *_ = stored
    recorded = json.loads((directory / "checksums.json").read_text())["files"]
    assert set(recorded) == set(layer_store.FILES)
    latest = max((directory / name).stat().st_mtime_ns for name in layer_store.FILES)
    assert (directory / "checksums.json").stat().st_mtime_ns >= latest
    assert recorded["model.safetensors"]["sha256"] == entries.file_sha256(directory / "model.safetensors")


def test_replace_swaps_a_damaged_entry_for_the_fresh_one(stored, setup, tmp_path):
    directory, settings, data, key = stored
    copy = layer_store.layer_dir(tmp_path, directory.name)
    shutil.copytree(directory, copy)
    _garbage_weights(copy)
    layer_store.train_into(copy, layer_trainer(settings, data.scaled(), seed=0), seed=0, key=key, replace=True)
    assert layer_store.check_entry(copy) is None
    fresh = load_file(str(copy / "model.safetensors"))
    assert not torch.all(fresh["encoder.weight"] == 0.5)
    assert [p.name for p in copy.parent.iterdir()] == [copy.name]  # no partial or replaced sibling left


def test_without_replace_a_sound_entry_stored_first_is_kept(stored, tmp_path):
    directory, settings, data, key = stored
    copy = layer_store.layer_dir(tmp_path, directory.name)
    shutil.copytree(directory, copy)
    before = (copy / "checksums.json").read_bytes()
    layer_store.train_into(copy, layer_trainer(settings, data.scaled(), seed=0), seed=0, key=key)  # a concurrent run's twin
    assert (copy / "checksums.json").read_bytes() == before
    assert [p.name for p in copy.parent.iterdir()] == [copy.name]
