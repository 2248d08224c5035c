"""The ``search:`` config section: which layer fields ``sae-pipeline tune`` varies, over what, for how long.

A space maps a layer field to a list of choices (``hidden: [64, 128]``, ``sparsity: [kl, topk]``) or to a
range (``target: {low: 0.02, high: 0.3, log: true}``). Every choice and both ends of a range are checked
against the field's own type and bounds, so a space can only propose layers that ``run`` would accept.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from pipeline.config.layer import LayerConfig, LayerSettings

_STRICT = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)
Objective = Literal["probe", "reconstruction"]
Pruner = Literal["median", "hyperband", "none"]


class Range(BaseModel):
    """A numeric range: floats for float fields, integers for int fields; ``log`` samples on a log scale."""

    model_config = _STRICT
    low: int | float
    """Smallest value (inclusive)."""
    high: int | float
    """Largest value (inclusive); must be above low."""
    log: bool = False
    """Sample uniformly in log space (needs low > 0)."""


def field_annotations() -> dict[str, Any]:
    """Searchable layer fields (``hidden`` plus every LayerSettings field) with their bounds."""
    hidden = LayerConfig.model_fields["hidden"]
    out = {"hidden": Annotated[hidden.annotation, *hidden.metadata]}
    for name, info in LayerSettings.model_fields.items():
        out[name] = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
    return out


def is_int_field(annotation: Any) -> bool:
    """True when a field takes integers only (ranges over it are sampled as integers)."""
    base = typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation
    if typing.get_origin(base) in (typing.Union, types.UnionType):
        return all(is_int_field(a) for a in typing.get_args(base) if a is not type(None))
    return base is int


def _check_range(name: str, annotation: Any, space: Range) -> None:
    if not space.low < space.high:
        raise ValueError(f"{name}: low={space.low} must be below high={space.high}; swap them or widen the range")
    if space.log and space.low <= 0:
        raise ValueError(f"{name}: log=true needs low > 0 (got low={space.low}); raise low or set log: false")
    base = typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation
    numeric = is_int_field(annotation) or base is float or (
        typing.get_origin(base) in (typing.Union, types.UnionType) and float in typing.get_args(base))
    if not numeric:
        raise ValueError(f"{name}: a range needs a numeric field; give a list of choices instead")
    if is_int_field(annotation) and not (isinstance(space.low, int) and isinstance(space.high, int)):
        raise ValueError(f"{name} is an integer field: low and high must be integers (got {space.low}, {space.high})")
    adapter = TypeAdapter(annotation)
    for end, value in (("low", space.low), ("high", space.high)):
        try:
            adapter.validate_python(float(value) if base is float else value)
        except ValidationError as error:
            reason = error.errors()[0]["msg"]
            raise ValueError(f"{name}.{end}={value}: outside the field's bounds ({reason})") from None


Space = dict[str, list[Any] | Range]


def check_space(where: str, space: Space) -> None:
    """Raise ValueError naming ``where.<field>`` for unknown fields and values outside a field's bounds."""
    annotations = field_annotations()
    for name, values in space.items():
        if name not in annotations:
            raise ValueError(f"{where}.{name}: not a layer field; searchable fields: {', '.join(annotations)}")
        if isinstance(values, Range):
            _check_range(f"{where}.{name}", annotations[name], values)
            continue
        if not values:
            raise ValueError(f"{where}.{name}: empty list of choices; give at least one value")
        adapter = TypeAdapter(annotations[name], config=ConfigDict(strict=True))
        for value in values:
            try:
                adapter.validate_python(value)
            except ValidationError as error:
                raise ValueError(f"{where}.{name}: choice {value!r} is invalid ({error.errors()[0]['msg']})") from None


class SearchConfig(BaseModel):
    """How ``sae-pipeline tune`` searches: the space per layer, trials, objective, time limit and pruner."""

    model_config = _STRICT
    defaults: Space = Field(default_factory=dict)
    """Space applied to every layer (a layer's own entry wins field by field)."""
    layers: dict[Annotated[int, Field(ge=0, strict=False)], Space] = Field(default_factory=dict)
    """Space of layer N (0-based, as in layers.N)."""
    trials: Annotated[int, Field(ge=1)] = 20
    """Trials per layer (completed, pruned and failed ones all count)."""
    objective: Objective | None = None
    """probe: validation accuracy of a logistic-regression probe on the codes (needs labels);
    reconstruction: validation reconstruction mse; null = probe when the data has labels."""
    timeout: Annotated[float, Field(gt=0)] | None = None
    """Seconds per layer after which no new trial starts; null = no limit."""
    pruner: Pruner = "median"
    """Stop bad trials early by their per-epoch validation objective: median, hyperband or none."""
    storage: str | None = None
    """Optuna storage URL; null = sqlite optuna.db beside the MLflow sqlite store (else in cache_dir)."""

    @model_validator(mode="after")
    def _check_spaces(self) -> SearchConfig:
        check_space("defaults", self.defaults)
        for index, space in self.layers.items():
            check_space(f"layers.{index}", space)
        return self

    def space(self, index: int) -> Space:
        """The merged space of layer ``index``: defaults, overridden field by field by the layer's entry."""
        return self.defaults | self.layers.get(index, {})


__all__ = ["Objective", "Pruner", "Range", "Space", "SearchConfig", "field_annotations", "is_int_field"]
