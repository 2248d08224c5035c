"""The search: section: spaces name real layer fields, stay inside each field's bounds, and merge per layer."""

import pytest

from pipeline.config import PipelineConfig
from pipeline.config.search import Range
from pipeline.errors import InputError


def config(search: dict) -> PipelineConfig:
    return PipelineConfig.from_dict({"name": "t", "layers": [{"hidden": 8}, {"hidden": 4}], "search": search})


def error(search: dict) -> str:
    with pytest.raises(InputError) as caught:
        config(search)
    return str(caught.value)


def test_a_layer_entry_overrides_the_defaults_field_by_field():
    search = config({"defaults": {"hidden": [8, 16], "target": {"low": 0.02, "high": 0.3, "log": True}},
                     "layers": {1: {"hidden": [4], "sparsity": ["kl", "topk"]}}}).search
    assert search.space(0) == {"hidden": [8, 16], "target": Range(low=0.02, high=0.3, log=True)}
    assert search.space(1) == {"hidden": [4], "target": Range(low=0.02, high=0.3, log=True), "sparsity": ["kl", "topk"]}
    assert (search.trials, search.objective, search.pruner, search.timeout) == (20, None, "median", None)


def test_the_search_section_survives_yaml_round_trip(tmp_path):
    original = config({"defaults": {"beta": {"low": 0.5, "high": 5.0}}, "layers": {1: {"hidden": [2, 4]}}, "trials": 3})
    path = tmp_path / "c.yaml"
    path.write_text(original.to_yaml())
    assert PipelineConfig.from_yaml(path).search == original.search


@pytest.mark.parametrize(("search", "expected"), [
    ({"defaults": {"hiden": [4]}}, "search: defaults.hiden: not a layer field"),
    ({"layers": {1: {"hidden": [4, -1]}}}, "layers.1.hidden: choice -1 is invalid (Input should be greater than 0)"),
    ({"defaults": {"sparsity": ["kl", "l3"]}}, "defaults.sparsity: choice 'l3' is invalid"),
    ({"defaults": {"target": {"low": 0.3, "high": 0.02}}}, "defaults.target: low=0.3 must be below high=0.02"),
    ({"defaults": {"target": {"low": 0.0, "high": 0.5}}}, "defaults.target.low=0.0: outside the field's bounds"),
    ({"defaults": {"target": {"low": 0.1, "high": 1.5}}}, "defaults.target.high=1.5: outside the field's bounds"),
    ({"defaults": {"weight_decay": {"low": 0, "high": 0.1, "log": True}}}, "weight_decay: log=true needs low > 0"),
    ({"defaults": {"hidden": {"low": 2.5, "high": 8}}}, "defaults.hidden is an integer field"),
    ({"defaults": {"sparsity": {"low": 1, "high": 2}}}, "defaults.sparsity: a range needs a numeric field"),
    ({"defaults": {"hidden": []}}, "defaults.hidden: empty list of choices"),
    ({"layers": {2: {"hidden": [4]}}}, "search.layers.2: the stack has 2 layers"),
    ({"trials": 0}, "search.trials: Input should be greater than or equal to 1"),
    ({"pruner": "sometimes"}, "search.pruner: Input should be 'median', 'hyperband' or 'none'"),
    ({"objective": "loss"}, "search.objective: Input should be 'probe' or 'reconstruction'"),
    ({"timeout": -5}, "search.timeout: Input should be greater than 0"),
    ({"trails": 5}, "search.trails: unknown key"),
])
def test_bad_spaces_are_rejected_with_the_field_named(search, expected):
    assert expected in error(search)
