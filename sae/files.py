"""A saved stacked encoder's folder: its file names, its format, and what ``config.json`` alone shows is wrong
(not JSON, nested too deeply, another format, a NaN or infinite scaling offset). json and math only: checking a
folder imports no torch."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

FORMAT = "sae-stacked-encoder"
FORMAT_VERSION = 2  # 2 added the code scalings between layers; version 1 files load with identity ones
READABLE_VERSIONS = (1, 2)
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def read_config(directory: Path) -> dict[str, Any]:
    """The checked ``config.json`` of the encoder saved in ``directory``; ValueError naming what is wrong."""
    path = directory / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be an encoder's config") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT \
            or config.get("format_version") not in READABLE_VERSIONS:
        found = (config.get("format"), config.get("format_version")) if isinstance(config, dict) else (None, None)
        raise ValueError(f"{path}: format {found[0]!r} version {found[1]!r}; this code reads {FORMAT!r} versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))}: re-export the encoder with this version")
    _check_offsets(path, config)
    return config


def layer_shapes(config: dict[str, Any]) -> list[tuple[int, int]]:
    """(d_in, d_hidden) of each layer ``config`` declares; KeyError, TypeError or ValueError when it cannot say."""
    return [(int(layer["d_in"]), int(layer["d_hidden"])) for layer in config["layers"]]


def _check_offsets(path: Path, config: dict[str, Any]) -> None:
    """ValueError naming a NaN or infinite scaling offset: it would turn every input into NaN codes."""
    offsets = {"scaling.offset": (config.get("scaling") or {}).get("offset", 0.0)}
    offsets |= {f"code_scalings.{i}.offset": entry.get("offset", 0.0)
                for i, entry in enumerate(config.get("code_scalings") or []) if isinstance(entry, dict)}
    for key, value in offsets.items():
        try:
            finite = math.isfinite(float(value))
        except (TypeError, ValueError):
            continue  # not a number at all: loading names that
        if not finite:
            raise ValueError(f"{path}: {key} is {value}; the encoder is damaged")
