"""Label budgets for the label-efficiency curve: parse ``--labels 10,40,100,all``, draw L labeled rows a class.

The draw follows ../shared/data/README.md: from the development rows (the labeled rows outside the test split,
in the order the test split left them), ``numpy.random.default_rng(seed)`` draws, class by class in class
order, ``rng.choice(rows of class c, L, replace=False)``. A budget's data is the loaded data with only the
drawn rows keeping their labels (``LoadedData.keep_labels``): the same features in the same splits, so the
layers pretrained once serve every budget (the layer cache key covers features only). The test split is never
drawn from and keeps every label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.data.labels import labeled_mask
from pipeline.errors import InputError

if TYPE_CHECKING:
    from pipeline.data.loaded import LoadedData

Budget = int | None  # labeled rows per class; None = every labeled row ("all")


def parse_budgets(text: str) -> list[Budget]:
    """``"10,40,100,all"`` -> [10, 40, 100, None]: distinct, ascending, ``all`` last; InputError otherwise."""
    budgets: set[int] = set()
    every = False
    for part in (p.strip() for p in text.split(",")):
        if part.lower() == "all":
            every = True
        elif part.isdigit() and int(part) >= 1:
            budgets.add(int(part))
        else:
            raise InputError(f"--labels {text!r}: {part!r} is not a number of labels per class; give positive "
                             "counts and/or all, comma-separated, e.g. --labels 10,40,100,all")
    return [*sorted(budgets), *([None] if every else [])]


def budget_name(budget: Budget) -> str:
    """``10`` or ``all``: how tables, task runs and child runs name a budget."""
    return "all" if budget is None else str(budget)


@dataclass(frozen=True)
class Development:
    """The labeled non-test rows in the development order: where each one is, and its label."""

    in_val: np.ndarray  # (n,) bool: a validation row (else a training row)
    row: np.ndarray  # (n,) int64 position within its split
    y: np.ndarray  # (n,) labels

    def class_counts(self) -> dict[object, int]:
        """Labeled development rows per class, classes in order."""
        classes, counts = np.unique(self.y, return_counts=True)
        return dict(zip(classes.tolist(), counts.tolist(), strict=True))


def development(data: LoadedData) -> Development:
    """The labeled training and validation rows of ``data`` in the development order (``dev_positions``)."""
    if data.y_train is None or data.y_val is None or data.dev_positions is None:
        raise InputError(f"{data.source}: the label-efficiency curve needs labeled data; set data.labels (and "
                         "label some rows)")
    n_train = data.dev_positions.size - data.X_val.shape[0]  # the source's labeled training rows come first
    in_val = np.r_[np.zeros(n_train, bool), np.ones(data.X_val.shape[0], bool)]
    row = np.r_[np.arange(n_train), np.arange(data.X_val.shape[0])]
    y = np.concatenate([np.asarray(data.y_train)[:n_train], np.asarray(data.y_val)])
    order = np.argsort(data.dev_positions, kind="stable")
    keep = labeled_mask(y[order])  # a budget view of a view: only rows still labeled
    return Development(in_val[order][keep], row[order][keep], y[order][keep])


def draw_per_class(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Positions into ``y`` of ``per_class`` rows of each class: one ``rng.choice`` per class in class order."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in np.unique(y)])


def check_budgets(data: LoadedData, budgets: list[Budget]) -> None:
    """InputError when a budget asks for more rows of some class than the development rows hold."""
    counts = development(data).class_counts()
    fewest = min(counts, key=counts.__getitem__)
    too_many = [b for b in budgets if b is not None and b > counts[fewest]]
    if too_many:
        raise InputError(f"--labels {too_many[0]}: class {fewest!r} has only {counts[fewest]} labeled rows outside "
                         f"the test split; ask for at most {counts[fewest]} a class, or all")


@dataclass(frozen=True)
class BudgetDraw:
    """One draw of a budget: the data in which only the drawn rows keep their labels, and those rows in draw
    order (class by class, as drawn) as positions among the training rows followed by the validation rows."""

    data: LoadedData
    rows: np.ndarray

    def labels(self) -> np.ndarray:
        """The drawn rows' labels, in draw order."""
        return np.concatenate([np.asarray(self.data.y_train), np.asarray(self.data.y_val)])[self.rows]


def draw_budget(data: LoadedData, budget: Budget, seed: int) -> BudgetDraw:
    """``budget`` rows a class drawn with ``seed`` (every labeled development row, in order, for None)."""
    dev = development(data)
    drawn = np.arange(dev.y.size) if budget is None else draw_per_class(dev.y, budget, seed)
    rows = np.where(dev.in_val[drawn], data.X_train.shape[0] + dev.row[drawn], dev.row[drawn])
    if budget is None:
        return BudgetDraw(data, rows)
    train, val = dev.row[drawn][~dev.in_val[drawn]], dev.row[drawn][dev.in_val[drawn]]
    return BudgetDraw(data.keep_labels(np.sort(train), np.sort(val)), rows)
