"""The label-efficiency curve without servers: one pretraining, every budget's draws, the anchors beside them."""

import json

import numpy as np
import pytest

from pipeline.config import PipelineConfig
from pipeline.evaluation import anchors as anchors_module
from pipeline.evaluation import layer_probes
from pipeline.run import curve as curve_module
from pipeline.run import greedy
from pipeline.run.curve import FINETUNED, METHODS, PROBE, CurveHooks, label_curve
from pipeline.tracking.curve_plot import label_efficiency_plot


def small(**finetune) -> PipelineConfig:
    return PipelineConfig.from_dict({
        "name": "curve", "seed": 0, "data": {"source": "digits"}, "trainer": {"accelerator": "cpu"},
        "defaults": {"epochs": 4, "lr": 0.01}, "layers": [{"hidden": 24}, {"hidden": 16}],
        "finetune": {"epochs": 2, "softmax_iterations": 50, "semi": {"steps": 40, "eval_every": 20}, **finetune},
    })


class Recorder(CurveHooks):
    def __init__(self):
        self.events = []

    def on_curve_start(self, config, data, budgets, repeats):
        self.events.append(("start", tuple(budgets), repeats))

    def on_budget_end(self, result):
        self.events.append(("budget", result.name))

    def on_curve_end(self, result):
        self.events.append(("end",))


@pytest.fixture(scope="module")
def curve():
    trained, probed, anchored = [], [], []
    real_train, real_fit, real_anchor = greedy.train_autoencoder, layer_probes.fit_probe, anchors_module.anchor_accuracies
    mp = pytest.MonkeyPatch()
    mp.setattr(greedy, "train_autoencoder", lambda X, *a, **k: trained.append(X.shape[0]) or real_train(X, *a, **k))
    mp.setattr(layer_probes, "fit_probe", lambda *a, **k: probed.append((a[1], a[3])) or real_fit(*a, **k))
    real_cv = layer_probes.fit_probe_cv  # few labels: cross-validation over them, no validation split
    mp.setattr(layer_probes, "fit_probe_cv", lambda *a, **k: probed.append((a[1], a[1][:0])) or real_cv(*a, **k))
    mp.setattr(curve_module, "anchor_accuracies",
               lambda f, rows, y, seed: anchored.append(rows) or real_anchor(f, rows, y, seed))
    hooks = Recorder()
    try:
        result = label_curve(small(), [3, 10, None], repeats=2, hooks=hooks)
    finally:
        mp.undo()
    return result, trained, probed, anchored, hooks


def test_one_pretraining_serves_every_budget_and_draw(curve):
    result, trained, _, _, hooks = curve
    assert len(trained) == 2  # each layer trained once, for 3 budgets and 5 draws
    assert [b.name for b in result.budgets] == ["3", "10", "all"]
    assert [[d.seed for d in b.draws] for b in result.budgets] == [[0, 1], [0, 1], [0]]
    assert [d.n_labeled for b in result.budgets for d in b.draws] == [30, 30, 100, 100, 1437]
    assert hooks.events == [("start", (3, 10, None), 2), ("budget", "3"), ("budget", "10"), ("budget", "all"), ("end",)]


def test_every_method_is_scored_on_every_draw(curve):
    result = curve[0]
    assert result.methods() == list(METHODS)
    for b in result.budgets:
        for d in b.draws:
            assert set(d.accuracies) == set(METHODS) and all(0.1 < v <= 1.0 for v in d.accuracies.values())
    everything = result.budgets[-1].draws[0].accuracies
    assert everything[PROBE] > 0.8 and everything[FINETUNED] > 0.8  # digits, all labels: far above chance


def test_the_probe_and_anchors_see_only_the_drawn_labels(curve):
    _, _, probed, anchored, _ = curve
    budget_probes = probed[:4]  # the first four draws: 3 and 10 a class, twice each
    for (y_train, y_val), per_class in zip(budget_probes, (3, 3, 10, 10), strict=True):
        assert y_train.size + y_val.size == 10 * per_class and (y_train >= 0).all() and (y_val >= 0).all()
    assert [rows.size for rows in anchored] == [30, 30, 100, 100, 1437]


def test_table_json_and_plot(curve, tmp_path):
    result = curve[0]
    lines = result.table().splitlines()
    assert lines[0].startswith("pretrained on 1,293 rows, 1,293 labeled; validation 144, test 360 rows; 2 draws a budget")
    assert lines[2].split() == ["labels", "a", "class", "3", "10", "all"]
    assert lines[3].split() == ["labeled", "rows", "30", "100", "1,437"]
    probe_row = next(line for line in lines if line.startswith(PROBE))
    assert probe_row.count("±") == 2  # two draws for 3 and 10 a class; one for all
    summary = json.loads(json.dumps(result.to_json()))["accuracy"]
    assert set(summary) == set(METHODS) and set(summary[PROBE]) == {"3", "10", "all"}
    values = summary[PROBE]["3"]["values"]
    assert summary[PROBE]["3"]["mean"] == pytest.approx(np.mean(values)) and len(values) == 2
    png = label_efficiency_plot(result, tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_without_fine_tuning_the_curve_has_no_fine_tuned_line():
    result = label_curve(small(epochs=0), [5], repeats=1)
    assert FINETUNED not in result.methods() and PROBE in result.methods()
