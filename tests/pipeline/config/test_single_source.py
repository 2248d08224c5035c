"""One definition of a layer's fields: sae.SAEConfig. The pipeline's schema and SAETransformer must agree with it."""

import dataclasses
import inspect
from typing import get_args, get_type_hints

import annotated_types
import pytest
from pydantic import ValidationError

from pipeline.config import SHAPE_FIELDS, LayerConfig, LayerSettings, attribute_docs
from pipeline.serving.transformer import SAETransformer
from sae.config import SAEConfig

SAE_FIELDS = {f.name: f for f in dataclasses.fields(SAEConfig) if f.name not in SHAPE_FIELDS}
TRAINING_FIELDS = ("epochs", "batch_size", "lr", "optimizer")  # LayerSettings' own fields SAETransformer takes
# The pipeline's one extension of a layer field, shared with SAETransformer: the decoder picked from the input range.
EXTENDED = ("decoder_activation",)
SAME_FIELDS = sorted(set(SAE_FIELDS) - set(EXTENDED))
BOUNDS = {annotated_types.Gt: "gt", annotated_types.Ge: "ge", annotated_types.Lt: "lt", annotated_types.Le: "le"}


def bounds(info) -> dict[str, float]:
    """A pydantic field's numeric bounds as {"ge": 1, ...} (the form SAEConfig's field metadata uses)."""
    out = {}
    for item in info.metadata:
        for kind, key in BOUNDS.items():
            if isinstance(item, kind):
                out[key] = getattr(item, key)
    return out


def test_every_sae_field_has_a_docstring():
    docs = attribute_docs(SAEConfig)
    assert set(docs) == {f.name for f in dataclasses.fields(SAEConfig)} and all(docs.values())


@pytest.mark.parametrize("name", SAME_FIELDS)
def test_layer_settings_field_equals_the_sae_config_field(name):
    field, info = SAE_FIELDS[name], LayerSettings.model_fields[name]
    assert info.annotation == get_type_hints(SAEConfig)[name], "type"
    assert info.default == field.default, "default"
    assert bounds(info) == dict(field.metadata), "bounds"
    assert info.description == attribute_docs(SAEConfig)[name], "doc"


def test_the_decoder_field_adds_auto_to_the_sae_choices():
    info = LayerSettings.model_fields["decoder_activation"]
    assert get_args(info.annotation) == ("auto", *get_args(get_type_hints(SAEConfig)["decoder_activation"]))
    assert info.default == "auto" and "sigmoid" in info.description


def test_layer_settings_hold_exactly_the_sae_fields_plus_the_training_ones():
    extra = {*TRAINING_FIELDS, "early_stopping_patience", "compile", "code_scaling"}  # code_scaling: how the stack feeds it
    assert set(LayerSettings.model_fields) - set(SAE_FIELDS) == extra
    assert not set(SHAPE_FIELDS) & set(LayerSettings.model_fields)  # shapes are set by the stack


@pytest.mark.parametrize("name", SAME_FIELDS)
def test_a_layer_override_field_has_the_sae_doc_and_defaults_to_inherit(name):
    info = LayerConfig.model_fields[name]
    assert info.default is None and info.description == f"{attribute_docs(SAEConfig)[name]} null = inherit."


@pytest.mark.parametrize(("name", "value"), [("target", 1.0), ("beta", -1.0), ("noise", 1.0), ("k", 0)])
def test_an_out_of_bounds_sae_value_is_refused_by_every_definition(name, value):
    with pytest.raises(ValueError, match=name):
        SAEConfig(d_in=4, d_hidden=4, **{name: value})
    with pytest.raises(ValidationError, match=name):
        LayerSettings(**{name: value})
    with pytest.raises(ValidationError, match=name):
        LayerConfig(hidden=4, **{name: value})


def test_sae_transformer_takes_every_layer_field_with_the_same_default():
    params = {n: p.default for n, p in inspect.signature(SAETransformer).parameters.items()}
    expected = {name: field.default for name, field in SAE_FIELDS.items()}
    expected |= {name: LayerSettings.model_fields[name].default for name in TRAINING_FIELDS}
    expected["decoder_activation"] = "auto"  # the transformer's one extension: picked from the input range
    assert {name: params.get(name, "missing") for name in expected} == expected
    assert params["code_scaling"] == LayerSettings.model_fields["code_scaling"].default
    assert set(params) - set(expected) == {"hidden", "scale", "code_scaling", "seed", "model_uri", "tracking_uri"}
