"""PNG figures of a trained stack: learned filters, loss curves and mean-activation histograms.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas it defaults to, so no
display is needed and pyplot's global state (and the user's chosen backend) is never touched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, ScalarFormatter

DPI = 100
MIN_GRID_PIXELS = 400  # a filter grid narrower than this is enlarged by a whole factor
TITLE_PIXELS = 22
# Fixed margins (inches) around each row of subplots: matplotlib's constrained layout measured every tick
# label to place them, and took half of each figure's time (0.12 s -> 0.07 s a figure).
MARGINS = {"left": 0.75, "right": 0.15, "bottom": 0.5, "top": 0.3, "between": 0.75}


def filter_grid(weights: np.ndarray, out: Path, *, image_shape: tuple[int, int] | None = None) -> Path | None:
    """Each unit's weights (d_hidden, d_in) as a grey tile in a near-square grid; None if not an image."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2:
        raise ValueError(f"weights have shape {weights.shape}: need a 2-D (d_hidden, d_in) matrix")
    d_hidden, d_in = weights.shape
    if image_shape is None:
        side = math.isqrt(d_in)
        if side * side != d_in:
            return None  # not an image: nothing meaningful to draw
        image_shape = (side, side)
    height, width = image_shape
    if height * width != d_in:
        raise ValueError(
            f"image_shape={image_shape} has {height * width} pixels but the weights have d_in={d_in}"
        )
    cols = math.ceil(math.sqrt(d_hidden))
    rows = math.ceil(d_hidden / cols)
    # Tiles separated by a one-pixel border at -1 (black), as in the classic display_network.
    mosaic = np.full((rows * (height + 1) + 1, cols * (width + 1) + 1), -1.0)
    scale = np.abs(weights).max(axis=1, keepdims=True)
    tiles = weights / np.where(scale > 0, scale, 1.0)
    for j, tile in enumerate(tiles):
        r, c = divmod(j, cols)
        top, left = 1 + r * (height + 1), 1 + c * (width + 1)
        mosaic[top : top + height, left : left + width] = tile.reshape(height, width)
    # Drawn pixel for pixel (no axes, no resampling, no layout pass: half the time of imshow in an axes),
    # enlarged by a whole factor to at least MIN_GRID_PIXELS wide, under a one-line title.
    zoom = max(1, -(-MIN_GRID_PIXELS // mosaic.shape[1]))
    image = np.kron(mosaic, np.ones((zoom, zoom)))
    height_px, width_px = image.shape
    fig = Figure(figsize=(width_px / DPI, (height_px + TITLE_PIXELS) / DPI), dpi=DPI)
    fig.figimage(image, cmap="gray", vmin=-1.0, vmax=1.0, origin="upper")
    fig.text(0.5, 1 - TITLE_PIXELS / 2 / (height_px + TITLE_PIXELS), f"{d_hidden} filters ({height}x{width})",
             ha="center", va="center", fontsize=9)
    return _save(fig, out)


def loss_curves(
    histories: Sequence[list[dict[str, float]]], out: Path, *, labels: Sequence[str] | None = None
) -> Path:
    """Training loss (and val_loss when recorded) against epoch, one subplot per layer."""
    if not histories:
        raise ValueError("loss_curves needs at least one layer history")
    labels = _labels(labels, len(histories))
    fig = _row_figure(len(histories))
    axes = fig.subplots(1, len(histories), squeeze=False)[0]
    for ax, history, label in zip(axes, histories, labels, strict=True):
        epochs = np.arange(1, len(history) + 1)
        plotted: list[float] = []
        for key, style in (("loss", "-"), ("val_loss", "--")):
            values = [row.get(key) for row in history]
            if any(v is not None for v in values):
                ys = np.array([np.nan if v is None else float(v) for v in values])
                ax.plot(epochs, ys, style, marker="." if len(history) < 30 else None, label=key)
                plotted.extend(ys[np.isfinite(ys)].tolist())
        if plotted and min(plotted) > 0:
            ax.set_yscale("log")
        ax.set_title(label, y=1.0, pad=6)  # placed, not measured: auto-placing took half the figure's time
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        if plotted:
            ax.legend(fontsize=8)
    return _save(fig, out)


def loss_chart(history: Sequence[dict[str, float]], out: Path, *, dpi: int = DPI, title: str = "") -> Path:
    """Training and validation loss in one small chart (3.2 x 2.5 inches; 256 pixels wide at 80 dpi) against
    the epoch counted from 1, log-scaled when positive: the first epoch's mean over the untrained start stays
    on the same axes as the rest."""
    fig = Figure(figsize=(3.2, 2.5), dpi=dpi)
    ax = fig.add_subplot()
    epochs = np.arange(1, len(history) + 1)
    plotted: list[float] = []
    for key, label, style in (("loss", "training", "-"), ("val_loss", "validation", "--")):
        values = np.array([float(row.get(key, np.nan)) for row in history])
        if np.isfinite(values).any():
            ax.plot(epochs, values, style, label=label)
            plotted += values[np.isfinite(values)].tolist()
    if plotted and min(plotted) > 0:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # labelled ticks even within one decade
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
    ax.set_xlabel("epoch", fontsize=8)
    ax.set_title(f"{title}: loss" if title else "loss", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.2, right=0.96, bottom=0.18, top=0.88)
    return _save(fig, out)


def rho_hat_histogram(
    rho_hats: Sequence[np.ndarray], targets: Sequence[float | None], out: Path, *, labels: Sequence[str] | None = None
) -> Path:
    """Histogram of each layer's mean activations (rho_hat) with a vertical line at its target, as a PNG."""
    return _save(rho_hat_figure(rho_hats, targets, labels=labels), out)


def rho_hat_figure(
    rho_hats: Sequence[np.ndarray], targets: Sequence[float | None], *, labels: Sequence[str] | None = None
) -> Figure:
    """The figure ``rho_hat_histogram`` writes: one histogram per layer."""
    if not rho_hats:
        raise ValueError("rho_hat_histogram needs at least one layer")
    if len(targets) != len(rho_hats):
        raise ValueError(
            f"got {len(rho_hats)} rho_hat arrays but {len(targets)} targets: pass one target per layer"
        )
    labels = _labels(labels, len(rho_hats))
    fig = _row_figure(len(rho_hats))
    axes = fig.subplots(1, len(rho_hats), squeeze=False)[0]
    for ax, rho_hat, target, label in zip(axes, rho_hats, targets, labels, strict=True):
        values = np.asarray(rho_hat, dtype=np.float64).ravel()
        ax.hist(values, bins=min(50, max(5, values.size // 4)), color="tab:blue", alpha=0.8)
        if target is not None:
            ax.axvline(target, color="tab:red", linestyle="--", label=f"target {target:g}")
            ax.legend(fontsize=8)
        # Few ticks, plain values: a narrow spread (every unit within 1e-4 of its target) otherwise gets six
        # offset-relative labels ("-0.00006") that overlap and hide where the values are.
        ax.xaxis.set_major_locator(MaxNLocator(nbins=3, min_n_ticks=2))
        ax.xaxis.set_major_formatter(ScalarFormatter(useOffset=False))
        ax.set_title(f"{label} ({values.size} units)", y=1.0, pad=6)
        ax.set_xlabel("mean activation (rho_hat)")
        ax.set_ylabel("units")
    return fig


def _row_figure(n: int, width: float = 4.0, height: float = 3.2) -> Figure:
    """A figure for one row of ``n`` subplots, each ``width`` x ``height`` inches, with MARGINS around them."""
    fig = Figure(figsize=(width * n, height), dpi=DPI)
    axes_width = (width * n - MARGINS["left"] - MARGINS["right"] - MARGINS["between"] * (n - 1)) / n
    fig.subplots_adjust(left=MARGINS["left"] / (width * n), right=1 - MARGINS["right"] / (width * n),
                        bottom=MARGINS["bottom"] / height, top=1 - MARGINS["top"] / height,
                        wspace=MARGINS["between"] / axes_width)
    return fig


def _labels(labels: Sequence[str] | None, n: int) -> list[str]:
    """``labels`` checked against ``n`` layers, or layer 1..n."""
    if labels is None:
        return [f"layer {i}" for i in range(1, n + 1)]
    if len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for {n} layers: pass one label per layer")
    return list(labels)


def _save(fig: Figure, out: Path) -> Path:
    """Write ``fig`` as a PNG at ``out`` (parent folders created) and return the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


__all__ = ["filter_grid", "loss_chart", "loss_curves", "rho_hat_figure", "rho_hat_histogram"]
