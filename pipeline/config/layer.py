"""The layer part of the config schema: sae.SAEConfig's fields as pydantic settings, the pipeline's layer fields,
per-layer overrides and the resolved layer (``pipeline.config`` builds the whole config from these)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from sae.config import SAEConfig

_MODEL_CONFIG = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True, allow_inf_nan=False)
_PRECISION_ALIASES = {32: "32-true", 64: "64-true", 16: "16-mixed", "32": "32-true", "64": "64-true", "16": "16-mixed"}
Precision = Annotated[
    Literal["64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true"],
    BeforeValidator(lambda v: _PRECISION_ALIASES.get(v, v) if isinstance(v, int | str) else v),
]



def inputs_in_unit_range(index: int, data_scale: str, code_scaling: str, below_encoder_activation: str) -> bool:
    """Whether layer ``index`` (0-based) trains on values in [0, 1], what a sigmoid decoder can reconstruct:
    layer 1 on unit-scaled data; an upper layer on unit-scaled codes, or unscaled codes of sigmoid units."""
    if index == 0:
        return data_scale == "unit"
    return code_scaling == "unit" or (code_scaling == "none" and below_encoder_activation == "sigmoid")


def auto_decoder(index: int, data_scale: str, code_scaling: str, below_encoder_activation: str) -> str:
    """What ``decoder_activation: auto`` means for a layer: sigmoid where its inputs lie in [0, 1], else linear."""
    unit = inputs_in_unit_range(index, data_scale, code_scaling, below_encoder_activation)
    return "sigmoid" if unit else "linear"

class _Section(BaseModel):
    model_config = _MODEL_CONFIG


class TrainerSettings(_Section):
    """Lightning Trainer arguments (global, and overridable per layer)."""

    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    """Hardware to train on; auto picks a GPU when one is visible."""
    devices: Annotated[int, Field(ge=1)] | Literal["auto"] = 1
    """Number of devices (or "auto")."""
    num_nodes: Annotated[int, Field(ge=1)] = 1
    """Number of machines."""
    strategy: Literal["auto", "ddp", "ddp_spawn"] = "auto"
    """Distribution strategy; ddp re-launches the command on every device."""
    precision: Precision = "32-true"
    """Numeric precision (Lightning names; 32, 64 and 16 are accepted as shorthands)."""


def attribute_docs(cls: type) -> dict[str, str]:
    """The docstrings written under a class's attributes (as SAEConfig documents its fields)."""
    docs: dict[str, str] = {}
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    for node, after in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr) \
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _sae_fields() -> dict[str, Any]:
    """SAEConfig's fields but the shapes, as pydantic fields: type, default, bounds and doc all come from sae."""
    hints, docs = get_type_hints(SAEConfig), attribute_docs(SAEConfig)
    return {f.name: (hints[f.name], Field(f.default, description=docs[f.name], **f.metadata))
            for f in dataclasses.fields(SAEConfig) if f.name not in SHAPE_FIELDS}


SHAPE_FIELDS = ("d_in", "d_hidden")  # set by the pipeline: d_in from the layer below, d_hidden = hidden
SAESettings = create_model(
    "SAESettings", __base__=_Section, __doc__="The layer's model: sae.SAEConfig's fields.", **_sae_fields()
)


class LayerSettings(SAESettings):  # type: ignore[misc, valid-type]
    """How one layer is built and trained; ``defaults`` holds these and every layer inherits them."""

    decoder_activation: Literal["auto", "sigmoid", "linear"] = "auto"
    """Output nonlinearity: sigmoid needs inputs in [0, 1]; auto = sigmoid when this layer's inputs lie in
    [0, 1] (data.scale unit on layer 1; code_scaling unit, or none after sigmoid codes, above), else linear."""
    code_scaling: Literal["standard", "unit", "none"] = "standard"
    """How the codes of the layer below are rescaled before this layer trains on them (fitted on the training
    split, carried inside the encoder): standard = mean 0, std 1 per unit; unit = min-max to [0.1, 0.9]; none
    = as they are. Layer 1 ignores it (data.scale applies)."""
    epochs: Annotated[int, Field(ge=1)] = 50
    """Training epochs for this layer."""
    batch_size: Annotated[int, Field(ge=1)] = 128
    """Rows per mini-batch."""
    lr: Annotated[float, Field(gt=0)] = 0.003
    """Learning rate."""
    optimizer: Literal["adam", "sgd", "lbfgs"] = "adam"
    """Optimizer."""
    early_stopping_patience: Annotated[int, Field(ge=1)] | None = None
    """Epochs without validation improvement before stopping; null = off."""
    compile: bool = False
    """Run each training step's objective and backward through torch.compile (paid once per shape in a process)."""


def _all_optional(model: type[BaseModel]) -> dict[str, Any]:
    """Fields of ``model`` as optional (None = inherit), same constraints and descriptions."""
    fields: dict[str, Any] = {}
    for key, info in model.model_fields.items():
        annotation = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        fields[key] = (annotation | None, Field(None, description=f"{info.description} null = inherit."))
    return fields


TrainerOverride = create_model(
    "TrainerOverride",
    __base__=_Section,
    __doc__="Per-layer Trainer override: fields left null inherit the top-level trainer section.",
    **_all_optional(TrainerSettings),
)

LayerConfig = create_model(
    "LayerConfig",
    __base__=_Section,
    __doc__="One layer: hidden units plus any LayerSettings field to override (null = inherit defaults).",
    hidden=(Annotated[int, Field(gt=0)], Field(description="Hidden units (code size) of this layer.")),
    trainer=(TrainerOverride | None, Field(None, description="Trainer override for this layer; null = inherit.")),
    **_all_optional(LayerSettings),
)


class ResolvedLayer(LayerSettings):
    """A layer with every setting resolved (layer value, else the defaults)."""

    def layer_fields(self) -> dict[str, Any]:
        """The SAEConfig fields of this layer (all but d_in and d_hidden)."""
        return {name: getattr(self, name) for name in SAESettings.model_fields}

    model_config = ConfigDict(frozen=True)
    index: int
    """0-based position in the stack."""
    hidden: int
    """Hidden units (code size)."""
    trainer: TrainerSettings
    """Trainer arguments after applying the layer's override."""
