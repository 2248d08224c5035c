"""Every bad input answers up front: exit 2, one line naming the problem and the fix, nothing recorded or lost.

Cases run ``sae-pipeline`` in-process (``flows.cli.main``); each fails before a server starts or a layer trains.
Two subprocess checks hold the fast path: no heavy import for config errors, and an unreachable tracking
server answered within 10 s.
"""

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from flows.cli import main
from sae import SAEConfig, SparseAutoencoder
from sae.scaling import Scaling
from sae.stack import StackedEncoder
from tests import ROOT

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there


def base_config(tmp: Path) -> dict:
    return {
        "name": "bad",
        "cache_dir": str(tmp / "cache"),
        "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "data": {"source": "digits", "max_samples": 200},
        "defaults": {"epochs": 1},
        "trainer": {"accelerator": "cpu"},
        "layers": [{"hidden": 4}],
        "finetune": {"epochs": 0},
    }


def write_config(tmp: Path, **sections) -> str:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp) | sections))
    return str(path)


def save(tmp: Path, name: str, X) -> str:
    path = tmp / name
    if name.endswith(".csv"):
        path.write_text(X)
    else:
        np.save(path, X, allow_pickle=True)
    return str(path)


def encoder_dir(tmp: Path) -> Path:
    torch.manual_seed(0)
    layer = SparseAutoencoder(SAEConfig(d_in=4, d_hidden=3))
    return StackedEncoder.from_autoencoders(Scaling.identity(4), [layer]).save(tmp / "encoder")


def damage_config(tmp: Path, change: Callable[[dict], None]) -> Path:
    directory = encoder_dir(tmp)
    config = json.loads((directory / "config.json").read_text())
    change(config)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def rng_data(shape, low=0.0, high=1.0):
    return np.random.default_rng(0).uniform(low, high, size=shape)


def overflow_column(tmp: Path) -> str:
    X = rng_data((100, 4))
    X[:, 2] = 1e30
    X[::2, 2] = 0.0
    return save(tmp, "huge.npy", X)


def constant(tmp):
    return save(tmp, "const.npy", np.ones((50, 3)))


def with_nan(tmp):
    X = rng_data((50, 3))
    X[7, 1] = np.nan
    return save(tmp, "nan.npy", X)


# id -> (argv builder given tmp, text the one line must contain)
CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "config file missing": (lambda t: ["run", str(t / "absent.yaml")], "not found"),
    "config invalid yaml": (lambda t: ["run", save(t, "bad.csv", "name: [")], "invalid YAML"),
    "config not utf-8": (lambda t: [(t / "latin1.yaml").write_bytes(b"name: caf\xe9\n") and "run",
                                    str(t / "latin1.yaml")], "not UTF-8"),
    "config unknown field": (lambda t: ["run", write_config(t), "--set", "defaults.hiden=3"], "hiden"),
    "config wrong type": (lambda t: ["run", write_config(t), "--set", "layers.0.hidden=abc"], "layers.0.hidden"),
    "config validate wrong type": (lambda t: ["config", "validate", write_config(t), "--set", "seed=x"], "seed"),
    # decoder_activation defaults to auto (linear unless the inputs lie in [0, 1]): these ask for sigmoid.
    "standard scaling with sigmoid decoder": (lambda t: ["run", write_config(t), "--set", "data.scale=standard",
                                                         "--set", "layers.0.decoder_activation=sigmoid"],
                                              "decoder_activation"),
    "data file missing": (lambda t: ["run", write_config(t), "--set", f"data.source={t / 'x.npy'}"], "no such file"),
    "data is a directory": (lambda t: ["run", write_config(t), "--set", f"data.source={t}"], "is a directory"),
    "data unsupported type": (lambda t: ["run", write_config(t), "--set",
                                         f"data.source={save(t, 'x.csv', 'a') and (t / 'x.csv').rename(t / 'x.txt')}"],
                              "unsupported file type"),
    "data pickled npy": (lambda t: ["run", write_config(t), "--set",
                                    f"data.source={save(t, 'obj.npy', np.array([{'a': 1}], dtype=object))}"],
                         "not a readable numeric .npy"),
    "data NaN": (lambda t: ["run", write_config(t), "--set", f"data.source={with_nan(t)}"], "NaN or infinite"),
    "data constant": (lambda t: ["run", write_config(t), "--set", f"data.source={constant(t)}"], "constant"),
    "data one-dimensional": (lambda t: ["run", write_config(t), "--set",
                                        f"data.source={save(t, 'flat.npy', rng_data(40))}"], "2-D array"),
    "data too few rows": (lambda t: ["run", write_config(t), "--set",
                                     f"data.source={save(t, 'few.npy', rng_data((3, 4)))}"], "too few to split"),
    "data labels column missing": (lambda t: ["run", write_config(t, data={"source": save(t, "t.csv", "a,b\n1,2\n3,4\n"),
                                                                          "labels": "y"})], "'y' not found"),
    "data overflows after scaling": (lambda t: ["run", write_config(
        t, data={"source": overflow_column(t), "scale": "none"}, defaults={"decoder_activation": "linear"})],
        "column 'x2' reaches 1e+30"),
    "unscaled data outside [0, 1] for a sigmoid decoder": (lambda t: ["run", write_config(
        t, data={"source": save(t, "wide.npy", rng_data((100, 4), -2, 2)), "scale": "none"}),
        "--set", "layers.0.decoder_activation=sigmoid"], "sigmoid decoder"),
    "accelerator gpu without a gpu": (lambda t: ["run", write_config(t), "--set", "trainer.accelerator=gpu"],
                                      "sees no GPU"),
    "tracking server unreachable": (lambda t: ["run", write_config(t), "--set", f"tracking_uri={UNREACHABLE}"],
                                    "is unreachable"),
    "tracking uri legacy file store": (lambda t: ["run", write_config(t), "--set", f"tracking_uri=file://{t}/mlruns"],
                                       "legacy MLflow file store"),
    "mlruns not writable": (lambda t: [(t / "mlruns").write_text("a file in the way") and "run", write_config(t)],
                            "cannot be written"),
    "encode output exists": (lambda t: ["encode", str(encoder_dir(t)), save(t, "in.npy", rng_data((5, 4))), "--out",
                                        save(t, "codes.npy", np.zeros(1))], "pass --force"),
    "encode input is a directory": (lambda t: ["encode", str(encoder_dir(t)), str(t), "--out", str(t / "c.npy")],
                                    "is a directory"),
    "encode from an unreachable server": (lambda t: ["encode", "models:/bad-encoder@champion",
                                                     save(t, "in.npy", rng_data((5, 4))), "--out", str(t / "c.npy")],
                                          "is unreachable"),
    "export output folder blocked by a file": (lambda t: ["export", str(encoder_dir(t)), "--format", "onnx", "--out",
                                                          f"{save(t, 'f.csv', 'x')}/sub/e.onnx"], "cannot be written"),
    "export output exists": (lambda t: ["export", str(encoder_dir(t)), "--format", "safetensors", "--out",
                                        str(encoder_dir(t))], "already exists"),
    "encoder config tampered": (lambda t: ["export", str(damage_config(t, lambda c: c.pop("layers"))), "--format",
                                           "onnx", "--out", str(t / "e.onnx")], "config.json is unreadable"),
    "encoder weights tampered": (lambda t: [(encoder_dir(t) / "model.safetensors").write_bytes(b"\0" * 400) and
                                            "export", str(t / "encoder"), "--format", "onnx", "--out", str(t / "e.onnx")],
                                 "damaged"),
    "encoder claims a huge layer": (lambda t: ["export", str(damage_config(
        t, lambda c: c["layers"][0].update(d_hidden=5_000_000))), "--format", "onnx", "--out", str(t / "e.onnx")],
        "declares layers"),
}


@pytest.fixture(scope="module", autouse=True)
def imported():
    """Pay the one-off imports (torch, sklearn, mlflow) up front, so each case's time is its own."""
    import pipeline.data.loading  # noqa: F401
    import pipeline.tracking.store  # noqa: F401


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", UNREACHABLE)  # only models:/ URIs and runs without one reach it
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "kept.txt").write_text("an earlier run's file")


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line_before_anything_is_recorded(case, tmp_path, capsys, monkeypatch):
    if case == "accelerator gpu without a gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    build, expected = CASES[case]
    argv = build(tmp_path)
    if "tracking_uri" not in " ".join(argv) and argv[0] == "run":
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
    started = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert seconds < 10, f"{case} took {seconds:.1f}s"
    assert not (tmp_path / "mlflow.db").exists() or case == "mlruns not writable"  # nothing tracked
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["kept.txt"]  # nothing cached or lost
    assert not (tmp_path / "c.npy").exists() and not (tmp_path / "e.onnx").exists()


def test_export_with_force_overwrites_an_existing_output(tmp_path, capsys):
    directory = encoder_dir(tmp_path)
    out = tmp_path / "e.onnx"
    out.write_text("old")
    assert main(["export", str(directory), "--format", "onnx", "--out", str(out), "--force"]) == 0
    assert out.stat().st_size > 100 and out.read_bytes()[:3] != b"old"


HEAVY = ("torch", "pytorch_lightning", "prefect", "mlflow", "sklearn", "pandas")
PROBE = """
import sys
from flows.cli import main
code = main(sys.argv[1:])
print(code, sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r}))
"""


@pytest.mark.parametrize("argv", [["--help"], ["config", "validate", "absent.yaml"], ["config", "schema"],
                                  ["run", "--set", "layers.0.hidden=abc"], ["run", "--set", "data.source=nowhere.npy"]])
def test_help_and_config_errors_import_nothing_heavy(argv, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=set(HEAVY)), *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    if argv == ["--help"]:
        assert done.returncode == 0 and "COMMAND" in done.stdout
        return
    assert done.stdout.strip().splitlines()[-1] in ("0 []", "2 []"), done.stdout + done.stderr


@pytest.mark.parametrize(("file", "setting", "message"), [
    ("d.csv", "data.labels=label", "column(s) 'label' not found; the columns are: a, b, y"),
    ("d.npz", "data.features=images", "features key 'images' not found; the archive's keys are: X, y"),
])
def test_a_wrong_column_or_key_is_named_before_anything_heavy_is_imported(file, setting, message, tmp_path):
    (tmp_path / "d.csv").write_text("a,b,y\n1,2,0\n3,4,1\n")
    np.savez(tmp_path / "d.npz", X=np.ones((2, 2)), y=np.arange(2))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = ["run", "--set", f"data.source={file}", "--set", setting]
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=set(HEAVY)), *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "2 []", done.stdout + done.stderr
    assert message in done.stderr


def test_tune_checks_its_data_before_anything_heavy_is_imported(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,y\n1,2,0\n3,4,1\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = ["tune", str(ROOT / "examples" / "tune-digits.yaml"), "--set", "data.source=d.csv",
            "--set", "data.labels=label"]
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=set(HEAVY)), *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "2 []", done.stdout + done.stderr
    assert "column(s) 'label' not found" in done.stderr


def test_an_unreachable_tracking_server_fails_run_within_10_seconds(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": UNREACHABLE}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    seconds = time.perf_counter() - started
    assert done.returncode == 2 and seconds < 10, (seconds, done.stderr)
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and UNREACHABLE in done.stderr
