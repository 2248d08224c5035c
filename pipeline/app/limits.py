"""Bounds a run is held to before it reads data or trains: the memory its data and layers will take against what
the machine has (estimated from declared shapes), and the length of any line the CLI prints about an error.

The memory estimate is deliberately rough (it counts the big arrays, not Python's overhead): it exists to
refuse, with the numbers, a run that cannot fit (a 200,000-unit layer on 784 inputs, an .npz of a few MB
whose header declares gigabytes) before it grows for minutes and is killed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.errors import InputError

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig, ResolvedLayer
    from pipeline.data.shapes import Declared

MAX_LINE_CHARS = 2000  # an error line longer than this is cut (a value echoed whole could be gigabytes)
FLOAT32 = 4
OPTIMIZER_COPIES = {"adam": 4, "sgd": 3, "lbfgs": 2 + 2 * 100}  # weights, gradients and state (L-BFGS: history)
PROBE_COPIES = 3  # a probe holds its training codes as float32 twice (as read, standardised) plus validation rows
GIB = 2**30


def cap_line(text: str, limit: int = MAX_LINE_CHARS) -> str:
    """``text`` on one line and at most ``limit`` characters (the cut says how much was left out)."""
    line = " ".join(text[: 2 * limit].split())  # never the whole of a huge text
    if len(line) <= limit and len(text) <= 2 * limit:
        return line
    return f"{line[: limit - 40]}… ({len(text) - limit + 40:,} more characters)"


def available_bytes() -> int:
    """Memory the machine can give this process now (psutil's ``available``: free plus reclaimable)."""
    import psutil

    return int(psutil.virtual_memory().available)


@dataclass(frozen=True)
class Need:
    """One part of a run's memory estimate."""

    what: str
    nbytes: int


def data_needs(declared: Declared, source: str, copies: int = 3) -> list[Need]:
    """Reading ``source`` and its float32 copies (a source: the float32 array, the splits, the scaled splits; an
    unlabeled file: its float32 rows and their place in the stacked training rows)."""
    if declared.mapped:
        return [Need(f"{source} (memory-mapped)", 0)]
    nbytes = declared.read_bytes + copies * declared.rows * declared.columns * FLOAT32
    return [Need(f"{source} ({declared.rows:,} x {declared.columns:,})", nbytes)]


def layer_needs(layer: ResolvedLayer, d_in: int, rows: int, codes_on_disk_above: int,
                probe_rows: int | None = None) -> Need:
    """Training one layer (weights, gradients, optimizer state, a batch's activations), its codes for ``rows``
    training rows, its probe on ``probe_rows`` labeled rows (default: all of them)."""
    halves = 1 if layer.tied else 2
    weights = halves * d_in * layer.hidden + d_in + layer.hidden
    batch = rows if layer.optimizer == "lbfgs" else min(layer.batch_size, rows)
    train = OPTIMIZER_COPIES[layer.optimizer] * weights + 4 * batch * (d_in + layer.hidden)
    codes = rows * layer.hidden
    held = codes if codes * FLOAT32 <= codes_on_disk_above else 0
    probe = PROBE_COPIES * (rows if probe_rows is None else probe_rows) * layer.hidden
    return Need(f"layers.{layer.index} ({d_in:,} -> {layer.hidden:,})", (train + held + probe) * FLOAT32)


def check_memory(config: PipelineConfig, available: int | None = None) -> None:
    """InputError when the data (data.source, data.test_source, every data.unlabeled_source file) and the largest
    layer need more memory than the machine has available."""
    from pipeline.data.paths import unlabeled_sources
    from pipeline.data.shapes import LARGE_FILE_BYTES, MEMMAP_BYTES, declared

    data = config.data
    shape = declared(data.source, data.features, data.labels, mapped_above=LARGE_FILE_BYTES)
    if shape is None:
        return  # the reader says what is wrong with the file
    labeled = rows = _capped(shape.rows, data.max_samples)
    needs = data_needs(shape, data.source)
    # (file, float32 copies held, whether its rows train the layers): the test file is split and scaled like the
    # source; an unlabeled file's rows are read, then stacked under the training rows.
    files = [(data.test_source, 3, False)] if data.test_source is not None else []
    files += [(source, 2, True) for _, source in unlabeled_sources(data)]
    for source, copies, trains in files:
        extra = declared(source, data.features if isinstance(data.features, str) else None, data.labels,
                         mapped_above=LARGE_FILE_BYTES)
        if extra is not None:  # else the reader says what is wrong with it
            needs += data_needs(extra, source, copies)
            rows += _capped(extra.rows, data.max_samples) if trains else 0
    d_in = shape.columns
    layers = []
    for layer in config.resolved_layers():
        layers.append(layer_needs(layer, d_in, rows, MEMMAP_BYTES, probe_rows=labeled))
        d_in = layer.hidden
    largest = max(layers, key=lambda need: need.nbytes)
    total = sum(need.nbytes for need in needs) + largest.nbytes
    have = available_bytes() if available is None else available
    if total > have:
        parts = ", ".join(f"{need.what} {_gib(need.nbytes)}" for need in [*needs, largest])
        raise InputError(f"this run needs about {_gib(total)} of memory ({parts}) but the machine has "
                         f"{_gib(have)} available; lower data.max_samples or the layers' hidden sizes, or use a "
                         "larger machine")


def _capped(rows: int, max_samples: int | None) -> int:
    return min(rows, max_samples or rows)


def _gib(nbytes: int) -> str:
    return f"{nbytes / GIB:,.1f} GiB"
