"""The stacked encoder: composition, depth, numpy transform, and the JSON + safetensors format."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from sae.config import SAEConfig
from sae.model import SparseAutoencoder
from sae.scaling import Scaling
from sae.stack import StackedEncoder


def _scaling(d_in: int, *, clip: bool = True) -> Scaling:
    rng = np.random.default_rng(1)
    return Scaling(
        "unit",
        rng.normal(size=d_in).astype(np.float32),
        rng.uniform(0.1, 0.5, d_in).astype(np.float32),
        0.1,
        clip,
    )


def _autoencoders() -> list[SparseAutoencoder]:
    torch.manual_seed(0)
    first = SparseAutoencoder(SAEConfig(12, 6))
    second = SparseAutoencoder(SAEConfig(6, 4, sparsity="topk", k=2, encoder_activation="relu"))
    with torch.no_grad():  # non-zero biases so a dropped bias would show
        first.encoder.bias.normal_()
        second.encoder.bias.normal_()
    return [first, second]


@pytest.fixture
def stack() -> tuple[StackedEncoder, list[SparseAutoencoder], Scaling]:
    aes, scaling = _autoencoders(), _scaling(12)
    return (
        StackedEncoder.from_autoencoders(
            scaling, aes, meta={"name": "t", "feature_names": list("abcdefghijkl")}
        ),
        aes,
        scaling,
    )


def _x(n: int = 9, d_in: int = 12) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(2).normal(size=(n, d_in)).astype(np.float32))


def test_forward_equals_the_autoencoders_encode_on_scaled_input(stack):
    encoder, (first, second), scaling = stack
    x = _x()
    scaled = torch.from_numpy(scaling.transform(x.numpy()))
    expected = second.encode(first.encode(scaled))
    codes = encoder(x)
    assert torch.allclose(codes, expected, atol=1e-6)
    assert ((codes != 0).sum(dim=1) <= 2).all()  # the topk layer keeps at most k=2 codes per row


def test_weights_are_copied_not_shared(stack):
    encoder, (first, _), _ = stack
    before = encoder(_x())
    with torch.no_grad():
        first.encoder.weight.add_(1.0)
    assert torch.equal(encoder(_x()), before)


def test_encode_depth_gives_each_layers_codes_and_rejects_bad_depths(stack):
    encoder, (first, _), scaling = stack
    x = _x(5)
    assert (encoder.depth, encoder.d_in, encoder.d_out) == (2, 12, 4)
    assert encoder.encode(x, depth=1).shape == (5, 6)
    assert encoder.encode(x, depth=2).shape == (5, 4)
    assert torch.allclose(
        encoder.encode(x, depth=1), first.encode(torch.from_numpy(scaling.transform(x.numpy())))
    )
    assert torch.equal(encoder.encode(x), encoder(x))
    for bad in (0, 3, -1):
        with pytest.raises(ValueError, match=rf"depth={bad}.*valid depths are 1\.\.2"):
            encoder.encode(x, depth=bad)


def test_layers_whose_sizes_do_not_chain_are_rejected():
    with pytest.raises(ValueError, match="layer 2 has d_in=5 but receives 6 features from layer 1"):
        StackedEncoder(
            _scaling(12), [(SAEConfig(12, 6), nn.Linear(12, 6)), (SAEConfig(5, 3), nn.Linear(5, 3))]
        )
    with pytest.raises(ValueError, match="layer 1 has d_in=10 but receives 12 features from the input"):
        StackedEncoder(_scaling(12), [(SAEConfig(10, 6), nn.Linear(10, 6))])


def test_transform_in_chunks_equals_forward(stack):
    encoder, _, _ = stack
    x = _x(23)
    with torch.no_grad():
        expected = encoder(x).numpy()
    codes = encoder.transform(x.numpy().astype(np.float64), batch_size=5)
    assert codes.dtype == np.float32 and codes.shape == (23, 4)
    np.testing.assert_allclose(codes, expected, atol=1e-6)  # matmul rounding depends on the batch size
    np.testing.assert_allclose(
        encoder.transform(x.numpy(), depth=1), encoder.encode(x, depth=1).detach().numpy(), atol=1e-6
    )
    assert encoder.transform(np.empty((0, 12))).shape == (0, 4)


def test_transform_names_both_feature_counts_on_mismatch(stack):
    encoder, _, _ = stack
    with pytest.raises(ValueError, match="input has 7 features but the encoder expects 12 features"):
        encoder.transform(np.zeros((3, 7), np.float32))


def test_save_load_round_trip_is_exact_and_writes_no_pickle(stack, tmp_path):
    encoder, _, _ = stack
    encoder.save(tmp_path / "enc")
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "enc" / "config.json").read_text())
    assert config["scaling"] == {"kind": "unit", "offset": pytest.approx(0.1), "clip": True}
    assert [layer["sparsity"] for layer in config["layers"]] == ["kl", "topk"]
    loaded = StackedEncoder.load(tmp_path / "enc")
    x = _x()
    assert torch.equal(loaded(x), encoder(x))
    assert loaded.configs == encoder.configs
    assert loaded.meta == {"name": "t", "feature_names": list("abcdefghijkl")}
    assert loaded.scaling.kind == "unit" and loaded.scaling.clip


def test_load_names_a_missing_directory_or_file(stack, tmp_path):
    encoder, _, _ = stack
    with pytest.raises(FileNotFoundError, match="nowhere: no such directory"):
        StackedEncoder.load(tmp_path / "nowhere")
    encoder.save(tmp_path / "enc")
    (tmp_path / "enc" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors: file missing"):
        StackedEncoder.load(tmp_path / "enc")


def test_load_rejects_another_format_version(stack, tmp_path):
    encoder, _, _ = stack
    path = encoder.save(tmp_path / "enc") / "config.json"
    config = json.loads(path.read_text())
    config["format_version"] = 99
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="version 99; this code reads 'sae-stacked-encoder' versions 1, 2"):
        StackedEncoder.load(tmp_path / "enc")


def test_load_rejects_weights_that_do_not_match_the_config(stack, tmp_path):
    encoder, _, _ = stack
    path = encoder.save(tmp_path / "enc") / "config.json"
    config = json.loads(path.read_text())
    config["layers"][1]["d_hidden"] = 5
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model\.safetensors: weights do not match config\.json"):
        StackedEncoder.load(tmp_path / "enc")


def test_save_rejects_meta_that_is_not_json(tmp_path):
    encoder = StackedEncoder(_scaling(3), meta={"when": object()})
    with pytest.raises(ValueError, match="meta is not JSON-serialisable"):
        encoder.save(tmp_path / "enc")


def _between(d: int) -> Scaling:
    rng = np.random.default_rng(3)
    return Scaling("standard", rng.uniform(0, 1, d).astype(np.float32), rng.uniform(1, 3, d).astype(np.float32),
                   0.0, False)


def test_code_scalings_apply_between_layers_and_survive_save_and_load(tmp_path):
    aes, scaling = _autoencoders(), _scaling(12)
    encoder = StackedEncoder.from_autoencoders(scaling, aes, code_scalings=[_between(6)])
    x = _x()
    with torch.no_grad():
        first = aes[0].encode(encoder.scaler(x))
        expected = aes[1].encode(torch.from_numpy(_between(6).transform(first.numpy())))
        assert torch.allclose(encoder(x), expected, atol=1e-6)
        assert torch.allclose(encoder.encode(x, depth=1), first)
    loaded = StackedEncoder.load(encoder.save(tmp_path / "enc"))
    assert json.loads((tmp_path / "enc" / "config.json").read_text())["format_version"] == 2
    assert loaded.code_scalings[0].kind == "standard"
    with torch.no_grad():
        assert torch.equal(loaded(x), encoder(x))


def test_version_1_files_load_with_identity_code_scalings(stack, tmp_path):
    encoder, _, _ = stack
    directory = encoder.save(tmp_path / "v1")
    config = json.loads((directory / "config.json").read_text())
    del config["code_scalings"]
    config["format_version"] = 1
    (directory / "config.json").write_text(json.dumps(config))
    from safetensors.torch import load_file, save_file

    tensors = {k: v for k, v in load_file(str(directory / "model.safetensors")).items() if not k.startswith("code_")}
    save_file(tensors, str(directory / "model.safetensors"))
    loaded = StackedEncoder.load(directory)
    with torch.no_grad():
        assert torch.equal(loaded(_x()), encoder(_x()))


def test_a_code_scaling_of_the_wrong_width_is_named():
    with pytest.raises(ValueError, match="code scaling over 5 features follows a layer of 6 units"):
        StackedEncoder.from_autoencoders(_scaling(12), _autoencoders(), code_scalings=[_between(5)])
