"""The label-efficiency plot: test accuracy against labels per class (log x axis), one line per method, the
spread over the draws as error bars. ``all`` is drawn at its mean labeled rows per class."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

if TYPE_CHECKING:
    from pipeline.run.curve import CurveResult

DPI = 100
STYLES = ("o-", "s-", "^--", "v--", "D--", "x--")  # the stack's two lines solid, the anchors dashed


def per_class_x(result: CurveResult) -> list[float]:
    """Each budget's position on the x axis: its labels per class (``all``: mean labeled rows per class)."""
    n_classes = max(len(set(map(str, result.data.labels("test") if result.data.y_test is not None else []))), 1)
    return [float(b.budget) if b.budget is not None else sum(d.n_labeled for d in b.draws) / len(b.draws) / n_classes
            for b in result.budgets]


def label_efficiency_plot(result: CurveResult, out: Path) -> Path:
    """Write the plot to ``out`` (PNG) and return it."""
    xs = per_class_x(result)
    fig = Figure(figsize=(7.5, 4.8), dpi=DPI)
    ax = fig.add_axes((0.1, 0.17, 0.56, 0.74))
    for style, method in zip(STYLES * 2, result.methods(), strict=False):
        points = [(x, b.mean_std(method)) for x, b in zip(xs, result.budgets, strict=True)]
        points = [(x, s) for x, s in points if s is not None]
        ax.errorbar([x for x, _ in points], [s[0] for _, s in points], yerr=[s[1] or 0.0 for _, s in points],
                    fmt=style, capsize=3, markersize=5, label=method)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(xs))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([b.name if b.budget is not None else f"all\n(~{x:.0f})" for x, b in
                        zip(xs, result.budgets, strict=True)])
    ax.set_xlabel("labeled rows per class (log scale)")
    ax.set_ylabel("test accuracy")
    ax.grid(True, alpha=0.3)
    draws = f"mean ± sd over {result.repeats} draws" if result.repeats > 1 else "one draw"
    ax.set_title(f"{result.config.name}: label efficiency ({draws})", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    return out
