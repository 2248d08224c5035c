"""The run's config: the schema (schema.py), a layer's fields (layer.py), the search section (search.py), --set
overrides and the generated reference. ``from pipeline.config import PipelineConfig`` reads from here."""

from pipeline.config.finetune import FinetuneConfig, SemiSettings
from pipeline.config.layer import (
    SHAPE_FIELDS,
    LayerConfig,
    LayerSettings,
    Precision,
    ResolvedLayer,
    SAESettings,
    TrainerOverride,
    TrainerSettings,
    attribute_docs,
)
from pipeline.config.overrides import apply_overrides
from pipeline.config.schema import (
    CONFIG_DIR,
    DataConfig,
    PipelineConfig,
    RegisterConfig,
    default_config_path,
    load_default_config,
)
from pipeline.config.search import SearchConfig

__all__ = [
    "CONFIG_DIR", "SHAPE_FIELDS", "DataConfig", "FinetuneConfig", "LayerConfig", "LayerSettings", "PipelineConfig",
    "Precision", "RegisterConfig", "ResolvedLayer", "SAESettings", "SearchConfig", "SemiSettings", "TrainerOverride",
    "TrainerSettings", "apply_overrides", "attribute_docs", "default_config_path", "load_default_config",
]
