"""Degenerate results are named (and so never take the registry's alias): diverged, dead, one class."""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.run.degenerate import degenerate


def result(losses=(2.0, 1.0), test=None, y=(0, 1, 0, 1), headline=0.9):
    test = {"loss": losses[-1], "dead_fraction": 0.2, "weight_decay": 0.1, "reconstruction": 3.0} | (test or {})
    layer = SimpleNamespace(index=0, history=[{"loss": x} for x in losses], test_metrics=test)
    return SimpleNamespace(layers=[layer], data=SimpleNamespace(y_train=None if y is None else np.array(y)),
                           headline=lambda: ("encoder.test_accuracy", headline, True))


def test_a_healthy_result_is_not_degenerate():
    assert degenerate(result()) is None
    assert degenerate(result(y=None)) is None  # unlabelled data is fine


@pytest.mark.parametrize(("kwargs", "why"), [
    ({"losses": (2.0, math.nan)}, "layer 1's loss is not finite"),
    ({"losses": (2.0, math.inf)}, "layer 1's loss is not finite"),
    ({"losses": (1.0, 50.0)}, "rose from 1 to 50 (diverged)"),
    ({"test": {"weight_decay": 8.6e11, "reconstruction": 4.7}}, "weights exploded"),
    ({"test": {"dead_fraction": 1.0}}, "every unit of layer 1 is dead"),
    ({"y": (3, 3, 3, 3)}, "a single class (3)"),
    ({"headline": math.nan}, "the headline encoder.test_accuracy is nan"),
])
def test_each_degenerate_result_says_why(kwargs, why):
    assert why in degenerate(result(**kwargs))
