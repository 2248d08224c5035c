"""`sae-pipeline curve`: exit 0, the table, an MLflow parent with a child per budget and the plot, a Prefect task
per budget, the layer cache shared with `run`, and bad input answered with one line before any work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

from flows.cli import main as cli_main
from tests import ROOT


def config(tmp, name="curve-cli"):
    return {"name": name, "seed": 0, "cache_dir": str(tmp / "cache"), "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
            "data": {"source": "digits"}, "defaults": {"epochs": 3, "lr": 0.01}, "trainer": {"accelerator": "cpu"},
            "layers": [{"hidden": 24}, {"hidden": 16}], "finetune": {"epochs": 2, "softmax_iterations": 50,
                                                                   "semi": {"steps": 40, "eval_every": 20}}}


@pytest.fixture(scope="module")
def curve(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("curve")
    (tmp / "c.yaml").write_text(yaml.safe_dump(config(tmp)))
    return tmp


def test_curve_prints_the_table_and_records_a_parent_with_a_child_per_budget(curve, capsys):
    capsys.readouterr()
    assert cli_main(["curve", str(curve / "c.yaml"), "--labels", "all,3", "--repeats", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("pretrained on 1,293 rows, 1,293 labeled; validation 144, test 360 rows; 2 draws a budget")
    assert out[2].split() == ["labels", "a", "class", "3", "all"]
    methods = [line for line in out[4:10]]
    assert [m.split("  ")[0] for m in methods] == ["SAE probe (top layer)", "SAE fine-tuned",
                                                   "logistic regression (raw)", "SVC-RBF", "LabelSpreading(knn)",
                                                   "BernoulliRBM + logistic regression"]
    assert out[-1].startswith("Next: ") and "/runs/" in out[-1]

    client = MlflowClient(f"sqlite:///{curve / 'mlflow.db'}")
    (parent,) = [r for r in client.search_runs(client.get_experiment_by_name("curve-cli").experiment_id)
                 if r.data.tags.get("sae.kind") == "curve"]
    assert parent.info.status == "FINISHED" and parent.info.run_name.startswith("curve-curve-cli-")
    assert parent.data.params["curve.labels"] == "3,all" and parent.data.params["data.rows.labeled"] == "1293"
    note = parent.data.tags["mlflow.note.content"]  # the table as fixed-width text: MLflow pads no table cells
    assert "\nSAE probe (top layer)  " in note.split("```")[1] and "Prefect flow run: [curve-curve-cli-" in note
    kids = {r.info.run_name: r for r in client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    assert set(kids) == {"labels-3", "labels-all"}
    three = kids["labels-3"].data.metrics
    assert {"sae_probe.mean", "sae_probe.std", "sae_finetuned.mean", "svc_rbf.mean", "label_spreading.mean",
            "rbm_logistic.mean", "logistic_raw.mean"} <= set(three) and three["labeled_rows"] == 30
    assert len(client.get_metric_history(kids["labels-3"].info.run_id, "sae_probe")) == 2  # one point a draw
    files = {f.path for f in client.list_artifacts(parent.info.run_id)} | {
        f.path for f in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"curve.txt", "curve.md", "curve.json", "config.yaml", "plots/label_efficiency.png"} <= files
    local = client.download_artifacts(parent.info.run_id, "curve.json", str(curve))
    assert json.loads(Path(local).read_text())["labels"] == ["3", "all"]

    with get_client(sync_client=True) as prefect:
        (flow_run,) = prefect.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(any_=[parent.info.run_name])))
        tasks = {t.name for t in prefect.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run.id]}))}
        artifacts = {a.key for a in prefect.read_artifacts() if a.flow_run_id == flow_run.id}
    assert {"load-data", "train-layer-1", "train-layer-2", "fit-anchors", "budget-3", "budget-all"} <= tasks
    assert {"curve-cli-curve", "curve-cli-mlflow-run"} <= artifacts


def test_a_second_curve_and_a_run_reuse_the_curves_layers(curve, capsys):
    capsys.readouterr()
    assert cli_main(["curve", str(curve / "c.yaml"), "--labels", "3", "--repeats", "1", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["labels"] == ["3"] and printed["seeds"] == {"3": [0]} and printed["run_id"]
    assert cli_main(["run", str(curve / "c.yaml"), "--json"]) == 0
    run = json.loads(capsys.readouterr().out)
    client = MlflowClient(f"sqlite:///{curve / 'mlflow.db'}")
    layers = client.search_runs([client.get_run(run["run_id"]).info.experiment_id],
                                f"tags.mlflow.parentRunId = '{run['run_id']}'")
    reused = {r.info.run_name: r.data.tags.get("sae.reused") for r in layers if r.info.run_name.startswith("layer-")}
    assert reused == {"layer-1": "true", "layer-2": "true"}  # the key covers features, not labels
    curve_table = client.download_artifacts(printed["run_id"], "curve.txt", str(curve))
    assert "(layers from the cache)" in Path(curve_table).read_text()


PROBE = """
import sys
from pathlib import Path
from flows.cli import main
code = main(sys.argv[1:])
print(code, sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "prefect", "mlflow", "sklearn"}))
"""


@pytest.mark.parametrize(("args", "message", "light"), [
    (["--labels", "10,x"], "--labels '10,x': 'x' is not a number of labels per class", True),
    (["--repeats", "0"], "--repeats 0: give at least 1 draw a budget", True),
    (["--labels", "500"], "--labels 500: class", False),
    (["--set", "data.source=patches", "--set", "data.max_samples=300"], "the label-efficiency curve needs labeled", False),
])
def test_bad_input_exits_2_with_one_line_before_any_work(args, message, light, tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config(tmp_path)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROBE, "curve", str(tmp_path / "c.yaml"), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    code, heavy = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert code == "2" and done.stderr.strip().count("\n") == 0 and message in done.stderr, done.stderr
    if light:
        assert heavy == "[]"  # answered before torch, Prefect, MLflow or scikit-learn is imported
    else:
        assert "prefect" not in heavy  # after reading the data, before Prefect starts or anything trains
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "cache").exists()
