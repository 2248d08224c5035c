"""Dotted ``key=value`` overrides (``--set``) applied to a config mapping before validation."""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

import yaml

from pipeline.config.reading import UniqueKeyLoader
from pipeline.errors import InputError


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with dotted ``key=value`` overrides applied (values parsed as YAML).

    ``layers.N.hidden=...`` with N equal to the number of layers appends a layer.
    """
    data = copy.deepcopy(data)
    for text in overrides:
        key, sep, raw = text.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise InputError(f"override {text!r}: expected KEY=VALUE with a dotted key, e.g. layers.0.hidden=100")
        try:
            value = yaml.load(raw, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError:
            value = raw  # stays a string; validation names the field if that is wrong
        except RecursionError:
            raise InputError(f"override {key}=…: nested too deeply; flatten the value") from None
        value = _number_or_self(value)
        node: Any = data
        for depth, part in enumerate(parts):
            parent, rest = ".".join(parts[:depth]), parts[depth + 1 :]
            slot: str | int = part
            if isinstance(node, list):
                if not part.isdigit():
                    raise InputError(f"override {text!r}: {parent} is a list; use an index, e.g. {parent}.0")
                slot = int(part)
                if slot == len(node) and parent == "layers" and rest == ["hidden"]:
                    node.append({})
                elif slot >= len(node):
                    raise InputError(
                        f"override {text!r}: index {slot} is out of range: {parent} has {len(node)} entries"
                        + (f"; append a layer with layers.{len(node)}.hidden=N" if parent == "layers" else "")
                    )
            elif not isinstance(node, dict):
                raise InputError(f"override {text!r}: {parent} is a value, not a section")
            if not rest:
                node[slot] = value
            else:
                if (node.get(slot) if isinstance(node, dict) else node[slot]) is None:
                    node[slot] = [] if rest[0].isdigit() else {}
                node = node[slot]
    return data


def _number_or_self(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string; users mean the number."""
    if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        return float(value)
    return value


_EXPONENT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")
