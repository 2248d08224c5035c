"""Reading YAML from users, bounded: the file's size, its nesting, the values it expands to (a YAML alias bomb
is a few hundred bytes that expand to billions of values), and duplicate keys (PyYAML keeps the last one
silently). Every problem is one InputError; ``quoted`` keeps any value echoed in a message short."""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import InputError

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB: the shipped configs are under 2 KB; a config that large is a mistake
MAX_VALUES = 100_000  # values a config may expand to (lists of column names included)
MAX_DEPTH = 50  # nesting a config may have (the schema needs 4)


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    first = seen[key].line + 1
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {quoted(key)} (first at line {first}): the last one would "
                        "silently win; keep one", key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, where: str) -> Any:
    """The YAML document in ``text`` (from ``where``, for messages), bounded as the module says."""
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise InputError(f"{where}: nested too deeply for a config; flatten it") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(error, "problem", None) or " ".join(str(error).split())
        raise InputError(f"{where}: invalid YAML{at} ({what}); fix the syntax") from None
    check_size(data, where)
    return data


def read_config_text(path: Path) -> str:
    """The text of config file ``path``: at most MAX_CONFIG_BYTES, UTF-8."""
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise InputError(f"config file {path}: {size:,} bytes, over the {MAX_CONFIG_BYTES:,}-byte limit for a "
                         "config; is it the right file? (lists of data columns belong in the data file)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"config file {path}: not UTF-8 text (byte {error.start}: {error.reason}); save it "
                         "as UTF-8") from None


def check_size(data: Any, where: str) -> None:
    """InputError when ``data`` expands to more than MAX_VALUES values or MAX_DEPTH levels (aliases counted
    each time they are used, as validation would walk them); stops counting at the bound."""
    count, stack = 0, [(data, 0)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise InputError(f"{where}: expands to more than {MAX_VALUES:,} values (YAML aliases repeat what they "
                             "point to); a config this large is a mistake: remove the repeated aliases")
        if depth > MAX_DEPTH:
            raise InputError(f"{where}: nested more than {MAX_DEPTH} levels deep; flatten it")
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for pair in value.items() for item in pair)
        elif isinstance(value, list | tuple):
            stack.extend((item, depth + 1) for item in value)


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlevel = 60, 60, 4, 4, 2
QUOTED_CHARS = 100


def quoted(value: Any) -> str:
    """``repr(value)`` cut to QUOTED_CHARS characters, never built whole (a value can expand to gigabytes)."""
    text = _SHORT.repr(value)
    return text if len(text) <= QUOTED_CHARS else text[: QUOTED_CHARS - 1] + "…"
