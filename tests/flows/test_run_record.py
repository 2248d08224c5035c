"""Everything a run records stays recorded: the MLflow runs, logged models and registry, and the flow run's
Prefect artifacts of a tiny run (fresh, then with every layer and the fine-tuning cached) hold every item of
run_record.json, and the cached fine-tuning's MLflow run holds the same epochs and numbers as the one it reuses.

Speed-ups must not drop a logged item: this fails, naming it, when one disappears. Items may be added; to take
them into the record, run ``SAE_WRITE_RUN_RECORD=1 pytest tests/flows/test_run_record.py``.
"""

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows import pretrain_flow

RECORD = Path(__file__).with_name("run_record.json")


def tiny(tmp: Path) -> dict:
    """Two small layers on part of digits, two epochs each (the first epoch is not charted), two fine-tuning
    epochs: every kind of record."""
    return {"name": "record", "seed": 1, "cache_dir": str(tmp / "cache"), "tracking_uri": f"sqlite:///{tmp / 'm.db'}",
            "data": {"source": "digits", "max_samples": 600}, "defaults": {"epochs": 2, "early_stopping_patience": None},
            "trainer": {"accelerator": "cpu"}, "layers": [{"hidden": 8}, {"hidden": 6}], "finetune": {"epochs": 2}}


def _files(list_: Any, path: str | None = None) -> list[str]:
    out = []
    for info in list_(path):
        out.extend(_files(list_, info.path) if info.is_dir else [_stable(info.path)])
    return sorted(out)


def _stable(path: str) -> str:
    """A logged image's file name without the time and id MLflow puts in it (``images/loss+step+2+timestamp+...``)."""
    return re.sub(r"\+timestamp\+\d+\+[0-9a-f-]+", "+timestamp+T+ID", path)


ONLY_IN_A_CHECKOUT = {"git_commit", "mlflow.source.git.commit"}  # absent where the code is not a git checkout


def _run(client: MlflowClient, run_id: str) -> dict[str, Any]:
    run = client.get_run(run_id)
    return {"status": run.info.status, "params": sorted(set(run.data.params) - ONLY_IN_A_CHECKOUT),
            "metrics": sorted(run.data.metrics), "tags": sorted(set(run.data.tags) - ONLY_IN_A_CHECKOUT),
            "sae.reused": run.data.tags.get("sae.reused"),
            "artifacts": _files(lambda p: client.list_artifacts(run_id, p)),
            "inputs": sorted(f"{d.dataset.name} ({t.value})" for d in run.inputs.dataset_inputs for t in d.tags),
            "model outputs": len(run.outputs.model_outputs) if run.outputs else 0}


def _models(client: MlflowClient, experiment_id: str, run_id: str) -> dict[str, Any]:
    out = {}
    for model in client.search_logged_models(experiment_ids=[experiment_id]):
        if model.source_run_id == run_id:
            out[model.name] = {"tags": sorted(model.tags), "params": sorted(model.params),
                               "metrics": sorted({m.key for m in model.metrics or []}),
                               "artifacts": _files(lambda p, m=model: client.list_logged_model_artifacts(m.model_id, p))}
    return out


def _registry(client: MlflowClient, name: str, run_id: str) -> dict[str, Any]:
    registered = client.get_registered_model(name)
    versions = [client.get_model_version(name, v.version) for v in client.search_model_versions(f"name='{name}'")
                if v.run_id == run_id]
    return {"model": {"described": bool(registered.description), "tags": sorted(registered.tags),
                      "aliases": sorted(registered.aliases)},
            "versions": {str(v.version): {"aliases": sorted(v.aliases), "tags": sorted(v.tags),
                                     "described": bool(v.description), "source": v.source.split("/")[0]}
                         for v in versions}}


def _prefect(flow_run_id: Any) -> list[str]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return sorted(f"{a.key} ({a.type})" for a in found)


def record(result: Any, flow_run_id: Any) -> dict[str, Any]:
    """What one run left in MLflow (parent, child runs by name, logged models, registry) and in Prefect."""
    tracked = result.tracked
    client = MlflowClient(tracked.tracking_uri)
    children = client.search_runs([tracked.experiment_id], f"tags.mlflow.parentRunId = '{tracked.run_id}'")
    return {
        "experiment tags": sorted(client.get_experiment(tracked.experiment_id).tags),
        "runs": {"parent": _run(client, tracked.run_id)} | {r.info.run_name: _run(client, r.info.run_id)
                                                            for r in children},
        "logged models": _models(client, tracked.experiment_id, tracked.run_id),
        "registry": _registry(client, result.config.model_name, tracked.run_id),
        "prefect artifacts": _prefect(flow_run_id),
    }


def missing(expected: Any, actual: Any, where: str = "") -> list[str]:
    """Items of ``expected`` that ``actual`` lacks (dicts by key, lists as sets, other values by equality)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: {actual!r} is not a mapping"]
        return [m for key, value in expected.items()
                for m in (missing(value, actual[key], f"{where}/{key}") if key in actual else [f"{where}/{key}"])]
    if isinstance(expected, list):
        have = set(actual) if isinstance(actual, list) else set()
        return [f"{where}: {item}" for item in expected if item not in have]
    return [] if expected == actual else [f"{where}: {expected!r} became {actual!r}"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Any]:
    """The fresh run, then the same config again: it reuses both layers and the fine-tuning, and registers no
    new version."""
    tmp = tmp_path_factory.mktemp("record")
    states = {name: pretrain_flow(tiny(tmp), return_state=True) for name in ("fresh", "cached")}
    return {name: (state.result(), state.state_details.flow_run_id) for name, state in states.items()}


@pytest.fixture(scope="module")
def records(runs) -> dict[str, Any]:
    return {name: record(result, flow_run_id) for name, (result, flow_run_id) in runs.items()}


def _finetune_run(result: Any) -> tuple[MlflowClient, Any]:
    tracked = result.tracked
    client = MlflowClient(tracked.tracking_uri)
    (run,) = client.search_runs([tracked.experiment_id], f"tags.mlflow.parentRunId = '{tracked.run_id}' and "
                                                         "attributes.run_name = 'finetune'")
    return client, run


def _timeless(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.endswith("seconds")}


def test_a_cached_fine_tuning_records_the_same_epochs_and_accuracies_as_the_one_it_reuses(runs):
    (fresh, _), (cached, _) = runs["fresh"], runs["cached"]
    assert (fresh.finetuned.reused, cached.finetuned.reused) == (False, True)
    (client, trained), (_, reused) = _finetune_run(fresh), _finetune_run(cached)
    assert (trained.data.tags["sae.reused"], reused.data.tags["sae.reused"]) == ("false", "true")
    assert "Reused from the fine-tuning cache" in reused.data.tags["mlflow.note.content"]
    assert reused.data.metrics == trained.data.metrics and reused.data.params == trained.data.params
    for key in trained.data.metrics:  # every epoch's point, not only the last (in step order: the times differ)
        assert sorted((m.step, m.value) for m in client.get_metric_history(reused.info.run_id, key)) == \
            sorted((m.step, m.value) for m in client.get_metric_history(trained.info.run_id, key)), key
    assert _timeless(cached.metrics()) == _timeless(fresh.metrics())
    assert cached.tracked.registration.new_version is False  # the same fine-tuned weights: no second version


def test_a_run_records_everything_it_recorded_before(records):
    if os.environ.get("SAE_WRITE_RUN_RECORD"):
        RECORD.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    expected = json.loads(RECORD.read_text())
    assert missing(expected, records) == []


def test_the_record_check_fails_when_a_logged_item_disappears(records):
    expected = json.loads(RECORD.read_text())
    fewer = json.loads(json.dumps(records))
    fewer["fresh"]["runs"]["layer-1"]["artifacts"].remove("weights/layer-1.safetensors")
    del fewer["fresh"]["logged models"]["encoder-finetuned"]
    assert sorted(missing(expected, fewer)) == ["/fresh/logged models/encoder-finetuned",
                                                "/fresh/runs/layer-1/artifacts: weights/layer-1.safetensors"]
