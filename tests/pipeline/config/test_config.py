"""PipelineConfig: YAML loading, dotted overrides, validation messages, resolution, schema and params."""

import json

import pytest
import yaml

from pipeline.config import (
    CONFIG_DIR,
    PipelineConfig,
    ResolvedLayer,
    TrainerSettings,
    apply_overrides,
    default_config_path,
    load_default_config,
)
from pipeline.errors import InputError

BASE = {"name": "t", "layers": [{"hidden": 20}, {"hidden": 10}]}


def make(*overrides, base=None):
    return PipelineConfig.from_dict(base or BASE, overrides)


def reject(*overrides, base=None) -> str:
    with pytest.raises(InputError) as caught:
        make(*overrides, base=base)
    return str(caught.value)


@pytest.mark.parametrize("name", ["digits", "nudged-digits", "patches"])
def test_every_shipped_config_loads_and_validates(name):
    config = load_default_config(name)
    assert config.name == name
    assert config.data.source == name
    assert default_config_path(name) == CONFIG_DIR / f"{name}.yaml"


def test_shipped_configs_match_their_purpose():
    assert load_default_config("patches").data.scale == "none"
    assert load_default_config("patches").finetune.epochs == 0
    assert load_default_config("patches").layers[0].hidden == 25
    assert load_default_config("digits").finetune.epochs > 0
    nudged = load_default_config("nudged-digits")
    assert (nudged.seed, nudged.data.test_fraction) == (0, 0.2)


def test_unknown_shipped_config_names_the_choices():
    with pytest.raises(InputError, match="digits, mnist, nudged-digits, patches"):
        default_config_path("mnist-60k")


def test_defaults_fill_every_section():
    config = make()
    assert config.data.source == "digits"
    assert config.defaults.sparsity == "kl" and config.defaults.beta == 3.0
    assert config.trainer.precision == "32-true"
    assert config.finetune.softmax_iterations == 400
    assert config.model_name == "t-encoder"
    assert make("register.model=mine").model_name == "mine"


def test_layer_settings_inherit_defaults_unless_overridden():
    config = make("defaults.beta=1.5", "layers.1.beta=0.5", "layers.1.lr=0.1")
    first, second = config.resolved_layers()
    assert isinstance(first, ResolvedLayer)
    assert (first.index, first.hidden, first.beta, first.lr) == (0, 20, 1.5, 0.003)
    assert (second.index, second.hidden, second.beta, second.lr) == (1, 10, 0.5, 0.1)
    with pytest.raises(ValueError):
        first.hidden = 3  # frozen


def test_layer_trainer_override_merges_with_the_global_trainer():
    config = make("trainer.accelerator=cpu", "layers.1.trainer.devices=2")
    assert config.layer_settings(0).trainer == TrainerSettings(accelerator="cpu")
    assert config.layer_settings(1).trainer == TrainerSettings(accelerator="cpu", devices=2)


def test_precision_shorthand_becomes_the_lightning_name():
    assert make("trainer.precision=32").trainer.precision == "32-true"
    assert make("layers.0.trainer.precision=16").layer_settings(0).trainer.precision == "16-mixed"
    assert "trainer.precision" in reject("trainer.precision=8")
    assert make("trainer.devices=auto").trainer.devices == "auto"


def test_overrides_parse_values_as_yaml_and_nest():
    d = apply_overrides(BASE, ["seed=3", "data.test_fraction=0.5", "defaults.tied=true", "data.features=[a, b]",
                               "data.labels=null", "name=x=y"])
    assert (d["seed"], d["data"]["test_fraction"], d["defaults"]["tied"]) == (3, 0.5, True)
    assert d["data"]["features"] == ["a", "b"] and d["data"]["labels"] is None
    assert d["name"] == "x=y"
    assert "data" not in BASE  # the input is not modified


def test_override_by_list_index_and_append():
    config = make("layers.0.hidden=100", "layers.1.sparsity=topk", "layers.1.k=5", "layers.2.hidden=7")
    assert [layer.hidden for layer in config.layers] == [100, 10, 7]
    assert config.layer_settings(1).sparsity == "topk"


def test_override_out_of_range_names_index_and_count():
    message = reject("layers.5.hidden=3")
    assert "index 5" in message and "has 2 entries" in message
    assert "index 2" in reject("layers.2.beta=1.0")  # appending needs hidden


@pytest.mark.parametrize("bad", ["seed", "=3", "name.x=1", "layers.first.hidden=2"])
def test_malformed_overrides_are_input_errors(bad):
    assert bad in reject(bad)


def test_type_errors_name_the_dotted_path_and_reason():
    message = reject("layers.0.hidden=abc")
    assert "layers.0.hidden" in message and "valid integer" in message
    assert "defaults.tied" in reject("defaults.tied=3")
    assert "layers.1.hidden" in reject("layers.1.hidden=0")


def test_unknown_keys_are_rejected_with_their_path():
    assert "layers.0.hiden: unknown key" in reject("layers.0.hiden=3")
    assert "data.sorce: unknown key" in reject("data.sorce=x")
    assert "bogus: unknown key" in reject("bogus=1")


@pytest.mark.parametrize(
    ("override", "path"),
    [
        ("data.test_fraction=0", "data.test_fraction"),
        ("data.test_fraction=1", "data.test_fraction"),
        ("defaults.target=1.0", "defaults.target"),
        ("layers.0.target=0", "layers.0.target"),
        ("defaults.beta=-1", "defaults.beta"),
        ("defaults.weight_decay=-0.1", "defaults.weight_decay"),
        ("layers.1.noise=1.0", "layers.1.noise"),
        ("defaults.lr=0", "defaults.lr"),
        ("layers.0.epochs=0", "layers.0.epochs"),
        ("finetune.epochs=-1", "finetune.epochs"),
        ("finetune.method=pseudo", "finetune.method"),
        ("finetune.validate_from_per_class=1", "finetune.validate_from_per_class"),
        ("finetune.semi.steps=0", "finetune.semi.steps"),
        ("finetune.semi.consistency_noise=1.0", "finetune.semi.consistency_noise"),
        ("finetune.semi.vat_eps=0", "finetune.semi.vat_eps"),
        ("finetune.semi.ramp=1.5", "finetune.semi.ramp"),
        ("finetune.semi.vat=-1", "finetune.semi.vat"),
        ("defaults.sparsity=sparse", "defaults.sparsity"),
        ("trainer.strategy=fsdp", "trainer.strategy"),
        ("name=has space", "name"),
        ("name=", "name"),
    ],
)
def test_out_of_range_values_name_their_field(override, path):
    assert f"{path}:" in reject(override)


def test_finetune_epochs_zero_is_allowed():
    assert make("finetune.epochs=0").finetune.epochs == 0


def test_a_finetune_section_written_before_the_semi_supervised_recipe_still_loads_with_its_defaults():
    old = make("finetune.epochs=30", "finetune.lr=0.001", "finetune.batch_size=128", "finetune.weight_decay=0.0001")
    assert (old.finetune.method, old.finetune.validate_from_per_class) == ("semi", 200)
    semi = old.finetune.semi
    assert (semi.steps, semi.lr, semi.batch_labeled, semi.batch_unlabeled) == (1000, 0.001, 64, 128)
    assert (semi.consistency, semi.consistency_noise, semi.vat, semi.vat_eps, semi.ramp) == (1.0, 0.4, 1.0, 0.3, 0.3)
    assert make("finetune.semi.steps=20", "finetune.method=supervised").finetune.semi.steps == 20
    assert "finetune.semi.stepz: unknown key" in reject("finetune.semi.stepz=3")


def test_at_least_one_layer_is_required():
    assert "layers" in reject(base={"name": "t", "layers": []})
    assert "layers: required field is missing" in reject(base={"name": "t"})


def test_kl_needs_a_sigmoid_encoder_per_resolved_layer():
    message = reject("layers.1.encoder_activation=relu")
    assert "layers.1.encoder_activation='relu'" in message and "sigmoid" in message
    assert "inherited from defaults" in reject("defaults.encoder_activation=tanh")
    assert make("defaults.encoder_activation=relu", "defaults.sparsity=l1", "defaults.decoder_activation=linear")


def test_topk_needs_k_between_1_and_hidden():
    assert "layers.0.k=None" in reject("layers.0.sparsity=topk")
    assert "layers.1.k=11" in reject("defaults.sparsity=topk", "defaults.k=11")  # layer 1 has 10 units
    assert "layers.0.k" in reject("layers.0.sparsity=topk", "layers.0.k=0")
    assert make("defaults.sparsity=topk", "defaults.k=10").layer_settings(1).k == 10


def test_standard_scaling_rejects_a_sigmoid_decoder_on_layer_0():
    message = reject("data.scale=standard", "layers.0.decoder_activation=sigmoid")
    assert "decoder_activation: linear or scale: unit" in message
    assert make("data.scale=standard").layer_settings(0).decoder_activation == "linear"  # auto
    assert make("data.scale=standard", "layers.0.decoder_activation=linear").data.scale == "standard"


def test_sigmoid_decoder_above_unbounded_codes_is_rejected():
    message = reject("layers.0.sparsity=l1", "layers.0.encoder_activation=relu", "layers.1.code_scaling=none",
                     "layers.1.decoder_activation=sigmoid")
    assert "layers.1.decoder_activation" in message and "linear" in message


def test_from_yaml_round_trips_through_to_yaml(tmp_path):
    config = make("layers.1.sparsity=topk", "layers.1.k=3", "layers.0.trainer.accelerator=cpu")
    path = tmp_path / "c.yaml"
    path.write_text(config.to_yaml())
    assert PipelineConfig.from_yaml(path) == config
    assert "sparsity: null" not in config.to_yaml()  # layers show only what they override
    assert PipelineConfig.from_yaml(path, ["seed=9"]).seed == 9


def test_missing_or_broken_yaml_names_the_file(tmp_path):
    with pytest.raises(InputError, match="nope.yaml: not found"):
        PipelineConfig.from_yaml(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(InputError, match="broken.yaml: invalid YAML"):
        PipelineConfig.from_yaml(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match="list.yaml: expected a mapping"):
        PipelineConfig.from_yaml(listy)


def test_validation_errors_from_yaml_name_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE | {"layers": [{"hidden": -1}]}))
    with pytest.raises(InputError, match=r"c\.yaml: layers\.0\.hidden"):
        PipelineConfig.from_yaml(path)


def test_json_schema_describes_every_field():
    schema = PipelineConfig.json_schema()
    json.dumps(schema)
    assert set(schema["required"]) == {"name", "layers"}
    assert schema["properties"]["name"]["description"].startswith("MLflow experiment")
    for model in schema["$defs"].values():
        for key, prop in model["properties"].items():
            assert prop.get("description"), f"{model['title']}.{key} has no description"


def test_flat_params_are_dotted_scalars_with_resolved_layers():
    params = make("layers.1.beta=0.5", "data.features=[a, b]", "layers.0.trainer.devices=2").flat_params()
    assert params["name"] == "t" and params["seed"] == 0
    assert params["layers.0.hidden"] == 20 and params["layers.1.hidden"] == 10
    assert params["layers.0.beta"] == 3.0 and params["layers.1.beta"] == 0.5
    assert params["layers.0.trainer.devices"] == 2 and "layers.1.trainer.devices" not in params
    assert params["data.features"] == '["a", "b"]'
    assert params["register.model"] == "null"
    assert all(isinstance(v, str | int | float | bool) for v in params.values())


def test_overrides_read_exponent_notation_as_numbers():
    from pipeline.config.overrides import apply_overrides

    assert apply_overrides({"defaults": {}}, ["defaults.lr=1e-3"])["defaults"]["lr"] == 0.001
    assert apply_overrides({"name": "x"}, ["name=digits"])["name"] == "digits"
