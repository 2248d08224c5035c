"""Exports (ONNX, TorchScript, safetensors) load back from their files and match the eager encoder."""

import numpy as np
import pytest
import torch

from pipeline.serving.export import TOLERANCE, check_export, export_encoder, load_exported
from sae.config import SAEConfig
from sae.model import SparseAutoencoder
from sae.scaling import Scaling
from sae.stack import StackedEncoder

TARGETS = {"onnx": "enc.onnx", "torchscript": "enc.pt", "safetensors": "enc"}


@pytest.fixture(scope="module")
def encoder() -> StackedEncoder:
    """64 -> 16 (sigmoid, kl) -> standardised -> 8 (relu, top-3), with standard scaling."""
    torch.manual_seed(0)
    layers = [
        SparseAutoencoder(SAEConfig(64, 16)),
        SparseAutoencoder(SAEConfig(16, 8, sparsity="topk", k=3, encoder_activation="relu")),
    ]
    rng = np.random.default_rng(0)
    scaling = Scaling(
        "standard",
        rng.normal(size=64).astype(np.float32),
        rng.uniform(0.5, 2, 64).astype(np.float32),
        0.0,
        False,
    )
    between = Scaling("standard", rng.uniform(0, 1, 16).astype(np.float32), rng.uniform(1, 4, 16).astype(np.float32),
                      0.0, False)
    return StackedEncoder.from_autoencoders(scaling, layers, meta={"name": "export-test"}, code_scalings=[between])


def _sample(n: int) -> np.ndarray:
    return np.random.default_rng(n).normal(size=(n, 64)).astype(np.float32)


@pytest.mark.parametrize("fmt", sorted(TARGETS))
def test_every_format_round_trips_through_its_files(encoder, fmt, tmp_path):
    path = export_encoder(encoder, fmt, tmp_path / TARGETS[fmt])
    assert path.exists()
    diff = check_export(encoder, path, fmt, _sample(37))
    assert diff < TOLERANCE
    codes = load_exported(path)(_sample(37))  # format guessed from the path
    assert codes.dtype == np.float32 and codes.shape == (37, 8)
    assert ((codes != 0).sum(axis=1) <= 3).all()  # the top layer keeps k=3 codes
    np.testing.assert_allclose(codes, encoder.transform(_sample(37)), atol=TOLERANCE)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_graph_exports_accept_any_batch_size(encoder, fmt, tmp_path):
    path = export_encoder(encoder, fmt, tmp_path / TARGETS[fmt])
    run = load_exported(path, fmt)
    for n in (1, 37):
        assert run(_sample(n)).shape == (n, 8)
        assert check_export(encoder, path, fmt, _sample(n)) < TOLERANCE


def test_onnx_names_its_input_and_output_with_a_dynamic_batch(encoder, tmp_path):
    import onnx

    model = onnx.load(str(export_encoder(encoder, "onnx", tmp_path / "enc.onnx")))
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("features", "codes")
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [64]
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17


def test_export_leaves_the_callers_module_untouched(encoder, tmp_path):
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    export_encoder(encoder, "torchscript", tmp_path / "enc.pt")
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert all(p.requires_grad for p in encoder.parameters())


def test_check_export_raises_when_the_export_differs(encoder, tmp_path):
    path = export_encoder(encoder, "safetensors", tmp_path / "enc")
    other = StackedEncoder.load(path)
    with torch.no_grad():
        other.encoders[0].bias.add_(0.5)
    with pytest.raises(RuntimeError, match="differs from torch by up to"):
        check_export(other, path, "safetensors", _sample(8))


def test_unknown_format_and_wrong_feature_count_are_named(encoder, tmp_path):
    with pytest.raises(
        ValueError, match="unknown export format 'pickle'; choose one of onnx, torchscript, safetensors"
    ):
        export_encoder(encoder, "pickle", tmp_path / "x")  # type: ignore[arg-type]
    run = load_exported(export_encoder(encoder, "onnx", tmp_path / "enc.onnx"))
    with pytest.raises(ValueError, match=r"shape \(2, 5\) but the exported encoder expects \(n, 64\)"):
        run(np.zeros((2, 5), np.float32))
    with pytest.raises(FileNotFoundError, match="missing.onnx: no such file"):
        load_exported(tmp_path / "missing.onnx")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_graph_exports_carry_the_scaling_between_layers(encoder, fmt, tmp_path):
    path = export_encoder(encoder, fmt, tmp_path / TARGETS[fmt])
    unscaled = StackedEncoder(encoder.scaling, [(c, e) for c, e in zip(encoder.configs, encoder.encoders, strict=True)])
    got = load_exported(path)(_sample(20))
    np.testing.assert_allclose(got, encoder.transform(_sample(20)), atol=TOLERANCE)
    assert np.abs(got - unscaled.transform(_sample(20))).max() > 0.1
