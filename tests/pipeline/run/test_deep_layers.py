"""Deep layers keep what the layer below found: rescaled codes between layers, carried in the encoder."""

import numpy as np
import pytest

from pipeline.config import CONFIG_DIR, PipelineConfig, load_default_config
from pipeline.errors import InputError
from pipeline.run.greedy import pretrain_stack


@pytest.fixture(scope="module")
def digits():
    return pretrain_stack(load_default_config("digits", ["finetune.epochs=0"]))


def test_the_shipped_digits_stack_keeps_what_layer_one_found(digits):
    probes = digits.probes
    assert probes["layer_2"] >= probes["layer_1"] - 0.005
    for layer in digits.layers:
        assert layer.test_metrics["fvu"] < 1.0


def test_the_encoder_applies_the_same_code_scaling_the_layers_trained_with(digits):
    scaling = digits.encoder.code_scalings[0]
    assert scaling.kind == "standard"
    first = np.asarray(digits.layers[0].codes.train)
    np.testing.assert_allclose(scaling.transform(first).mean(axis=0), 0.0, atol=1e-4)
    codes = digits.encoder.transform(digits.data.X_test)
    np.testing.assert_allclose(codes, np.asarray(digits.layers[1].codes.test), atol=1e-5)


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_upper_layers_train_on_standardised_codes_with_a_linear_decoder(path):
    config = PipelineConfig.from_yaml(path, ["data.source=digits"] if path.stem == "mnist" else [])
    first, *upper = config.resolved_layers()
    assert first.sparsity == "kl" and first.encoder_activation == "sigmoid"  # the classic layer stays the default
    for layer in upper:
        assert (layer.code_scaling, layer.decoder_activation) == ("standard", "linear")


def test_auto_decoder_is_sigmoid_only_where_inputs_lie_in_the_unit_range():
    def decoders(**sections):
        config = PipelineConfig.from_dict({"name": "t", "layers": [{"hidden": 8}, {"hidden": 4}], **sections})
        return [layer.decoder_activation for layer in config.resolved_layers()]

    assert decoders() == ["sigmoid", "linear"]
    assert decoders(defaults={"code_scaling": "unit"}) == ["sigmoid", "sigmoid"]
    assert decoders(data={"scale": "standard"}, defaults={"code_scaling": "none"}) == ["linear", "sigmoid"]


def test_a_sigmoid_decoder_on_standardised_codes_is_refused_with_the_fix():
    with pytest.raises(InputError, match=r"layers.1.decoder_activation=sigmoid .*code_scaling: unit"):
        PipelineConfig.from_dict({"name": "t", "defaults": {"decoder_activation": "sigmoid"},
                                  "layers": [{"hidden": 8}, {"hidden": 4}]})
