"""Faults: a tampered layer cache retrains and never runs code; signals close the run; two runs at once."""

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from prefect.settings import PREFECT_API_URL
from safetensors.torch import load_file, save_file

from flows import pretrain_flow
from pipeline.run import layer_store
from tests import ROOT

CLI = [sys.executable, "-m", "flows.cli"]


def small(tmp: Path, name: str = "faults", epochs: int = 2) -> dict:
    """Two small layers on 400 digits; tracking and cache in ``tmp``."""
    return {
        "name": name,
        "seed": 5,
        "cache_dir": str(tmp / "cache"),
        "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "data": {"source": "digits", "max_samples": 400},
        "defaults": {"epochs": epochs, "batch_size": 64, "lr": 0.01},
        "trainer": {"accelerator": "cpu"},
        "layers": [{"hidden": 12}, {"hidden": 6}],
        "finetune": {"epochs": 0},
    }


def entries(tmp: Path) -> list[Path]:
    """Layer directories ordered bottom first."""
    found = [p for p in (tmp / "cache" / "layers").iterdir() if "." not in p.name]
    return sorted(found, key=lambda p: json.loads((p / "config.json").read_text())["settings"]["index"])


class Touch:
    """Unpickling this creates ``path``: stands in for arbitrary code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    return tmp, pretrain_flow(small(tmp))


def test_garbage_weights_in_the_cache_retrain_that_layer_and_the_ones_above(reference):
    tmp, first = reference
    bottom, top = entries(tmp)
    tensors = load_file(str(bottom / "model.safetensors"))
    save_file({k: v * 0 + 0.11 for k, v in tensors.items()}, str(bottom / "model.safetensors"))  # valid, wrong
    result = pretrain_flow(small(tmp))
    assert [layer.reused for layer in result.layers] == [False, False]
    for new, old in zip(result.layers, first.layers, strict=True):  # CPU training is deterministic
        assert np.array_equal(new.model.encoder.weight.detach().numpy(), old.model.encoder.weight.detach().numpy())
    assert layer_store.check_entry(bottom) is None and layer_store.check_entry(top) is None


def test_planted_prefect_records_and_pickled_codes_execute_nothing(reference):
    tmp, _ = reference
    from prefect.results import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    marker = tmp / "PWNED"
    record = ResultRecord(metadata=ResultRecordMetadata(storage_key="x", serializer=PickleSerializer()),
                          result=Touch(marker))
    payload = record.serialize()
    ResultRecord.deserialize(payload)  # the planted record is live: Prefect itself runs it when it reads it
    assert marker.exists()
    marker.unlink()
    bottom, top = entries(tmp)
    records = tmp / "cache" / "prefect"  # where earlier versions kept Prefect's result records, by layer key
    records.mkdir(parents=True, exist_ok=True)
    for name in (bottom.name, top.name, "train-layer", "load-data"):
        (records / name).write_bytes(payload)
    with (top / "train_codes.npy").open("wb") as f:  # an object array: np.load would unpickle it if allowed
        np.save(f, np.array([Touch(marker)], dtype=object), allow_pickle=True)
    (tmp / "cache" / "layers" / "layer.pkl").write_bytes(pickle.dumps(Touch(marker)))
    result = pretrain_flow(small(tmp))
    assert not marker.exists()
    assert [layer.reused for layer in result.layers] == [True, False]  # the altered top layer retrained
    assert layer_store.check_entry(top) is None


def cli(args: list[str], tmp: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": PREFECT_API_URL.value()}
    # Its own session: a signal meant for the run can never reach the test process.
    return subprocess.Popen([*CLI, *args], cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, **kwargs)


def write_config(tmp: Path, config: dict) -> str:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code", "status"), [(signal.SIGTERM, 143, "FAILED"), (signal.SIGINT, 130, "KILLED")])
def test_a_signal_ends_the_run_with_one_line_its_exit_status_and_the_run_closed(tmp_path, signum, code, status):
    config = small(tmp_path, "signalled", epochs=100_000)
    proc = cli(["run", write_config(tmp_path, config)], tmp_path)
    lines = []
    deadline = time.monotonic() + 240
    for line in proc.stderr:  # wait until layer 1 is training
        lines.append(line)
        if "layer 1/2 epoch 2/" in line:
            break
        assert time.monotonic() < deadline, "".join(lines[-20:])
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    name = signal.Signals(signum).name
    assert proc.returncode == code, err[-3000:]
    assert f"interrupted ({name})" in err.strip().splitlines()[-1]
    assert "Traceback" not in err
    client = MlflowClient(config["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("signalled").experiment_id])
    def what(run):  # the run's name without its time: signalled-1205-075721 -> signalled
        return re.sub(r"-\d{4}-\d{6}$", "", run.info.run_name)

    assert {what(r): r.info.status for r in runs} == {"signalled": status, "layer-1": status}
    errors = {what(r): r.data.tags.get("error") for r in runs}
    assert errors == {"signalled": f"interrupted by {name}", "layer-1": f"interrupted by {name}"}


@pytest.mark.slow
def test_two_runs_on_the_same_store_and_cache_both_finish(tmp_path):
    path = write_config(tmp_path, small(tmp_path, "twins"))
    procs = [cli(["run", path, "--json"], tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    versions = sorted(json.loads(out.strip().splitlines()[-1])["model_version"] for out, _ in outs)
    # Same config, same seed: identical weights, so the second registration adds no version and names the first.
    assert versions == ["1", "1"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(client.search_model_versions("name='twins-encoder'")) == 1
    assert [r.info.status for r in client.search_runs([client.get_experiment_by_name("twins").experiment_id])
            if "mlflow.parentRunId" not in r.data.tags] == ["FINISHED", "FINISHED"]
    assert all(layer_store.check_entry(p) is None for p in entries(tmp_path))
    assert not [p for p in (tmp_path / "cache" / "layers").iterdir() if "." in p.name]  # no partials left
