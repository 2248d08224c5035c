"""The pretraining flow: layer caching, partial retraining, resume after SIGKILL, failures, artifacts."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_UI_URL

from flows import pretrain_flow
from pipeline.config import PipelineConfig
from pipeline.config.overrides import apply_overrides
from pipeline.errors import InputError
from pipeline.run.greedy import pretrain_stack
from tests import ROOT


def tiny(tmp: Path, name: str = "tiny") -> dict:
    """Three small layers on digits, two epochs each, no fine-tuning; tracking to a sqlite file in ``tmp``."""
    return {
        "name": name,
        "seed": 3,
        "cache_dir": str(tmp / "cache"),
        "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "data": {"source": "digits"},
        "defaults": {"epochs": 2, "batch_size": 128, "lr": 0.01},
        "trainer": {"accelerator": "cpu"},
        "layers": [{"hidden": 16}, {"hidden": 12}, {"hidden": 8}],
        "finetune": {"epochs": 0},
    }


def run(config: dict, **kwargs):
    """Run the flow; return (result, flow run id, wall seconds)."""
    started = time.perf_counter()
    state = pretrain_flow(config, return_state=True, **kwargs)
    seconds = time.perf_counter() - started
    return state.result(), state.state_details.flow_run_id, seconds


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def stored_layers(workdir: Path) -> dict[str, tuple[int, str | None, int]]:
    """Layer-store key -> (layer index, parent key, weights file mtime in ns)."""
    out = {}
    for path in (workdir / "cache" / "layers").iterdir():
        meta = json.loads((path / "config.json").read_text())
        out[path.name] = (meta["settings"]["index"], meta["parent_key"], (path / "model.safetensors").stat().st_mtime_ns)
    return out


def task_states(flow_run_id) -> dict[str, str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r.state_name for r in runs}


def flow_logs(flow_run_id) -> str:
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join(log.message for log in logs)


def layer_tags(result) -> dict[str, str]:
    """``layer-N`` child run name -> its ``sae.reused`` tag."""
    client = MlflowClient(result.tracked.tracking_uri)
    children = client.search_runs([result.tracked.experiment_id],
                                  f"tags.mlflow.parentRunId = '{result.tracked.run_id}'")
    return {r.info.run_name: r.data.tags.get("sae.reused") for r in children if r.info.run_name.startswith("layer")}


def test_flow_parameters_are_the_config_schema_so_the_ui_shows_a_form():
    schema = pretrain_flow.parameters
    assert schema.properties["config"]["$ref"] == "#/definitions/PipelineConfig"
    assert set(schema.definitions["PipelineConfig"]["properties"]) >= {"name", "data", "layers", "finetune"}
    assert schema.properties["refresh_cache"]["default"] is False and schema.required == ["config"]


def test_the_deployment_form_text_has_no_angle_bracket_placeholders_that_the_ui_would_strip():
    text = json.dumps(pretrain_flow.parameters.model_dump())
    assert re.findall(r"<[A-Za-z][^<>]*>", text) == []
    register = pretrain_flow.parameters.definitions["RegisterConfig"]["properties"]["model"]["description"]
    assert "digits-encoder" in register


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("flow")


@pytest.fixture(scope="module")
def first(workdir):
    """The uninterrupted reference run on an empty cache, started in ``workdir`` with no tracking URI set."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        return run(tiny(workdir) | {"tracking_uri": None})


def task_runs(flow_run_id) -> dict[str, object]:
    """Task run name -> task run, for one flow run."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r for r in runs}


def waits_on(runs: dict[str, object], name: str) -> set[str]:
    """Names of the task runs that task run ``name`` was recorded as waiting on (what the UI draws as edges)."""
    ids = {i.id for inputs in runs[name].task_inputs.values() for i in inputs}
    return {other for other, r in runs.items() if r.id in ids}


def test_first_run_trains_every_layer_tracks_registers_and_publishes_artifacts(first):
    result, flow_run_id, _ = first
    assert [layer.reused for layer in result.layers] == [False, False, False]
    assert result.tracked.registration.model_version == "1" and result.tracked.model_uri == "models:/tiny-encoder@champion"
    assert MlflowClient(result.tracked.tracking_uri).get_run(result.tracked.run_id).info.status == "FINISHED"
    assert layer_tags(result) == {"layer-1": "false", "layer-2": "false", "layer-3": "false"}
    with get_client(sync_client=True) as client:
        artifacts = {a.key: a for a in client.read_artifacts() if a.flow_run_id == flow_run_id}
    assert "| layer | shape |" in artifacts["tiny-results"].data and "64->16" in artifacts["tiny-results"].data
    assert "tiny-encoder" in artifacts["tiny-model-version"].data and "versions/1" in artifacts["tiny-model-version"].data


def test_the_default_store_is_mlflow_db_in_the_working_directory(first, workdir):
    result, _, _ = first
    assert result.tracked.tracking_uri == f"sqlite:///{workdir / 'mlflow.db'}"
    run = MlflowClient(result.tracked.tracking_uri).get_run(result.tracked.run_id)
    assert run.info.artifact_uri.startswith((workdir / "mlruns").as_uri())


def test_the_flow_run_and_the_mlflow_parent_run_share_one_name_and_link_each_other(first):
    result, flow_run_id, _ = first
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        artifacts = {a.key: a for a in client.read_artifacts() if a.flow_run_id == flow_run_id}
    parent = MlflowClient(result.tracked.tracking_uri).get_run(result.tracked.run_id)
    assert re.fullmatch(r"tiny-\d{4}-\d{6}", flow_run.name) and parent.info.run_name == flow_run.name
    tags = parent.data.tags
    assert tags["sae.flow_run"] == str(flow_run_id)
    assert "sae.deployment" not in tags  # called directly, not from a deployment
    # One click to Prefect: a link in the description's first lines (tags are plain text in the UI).
    first_lines = tags["mlflow.note.content"].split("\n\n")[:3]
    url = f"{PREFECT_UI_URL.value()}/runs/flow-run/{flow_run_id}"
    assert any(line.startswith(f"Prefect flow run: [{flow_run.name}") and line.endswith(f"]({url})")
               for line in first_lines), first_lines
    # The link back: an artifact of the flow run itself (no task run), keyed by the config's name, whose card
    # (its description) links the MLflow run, not the MLflow home page; the flow run's log prints the page.
    link = artifacts["tiny-mlflow-run"]
    assert link.task_run_id is None and link.data.startswith(f"[MLflow run {flow_run.name}")
    page = f"http://127.0.0.1:5000/#/experiments/{result.tracked.experiment_id}/runs/{result.tracked.run_id}"
    assert page in link.data and "sae-pipeline ui" in link.data and flow_run.name in link.data
    assert f"[MLflow run {flow_run.name}]({page}" in link.description
    assert page in artifacts["tiny-results"].description
    assert "/#/models/tiny-encoder/versions/1)" in artifacts["tiny-model-version"].description
    assert {a.task_run_id for a in artifacts.values()} == {None}
    assert set(artifacts) == {"tiny-mlflow-run", "tiny-results", "tiny-model-version"}
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    assert any(page in log.message for log in logs)


def test_tasks_are_named_without_suffixes_and_each_layer_waits_on_the_one_below(first):
    _, flow_run_id, _ = first
    runs = task_runs(flow_run_id)
    layers = [f"{kind}-layer-{i}" for i in (1, 2, 3) for kind in ("train", "record")]
    assert set(runs) == {"load-data", "start-tracking", *layers, "stack", "finetune", "evaluate", "register"}
    assert waits_on(runs, "train-layer-2") == {"train-layer-1"}
    assert waits_on(runs, "train-layer-3") == {"train-layer-2"}
    assert waits_on(runs, "train-layer-1") == {"start-tracking"}
    assert waits_on(runs, "record-layer-2") == {"train-layer-2"}
    # After the layers: a chain, plus the data edges Prefect records itself (load-data's result as a parameter;
    # other arguments are quoted, so the encoder stack made is not searched for and drawn again).
    assert waits_on(runs, "stack") == {"train-layer-3", "record-layer-3", "load-data"}
    assert waits_on(runs, "finetune") == {"stack", "load-data"}
    assert waits_on(runs, "evaluate") == {"finetune", "load-data"}
    assert waits_on(runs, "register") == {"evaluate", "load-data"}


def test_the_plain_path_gives_the_flows_weights_for_the_same_config(first, tmp_path):
    reference, _, _ = first
    plain = pretrain_stack(PipelineConfig.from_dict(tiny(tmp_path)))  # no Prefect, no cache, no tracking
    for flowed, direct in zip(reference.layers, plain.layers, strict=True):
        assert same_weights(flowed.model, direct.model), f"layer {direct.index + 1}"
        np.testing.assert_array_equal(np.asarray(flowed.codes.test), np.asarray(direct.codes.test))
    assert same_weights(plain.encoder, reference.encoder)


def test_same_config_again_reuses_every_layer_without_training(first, workdir):
    reference, _, _ = first
    stored = stored_layers(workdir)
    result, flow_run_id, _ = run(tiny(workdir))
    assert [layer.reused for layer in result.layers] == [True, True, True]
    states = task_states(flow_run_id)  # reuse is decided from the layer store; Prefect caches nothing
    assert [states[f"train-layer-{i}"] for i in (1, 2, 3)] == ["Completed"] * 3
    assert stored_layers(workdir) == stored  # nothing trained or rewritten: same keys, same weight files
    assert same_weights(result.encoder, reference.encoder)
    logs = flow_logs(flow_run_id)
    assert all(f"layer {i} reused from cache " in logs for i in (1, 2, 3)), logs
    assert layer_tags(result) == {"layer-1": "true", "layer-2": "true", "layer-3": "true"}
    registration = result.tracked.registration  # the same weights as version 1: no second version
    assert (registration.model_version, registration.new_version) == ("1", False)
    assert registration.reason == "weights identical to version 1 (@champion): no new version added"


def test_changing_only_layer_3_retrains_only_layer_3(first, workdir):
    reference, _, _ = first
    result, _, _ = run(apply_overrides(tiny(workdir), ["layers.2.lr=0.02"]))
    assert [layer.reused for layer in result.layers] == [True, True, False]
    assert same_weights(result.layers[1].model, reference.layers[1].model)
    assert not torch.equal(result.layers[2].model.encoder.weight, reference.layers[2].model.encoder.weight)


def test_refresh_cache_retrains_every_layer_to_the_same_weights(first, workdir):
    reference, _, _ = first
    result, flow_run_id, _ = run(tiny(workdir), refresh_cache=True)
    assert [layer.reused for layer in result.layers] == [False, False, False]
    assert set(task_states(flow_run_id).values()) == {"Completed"}
    assert same_weights(result.encoder, reference.encoder)


def test_a_cached_layer_whose_files_are_missing_is_retrained(first, workdir):
    reference, _, _ = first
    (layer_2,) = [p for p in (workdir / "cache" / "layers").iterdir()
                  if json.loads((p / "config.json").read_text())["settings"]["index"] == 1]
    (layer_2 / "model.safetensors").unlink()
    result, flow_run_id, _ = run(tiny(workdir))
    # Layer 2 retrains (to the same weights), and so does layer 3: its inputs came from the damaged layer.
    assert [layer.reused for layer in result.layers] == [True, False, False]
    assert same_weights(result.encoder, reference.encoder)
    assert "layer 2 cache entry" in flow_logs(flow_run_id) and "model.safetensors missing" in flow_logs(flow_run_id)


# After the tests above: they find "the" layer-2 directory of the base config by its index.
def test_changing_layer_1_retrains_layers_2_and_3_on_its_new_codes(first, workdir):
    reference, _, _ = first
    before = stored_layers(workdir)
    result, flow_run_id, _ = run(apply_overrides(tiny(workdir), ["layers.0.lr=0.02"]))
    assert [layer.reused for layer in result.layers] == [False, False, False]
    assert [task_states(flow_run_id)[f"train-layer-{i}"] for i in (1, 2, 3)] == ["Completed"] * 3
    new = {key: value for key, value in stored_layers(workdir).items() if key not in before}
    by_index = {index: (key, parent) for key, (index, parent, _) in new.items()}
    assert sorted(by_index) == [0, 1, 2]  # three new layers, although layers 2 and 3 kept their settings
    assert by_index[1][1] == by_index[0][0] and by_index[2][1] == by_index[1][0]  # each keyed on the one below
    for new_layer, old_layer in zip(result.layers[1:], reference.layers[1:], strict=True):
        assert not torch.equal(new_layer.model.encoder.weight, old_layer.model.encoder.weight)


KILLED_RUN = """
import json, os, sys, time
from pytorch_lightning.callbacks import Callback
from flows import pretrain_flow
from flows.session import FlowSession, use_session
from flows.server_guard import guard_temporary_server
guard_temporary_server()  # as `sae-pipeline run` does: the temporary server must not outlive this process
from pipeline.run.hooks import PipelineHooks

config, marker, index = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])

class Stall(Callback):
    def on_train_epoch_end(self, trainer, module):
        open(marker, "w").write(str(os.getpid()))
        time.sleep(600)  # the test kills us here, mid-layer

class KillPoint(PipelineHooks):
    def layer_callbacks(self, i, settings):
        return [Stall()] if i == index else []

with use_session(FlowSession(hooks=(KillPoint(),))):
    pretrain_flow(config)
"""


def children_of(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_a_run_killed_during_layer_2_resumes_there_closes_its_runs_and_leaves_no_server(first, tmp_path):
    reference, _, _ = first
    config = tiny(tmp_path)
    marker = tmp_path / "layer-2-started"
    # Its own temporary Prefect server (no PREFECT_API_URL), as a plain `sae-pipeline run` would start.
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, json.dumps(config), str(marker), "1"], env=env,
                            cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=(tmp_path / "killed.log").open("w"))
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "layer 2 never started training"
            time.sleep(0.2)
        servers = [pid for pid in children_of(proc.pid) if b"uvicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(servers) == 1, "the killed run should have started its own temporary Prefect server"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert gone(servers[0], within=20), "the temporary Prefect server outlived the killed run"
    assert len(list((tmp_path / "cache" / "layers").glob("*.partial-*"))) == 1  # layer 2, half done
    client = MlflowClient(config["tracking_uri"])
    (experiment,) = [e.experiment_id for e in client.search_experiments() if e.name == "tiny"]
    before = client.search_runs([experiment])
    (killed,) = [r for r in before if "mlflow.parentRunId" not in r.data.tags]
    assert killed.info.status == "RUNNING" and killed.data.tags["sae.pid"] == str(proc.pid)
    assert {r.info.run_name: r.info.status for r in before if r is not killed} == {"layer-1": "FINISHED",
                                                                                 "layer-2": "RUNNING"}
    result, _, _ = run(config)
    assert [layer.reused for layer in result.layers] == [True, False, False]
    assert same_weights(result.encoder, reference.encoder)
    assert not list((tmp_path / "cache" / "layers").glob("*.partial-*"))
    runs = {r.info.run_id: r for r in client.search_runs([experiment])}
    stale = [runs[killed.info.run_id], *(r for r in runs.values() if r.info.run_name == "layer-2"
                                         and r.data.tags.get("mlflow.parentRunId") == killed.info.run_id)]
    assert len(stale) == 2 and all(r.info.status == "FAILED" for r in stale)
    assert all(r.data.tags["error"] == "process ended without closing the run (killed?)" for r in stale)
    assert runs[result.tracked.run_id].info.status == "FINISHED"


def test_a_failing_layer_fails_the_flow_with_its_error_and_registers_nothing(tmp_path):
    config = apply_overrides(tiny(tmp_path, "failing"), ["layers.1.optimizer=sgd", "layers.1.lr=1.0e+30"])
    state = pretrain_flow(config, return_state=True)
    assert state.is_failed()
    with pytest.raises(FloatingPointError):
        state.result()
    client = MlflowClient(config["tracking_uri"])
    experiment = client.get_experiment_by_name("failing")
    parents = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.status for r in parents] == ["FAILED"]
    assert "FloatingPointError" in parents[0].data.tags["error"]
    assert "FloatingPointError" in flow_logs(state.state_details.flow_run_id)
    assert client.search_model_versions("name='failing-encoder'") == []
    assert not list((tmp_path / "cache" / "layers").glob("*.partial-*"))
    assert len(list((tmp_path / "cache" / "layers").iterdir())) == 1  # layer 1 kept for the next try


def test_bad_input_fails_fast_without_io_retries(tmp_path):
    config = apply_overrides(tiny(tmp_path, "bad-input"), [f"data.source={tmp_path / 'absent.npy'}"])
    state = pretrain_flow(config, return_state=True)
    with pytest.raises(InputError, match="absent.npy"):
        state.result()
    with get_client(sync_client=True) as client:
        (load,) = [r for r in client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))) if r.name.startswith("load-data")]
    assert load.run_count == 1 and load.state_name == "Failed"
