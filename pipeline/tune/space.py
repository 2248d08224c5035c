"""From a search space to Optuna suggestions, and from a trial's params back to a config."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import optuna

from pipeline.config import PipelineConfig
from pipeline.config.search import Range, field_annotations, is_int_field


def suggest(trial: optuna.trial.BaseTrial, space: dict[str, list[Any] | Range]) -> dict[str, Any]:
    """One value per field of ``space``: categorical for lists, int or float (maybe log) for ranges."""
    annotations = field_annotations()
    params: dict[str, Any] = {}
    for name, values in space.items():
        if not isinstance(values, Range):
            params[name] = trial.suggest_categorical(name, values)
        elif is_int_field(annotations[name]):
            params[name] = trial.suggest_int(name, int(values.low), int(values.high), log=values.log)
        else:
            params[name] = trial.suggest_float(name, float(values.low), float(values.high), log=values.log)
    return params


def config_point(config: PipelineConfig, index: int, space: dict[str, list[Any] | Range]) -> dict[str, Any]:
    """Layer ``index``'s own values of the searched fields, those inside ``space`` (a choice, or within a range)."""
    settings = config.layer_settings(index)
    point = {}
    for name, values in space.items():
        value = getattr(settings, name)
        inside = (value in values if not isinstance(values, Range)
                  else isinstance(value, int | float) and not isinstance(value, bool) and values.low <= value <= values.high)
        if inside:
            point[name] = value
    return point


def with_layer_params(config: PipelineConfig, index: int, params: dict[str, Any]) -> PipelineConfig:
    """``config`` with layer ``index``'s fields set to ``params`` (validated again, as a file would be)."""
    data = config.model_dump(mode="json")
    data["layers"] = [layer.model_dump(mode="json", exclude_none=True) for layer in config.layers]
    data["layers"][index] |= params
    return PipelineConfig.model_validate(data)


def study_name(config: PipelineConfig, index: int, fingerprint: str, parent_key: str | None) -> str:
    """``<name>-layer<N>-<hash>``: the same base layer, space, objective and parent layer give the same study."""
    assert config.search is not None
    base = config.model_dump(mode="json", include={"seed", "data", "defaults", "trainer"})
    search = config.search.model_dump(mode="json", include={"objective", "pruner"})
    payload = {"base": base, "layer": config.layers[index].model_dump(mode="json"), "index": index,
               "space": {k: v.model_dump() if isinstance(v, Range) else v for k, v in config.search.space(index).items()},
               "search": search, "inputs": fingerprint, "parent": parent_key}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return f"{config.name}-layer{index + 1}-{digest}"
