"""The pipeline config: typed, validated pydantic models read from YAML with ``key=value`` overrides."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    model_validator,
)

from pipeline.config.finetune import FinetuneConfig
from pipeline.config.layer import (
    LayerConfig,
    LayerSettings,
    ResolvedLayer,
    SAESettings,
    TrainerSettings,
    _Section,
    auto_decoder,
    inputs_in_unit_range,
)
from pipeline.config.overrides import apply_overrides
from pipeline.config.reading import check_size, load_yaml, quoted, read_config_text
from pipeline.config.search import SearchConfig
from pipeline.data.links import check_no_loop
from pipeline.errors import InputError
from sae.config import SAEConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# Union members pydantic adds to error locations; they are not field names.
_LOC_NOISE = {"int", "float", "str", "bool", "none"}


class DataConfig(_Section):
    """Where the data comes from and how it is split and scaled."""

    source: Annotated[str, Field(min_length=1)] = "digits"
    """Built-in data set name (digits, nudged-digits, patches) or a path to .npy/.npz/.csv/.parquet."""
    test_source: str | None = None
    """Optional separate test file; otherwise test_fraction of the rows are split off."""
    features: str | list[str] | None = None
    """npz key, or list of columns (default: all columns but the labels); a built-in's is images."""
    labels: str | None = None
    """npz key or column name of the class labels (a built-in's: labels); -1, NaN or an empty cell marks a row
    without a label: the layers train on it, validation, test, probes and fine-tuning never see it."""
    unlabeled_source: (Annotated[str, Field(min_length=1)]
                       | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None) = None
    """Extra rows without labels, only for pretraining: a file or a list of files (any supported format, the
    source's features; labels in them are ignored)."""
    unlabeled_classes: Annotated[list[int | str], Field(min_length=1)] | None = None
    """Classes whose labels are dropped: their rows join pretraining as unlabeled rows (e.g. [5, 6, 7, 8, 9])."""
    pretrain_on: Literal["all", "unlabeled"] = "all"
    """Training rows the layers learn from: all (labeled and unlabeled), or only the unlabeled ones (self-taught
    learning: features from other data, e.g. other classes, then learned from the labeled rows' labels)."""
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    """Fraction of rows held out for testing, strictly between 0 and 1; only reported, never used to choose."""
    validation_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    """Fraction of the training rows held out for validation (early stopping, probe and epoch choices)."""
    scale: Literal["unit", "standard", "none"] = "unit"
    """unit: min-max to [0.1, 0.9] (clipped to [0, 1]); standard: mean 0, std 1; none: raw."""
    max_samples: Annotated[int, Field(ge=4)] | None = None
    """Optional cap on rows per file (the first N after a seeded shuffle); handy for quick runs."""


class RegisterConfig(_Section):
    """Where the trained encoder is registered in MLflow."""

    model: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$", max_length=200)] | None = None
    """Registered model name (letters, digits, _ . -; not starting with a dot); null = the config name followed by -encoder (digits-encoder for name digits)."""
    alias: Annotated[str, Field(min_length=1)] = "champion"
    """Alias moved to the new version only when its headline metric strictly beats the holder's."""
    encoder: Literal["pretrained", "finetuned", "best"] = "best"
    """Which encoder is registered when fine-tuning ran: best = the fine-tuned one only when it beats the
    pretrained one (softmax on frozen codes) on validation accuracy; the reason is recorded on the version."""


# The YAML section is called `register`, which shadows ABCMeta.register on the class (harmless on instances).
# Pydantic warns about it while building the class below; the filter is scoped to that (nothing global).
_shadowing = warnings.catch_warnings()
_shadowing.__enter__()
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class PipelineConfig(_Section):
    """A whole run: data, layer defaults, the layers, fine-tuning and registration."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    """MLflow experiment name (letters, digits, _ . -); it also names the registered model, e.g. digits-encoder."""
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    """Seed for the split, shuffling and initialisation (0 to 2**32 - 1, what numpy and scikit-learn accept)."""
    tracking_uri: str | None = None
    """MLflow tracking URI; null = $MLFLOW_TRACKING_URI, else the file mlflow.db in the working directory."""
    cache_dir: str = ".sae-cache"
    """Where flows keep trained layers for reuse; relative paths start at the working directory."""
    data: DataConfig = Field(default_factory=DataConfig)
    """The data section."""
    defaults: LayerSettings = Field(default_factory=LayerSettings)
    """Settings every layer inherits unless it overrides them."""
    trainer: TrainerSettings = Field(default_factory=TrainerSettings)
    """Lightning Trainer arguments, overridable per layer."""
    layers: Annotated[list[LayerConfig], Field(min_length=1)]  # type: ignore[valid-type]
    """The stack, bottom first: each needs hidden and may override any default."""
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    """The fine-tuning section."""
    register: RegisterConfig = Field(default_factory=RegisterConfig)
    """The model-registry section."""
    search: SearchConfig | None = None
    """What `sae-pipeline tune` searches (ignored by `run`); null = nothing to tune."""

    @model_validator(mode="after")
    def _check_layers(self) -> PipelineConfig:
        for layer in self.resolved_layers():
            _check_layer(self, layer)
        if self.search is not None and (extra := [i for i in self.search.layers if i >= len(self.layers)]):
            raise ValueError(f"search.layers.{extra[0]}: the stack has {len(self.layers)} layers (0-based); "
                             f"use an index below {len(self.layers)}")
        if self.data.scale == "standard" and self.layer_settings(0).decoder_activation == "sigmoid":
            raise ValueError(
                "data.scale=standard with layers.0.decoder_activation=sigmoid: standardised inputs leave [0, 1], "
                "which a sigmoid decoder cannot reconstruct; use decoder_activation: linear or scale: unit"
            )
        return self

    def layer_settings(self, i: int) -> ResolvedLayer:
        """Layer ``i`` (0-based) with every setting resolved against ``defaults`` and ``trainer``."""
        layer = self.layers[i]
        values = {key: value for key, value in layer.model_dump().items() if key not in ("hidden", "trainer")}
        resolved = {key: self.defaults.model_dump()[key] if value is None else value for key, value in values.items()}
        if resolved["decoder_activation"] == "auto":
            resolved["decoder_activation"] = auto_decoder(i, self.data.scale, resolved["code_scaling"],
                                                          self._below_activation(i))
        trainer = self.trainer.model_dump()
        if layer.trainer is not None:
            trainer |= {key: value for key, value in layer.trainer.model_dump().items() if value is not None}
        return ResolvedLayer(index=i, hidden=layer.hidden, trainer=TrainerSettings(**trainer), **resolved)

    def _below_activation(self, i: int) -> str:
        """The encoder activation of the layer under layer ``i`` (none under layer 1)."""
        return self.layer_settings(i - 1).encoder_activation if i else "none"

    def resolved_layers(self) -> list[ResolvedLayer]:
        """Every layer, resolved, bottom first."""
        return [self.layer_settings(i) for i in range(len(self.layers))]

    @property
    def model_name(self) -> str:
        """Registered model name: register.model, else the config name followed by -encoder."""
        return self.register.model or f"{self.name}-encoder"

    @classmethod
    def from_dict(cls, data: dict[str, Any], overrides: Sequence[str] = (), *, source: str = "config") -> PipelineConfig:
        """Validate ``data`` after applying ``overrides``; any problem is one InputError naming the field."""
        data = apply_overrides(data, overrides)
        check_size(data, source)
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise InputError(f"{source}: {_describe(error.errors())}") from None

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> PipelineConfig:
        """Read a YAML config file, apply ``key=value`` overrides, validate."""
        path = Path(path)
        check_no_loop(path, "config file")
        if not path.is_file():
            shipped = ", ".join(p.name for p in sorted(CONFIG_DIR.glob("*.yaml")))
            raise InputError(f"config file {path}: not found; give an existing YAML file (examples: {shipped} in {CONFIG_DIR})")
        data = load_yaml(read_config_text(path), f"config file {path}")
        if not isinstance(data, dict):
            raise InputError(f"config file {path}: expected a mapping of sections (name, data, layers, ...), "
                             f"got {type(data).__name__}; see {CONFIG_DIR / 'digits.yaml'}")
        return cls.from_dict(data, overrides, source=str(path))

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """JSON schema of the config file."""
        return cls.model_json_schema()

    def to_yaml(self) -> str:
        """The config as YAML (layers show only what they override); from_yaml reads it back."""
        data = self.model_dump(mode="json")
        data["layers"] = [layer.model_dump(mode="json", exclude_none=True) for layer in self.layers]
        return yaml.safe_dump(data, sort_keys=False)

    def flat_params(self) -> dict[str, str | int | float | bool]:
        """Dotted parameters for MLflow; ``layers.N.*`` are the resolved values, null becomes "null"."""
        data = self.model_dump(mode="json", exclude={"layers"})
        data["layers"] = [
            layer.model_dump(mode="json", exclude={"index", "trainer"})
            | ({"trainer": own.trainer.model_dump(mode="json", exclude_none=True)} if own.trainer else {})
            for layer, own in zip(self.resolved_layers(), self.layers, strict=True)
        ]
        out: dict[str, str | int | float | bool] = {}
        _flatten(data, "", out)
        return out


_shadowing.__exit__(None, None, None)


def _check_layer(config: PipelineConfig, layer: ResolvedLayer) -> None:
    """Rules that combine several settings of one resolved layer; messages name ``layers.N.<field>``."""
    where, own = f"layers.{layer.index}", config.layers[layer.index]

    def origin(key: str) -> str:
        return "" if getattr(own, key) is not None else " (inherited from defaults)"

    try:  # the layer's own rules live in SAEConfig; only the shapes are not known yet
        SAEConfig(d_in=1, d_hidden=layer.hidden, **layer.layer_fields())
    except ValueError as error:
        key = re.match(r"SAEConfig\.(\w+)", str(error))
        name = key.group(1) if key else "settings"
        raise ValueError(f"{where}.{str(error).removeprefix('SAEConfig.')}{origin(name) if name in SAESettings.model_fields else ''}") from None
    if layer.index and layer.decoder_activation == "sigmoid" and not inputs_in_unit_range(
            layer.index, config.data.scale, layer.code_scaling, config._below_activation(layer.index)):
        below = config.layer_settings(layer.index - 1).encoder_activation
        raise ValueError(
            f"{where}.decoder_activation=sigmoid{origin('decoder_activation')}: it reconstructs layer "
            f"{layer.index - 1}'s {below} codes after code_scaling={layer.code_scaling}{origin('code_scaling')}, "
            f"which are not confined to [0, 1]; set {where}.decoder_activation: linear (or auto), or "
            f"{where}.code_scaling: unit"
        )


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}{key}.", out)
    elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
        for i, item in enumerate(value):
            _flatten(item, f"{prefix}{i}.", out)
    else:
        out[prefix[:-1]] = "null" if value is None else json.dumps(value) if isinstance(value, list) else value


def _describe(errors: list[Any]) -> str:
    """Pydantic errors as ``dotted.path: reason (got value)``, alternatives of one union joined by "or"."""
    reasons: dict[str, list[str]] = {}
    for error in errors:
        parts = [p for p in error["loc"] if isinstance(p, int) or (p.isidentifier() and p not in _LOC_NOISE)]
        path = ".".join(map(str, parts))
        if error["type"] == "extra_forbidden":
            reason = "unknown key; remove it or check the spelling (see `sae-pipeline config schema`)"
        elif error["type"] == "missing":
            reason = "required field is missing; add it"
        else:
            reason = error["msg"].removeprefix("Value error, ") + (f" (got {quoted(error['input'])})" if path else "")
        reasons.setdefault(path, []).append(reason)
    return "; ".join(f"{path}: " * bool(path) + " or ".join(r) for path, r in reasons.items())


def default_config_path(name: str = "digits") -> Path:
    """The shipped example config ``pipeline/configs/<name>.yaml``."""
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        shipped = ", ".join(p.stem for p in sorted(CONFIG_DIR.glob("*.yaml")))
        raise InputError(f"no shipped config named {name!r}; choose one of: {shipped}")
    return path


def load_default_config(name: str = "digits", overrides: Sequence[str] = ()) -> PipelineConfig:
    """The shipped example config ``name`` with overrides applied."""
    return PipelineConfig.from_yaml(default_config_path(name), overrides)
