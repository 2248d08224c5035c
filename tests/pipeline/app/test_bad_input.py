"""Every bad input answers up front: exit 2, one line naming the problem and the fix, nothing recorded or lost.

The table below holds one row per case, grouped by family (config, data, paths, stores, servers, sizes,
outputs, models): a row is an argv builder (given the test's folder, the working directory) and the text
the one line must contain. Each case runs ``sae-pipeline`` in-process (``flows.cli.main``), fails before a
server starts or a layer trains, and leaves every file in the folder as it was. Signals during ``encode``
run in a child process (their own table). How fast these answers come is measured, not asserted:
``benchmarks/cli_latency.py``.
"""

import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import torch

from flows.cli import main
from pipeline.app import limits
from tests import ROOT
from tests.pipeline.app.hostile import (
    UNREACHABLE,
    alias_bomb,
    alias_bomb_value,
    damage_config,
    dead_port,
    deep_json,
    encoder_dir,
    folder_with,
    foreign_database,
    health_only_server,
    in_npy,
    locked_store,
    mlflow_store,
    npz_declaring,
    rng_data,
    save,
    silent_port,
    snapshot,
    truncated_store,
    write_config,
    write_text,
)


def loop(tmp: Path, name: str) -> str:
    """A symbolic link pointing at itself."""
    (tmp / name).symlink_to(tmp / name)
    return str(tmp / name)


def unlabeled(tmp: Path, source: str | list[str]) -> dict:
    """A data section: 100 rows of 4 features with labels, plus ``source`` as unlabeled rows."""
    X = rng_data((100, 4))
    np.savez(tmp / "labeled.npz", X=X, y=np.arange(100) % 2)
    return {"source": str(tmp / "labeled.npz"), "labels": "y", "unlabeled_source": source}


def save_npz(tmp: Path, name: str, **arrays) -> str:
    np.savez(tmp / name, **arrays)
    return str(tmp / name)


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


Build = Callable[[Path], list[str]]

# family -> case -> (argv builder given the folder, text the one line must contain)
CONFIG: dict[str, tuple[Build, str]] = {
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
    "seed 2**70": (lambda t: ["run", write_config(t), "--set", f"seed={2**70}"], "seed"),
    "seed -1": (lambda t: ["run", write_config(t), "--set", "seed=-1"], "seed"),
    "seed 2**32": (lambda t: ["run", write_config(t), "--set", f"seed={2**32}"], "seed"),
    "lr .inf": (lambda t: ["run", write_config(t), "--set", "defaults.lr=.inf"], "defaults.lr"),
    "lr .nan": (lambda t: ["run", write_config(t), "--set", "defaults.lr=.nan"], "defaults.lr"),
    "register.model=../../etc": (lambda t: ["run", write_config(t), "--set", "register.model=../../etc"],
                                 "register.model"),
    "duplicate key": (lambda t: ["run", write_text(t, "dup.yaml", Path(write_config(t)).read_text() + "defaults: {}\n")],
                      "duplicate key 'defaults'"),
    "trainer.devices beyond the cores": (lambda t: ["run", write_config(t), "--set", "trainer.devices=512"],
                                         "trainer.devices=512"),
    "trainer.devices=8 on 2 CPU cores": (lambda t: [cores(2) and "run", write_config(t), "--set", "trainer.devices=8"],
                                         "trainer.devices=8, but this machine has 2 CPU cores"),
    "accelerator gpu without a gpu": (lambda t: ["run", write_config(t), "--set", "trainer.accelerator=gpu"],
                                      "sees no GPU"),
}

DATA: dict[str, tuple[Build, str]] = {
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
    "data labels a single class": (lambda t: ["run", write_config(t, data={
        "source": save_npz(t, "one.npz", X=rng_data((100, 4)), y=np.full(100, 3)), "labels": "y"})],
        "only class 3 has labeled rows"),
    "data.unlabeled_source with a NaN": (lambda t: ["run", write_config(t, data=unlabeled(t, with_nan(t)))],
                                         "NaN or infinite"),
    "data.unlabeled_source of another width": (lambda t: ["run", write_config(t, data=unlabeled(
        t, save(t, "narrow.npy", rng_data((50, 3)))))], "unlabeled rows need the same features"),
    "unscaled data outside [0, 1] for a sigmoid decoder": (lambda t: ["run", write_config(
        t, data={"source": save(t, "wide.npy", rng_data((100, 4), -2, 2)), "scale": "none"}),
        "--set", "layers.0.decoder_activation=sigmoid"], "sigmoid decoder"),
}

MODELS: dict[str, tuple[Build, str]] = {
    "encoder config tampered": (lambda t: ["export", str(damage_config(t, lambda c: c.pop("layers"))), "--format",
                                           "onnx", "--out", str(t / "e.onnx")], "config.json is unreadable"),
    "encoder weights tampered": (lambda t: [(encoder_dir(t) / "model.safetensors").write_bytes(b"\0" * 400) and
                                            "export", str(t / "encoder"), "--format", "onnx", "--out", str(t / "e.onnx")],
                                 "damaged"),
    "encoder scaling.offset NaN": (lambda t: ["export", str(damage_config(t, lambda c: c["scaling"].update(
        offset=float("nan")))), "--format", "onnx", "--out", str(t / "e.onnx")], "scaling.offset is nan"),
    "encode with an encoder whose scaling.offset is NaN": (lambda t: ["encode", str(damage_config(
        t, lambda c: c["scaling"].update(offset=float("nan")))), in_npy(t), "--out", str(t / "c.npy")],
        "scaling.offset is nan"),
    "encoder config.json 200,000 deep": (lambda t: [write_text(encoder_dir(t), "config.json", deep_json(200_000))
                                                    and "export", str(t / "encoder"), "--format", "onnx", "--out",
                                                    str(t / "e.onnx")], "nested too deeply"),
    "encode a table lacking the encoder's columns": (lambda t: ["encode", str(encoder_dir(t, names=list("abcd"))),
                                                                save(t, "x.csv", "a,b,c,e\n1,2,3,4\n"), "--out",
                                                                str(t / "c.npy")], "lacks column(s) 'd'"),
    "encoder claims a huge layer": (lambda t: ["export", str(damage_config(
        t, lambda c: c["layers"][0].update(d_hidden=5_000_000))), "--format", "onnx", "--out", str(t / "e.onnx")],
        "declares layers"),
}




OUTPUTS: dict[str, tuple[Build, str]] = {
    "encode output exists": (lambda t: ["encode", str(encoder_dir(t)), save(t, "in.npy", rng_data((5, 4))), "--out",
                                        save(t, "codes.npy", np.zeros(1))], "pass --force"),
    "encode input is a directory": (lambda t: ["encode", str(encoder_dir(t)), str(t), "--out", str(t / "c.npy")],
                                    "is a directory"),
    "export output folder blocked by a file": (lambda t: ["export", str(encoder_dir(t)), "--format", "onnx", "--out",
                                                          f"{save(t, 'f.csv', 'x')}/sub/e.onnx"], "cannot be written"),
    "export --out . --force": (lambda t: ["export", str(encoder_dir(t)), "--format", "onnx", "--out", ".", "--force"],
                               "is the working directory"),
    "export safetensors --out . --force": (lambda t: ["export", str(encoder_dir(t)), "--format", "safetensors",
                                                      "--out", ".", "--force"], "is the working directory"),
    "export --out a folder above the working directory": (lambda t: ["export", str(encoder_dir(t)), "--format",
                                                                     "onnx", "--out", "..", "--force"],
                                                          "or a folder above it"),
    "export onnx --out an existing directory --force": (lambda t: ["export", str(encoder_dir(t)), "--format", "onnx",
                                                                   "--out", folder_with(t, "d", "a.txt"), "--force"],
                                                        "is a directory"),
    "export safetensors --out a folder with other files --force": (lambda t: [
        "export", str(encoder_dir(t)), "--format", "safetensors", "--out",
        folder_with(t, "d", "config.json", "notes.txt"), "--force"], "holds other files (notes.txt)"),
    "export safetensors --out a file --force": (lambda t: ["export", str(encoder_dir(t)), "--format", "safetensors",
                                                           "--out", save(t, "f.npy", np.zeros(2)), "--force"],
                                                "is a file"),
    "export safetensors onto its own input --force": (lambda t: ["export", str(encoder_dir(t)), "--format",
                                                                 "safetensors", "--out", str(t / "encoder"), "--force"],
                                                      "is the input"),
    "export onnx over a file of its input --force": (lambda t: ["export", str(encoder_dir(t)), "--format", "onnx",
                                                                "--out", str(t / "encoder" / "model.safetensors"),
                                                                "--force"], "is the input"),
    "export output exists": (lambda t: ["export", str(encoder_dir(t)), "--format", "safetensors", "--out",
                                        str(encoder_dir(t, "other"))], "already exists"),
    "encode --out the input itself --force": (lambda t: ["encode", str(encoder_dir(t)), in_npy(t), "--out",
                                                         str(t / "in.npy"), "--force"], "is the input"),
    "encode --out a link to the input --force": (lambda t: ["encode", str(encoder_dir(t)), in_npy(t), "--out",
                                                            str((t / "l.npy").symlink_to(t / "in.npy") or t / "l.npy"),
                                                            "--force"], "is the input"),
    "encode --out onto a directory": (lambda t: ["encode", str(encoder_dir(t)), in_npy(t), "--out",
                                                 folder_with(t, "d", "a.txt")], "is a directory"),
    "encode --out with a bad suffix": (lambda t: ["encode", str(encoder_dir(t)), in_npy(t), "--out",
                                                  str(t / "c.txt")], "unsupported output type '.txt'"),
    "encode --out with a bad suffix, before a models:/ model is looked up": (lambda t: [
        "encode", "models:/bad-encoder@champion", in_npy(t), "--out", str(t / "c.txt")],
        "unsupported output type '.txt'"),
    "encode --out a symlink loop": (lambda t: ["encode", str(encoder_dir(t)), in_npy(t), "--out",
                                               str((t / "loop.npy").symlink_to(t / "loop.npy") or t / "loop.npy")],
                                    "symbolic link loop"),
    "encode input a symlink loop": (lambda t: ["encode", str(encoder_dir(t)), str((t / "in.npy").symlink_to(
        t / "in.npy") or t / "in.npy"), "--out", str(t / "c.npy")], "symbolic link loop"),
    "encode input missing": (lambda t: ["encode", str(encoder_dir(t)), str(t / "absent.npy"), "--out",
                                        str(t / "c.npy")], "no such file"),
    "encode model folder missing": (lambda t: ["encode", str(t / "absent"), in_npy(t), "--out", str(t / "c.npy")],
                                    "no such directory"),
}


def uri(db: Path) -> str:
    return f"tracking_uri=sqlite:///{db}"


STORES: dict[str, tuple[Build, str]] = {
    "tracking uri legacy file store": (lambda t: ["run", write_config(t), "--set", f"tracking_uri=file://{t}/mlruns"],
                                       "legacy MLflow file store"),
    "mlruns not writable": (lambda t: [(t / "mlruns").write_text("a file in the way") and "run", write_config(t)],
                            "cannot be written"),
    "sqlite path is a directory": (lambda t: ["run", write_config(t), "--set",
                                              uri(folder_with(t, "store"))], "is a directory"),
    "relative sqlite:///path is a directory": (lambda t: ["run", write_config(t), "--set",
                                                          f"tracking_uri=sqlite:///{Path(folder_with(t, 'rel')).name}"],
                                               "rel: is a directory"),
    "sqlite:////dev/null": (lambda t: ["run", write_config(t), "--set", "tracking_uri=sqlite:////dev/null"],
                            "not a regular file"),
    "garbage mlflow.db": (lambda t: ["run", write_config(t), "--set",
                                     uri(write_text(t, "mlflow.db", os.urandom(4096)))], "not a SQLite database"),
    "garbage relative sqlite:///mlflow.db": (lambda t: ["run", write_config(t), "--set", "tracking_uri=sqlite:///"
                                                        + Path(write_text(t, "mlflow.db", os.urandom(4096))).name],
                                             "not a SQLite database"),
    "truncated mlflow.db": (lambda t: ["run", write_config(t), "--set", uri(truncated_store(t))], "damaged"),
    "locked mlflow.db": (lambda t: ["run", write_config(t), "--set", uri(keep(locked_store(mlflow_store(t))))],
                         "locked by another process"),
    "someone else's sqlite file": (lambda t: ["run", write_config(t), "--set", uri(foreign_database(t))],
                                   "without MLflow's tables"),
    "postgresql without its driver": (lambda t: ["run", write_config(t), "--set",
                                                 "tracking_uri=postgresql://me:secret@127.0.0.1/mlflow"],
                                      "needs the database driver"),
    "ftp://": (lambda t: ["run", write_config(t), "--set", "tracking_uri=ftp://x"], "cannot track to ftp://"),
    "databricks without credentials": (lambda t: [setenv("HOME", str(t)) and "run", write_config(t), "--set",
                                                  "tracking_uri=databricks"], "no Databricks credentials"),
    "encode a models:/ URI from a store that does not exist": (lambda t: [
        setenv("MLFLOW_TRACKING_URI", f"sqlite:///{t / 'absent.db'}") and "encode", "models:/bad-encoder@champion",
        in_npy(t), "--out", str(t / "c.npy")], "does not exist"),
    "encode a models:/ URI the store does not hold": (lambda t: [
        setenv("MLFLOW_TRACKING_URI", f"sqlite:///{mlflow_store(t)}") and "encode", "models:/bad-encoder@champion",
        in_npy(t), "--out", str(t / "c.npy")], "no registered model named 'bad-encoder' (registered: none)"),
    "export a runs:/ URI the store does not hold": (lambda t: [
        setenv("MLFLOW_TRACKING_URI", f"sqlite:///{mlflow_store(t)}") and "export", "runs:/0123abcd/encoder",
        "--format", "onnx", "--out", str(t / "e.onnx")], "no run with id '0123abcd'"),
    "encode from a models:/ URI on a garbage store": (lambda t: [
        setenv("MLFLOW_TRACKING_URI", f"sqlite:///{write_text(t, 'mlflow.db', b'x' * 4096)}") and "encode",
        "models:/bad-encoder@champion", in_npy(t), "--out", str(t / "c.npy")], "not a SQLite database"),
}

PATHS: dict[str, tuple[Build, str]] = {
    "cache_dir under /proc": (lambda t: ["run", write_config(t), "--set", "cache_dir=/proc/sae-cache"],
                              "cache_dir='/proc/sae-cache'"),
    "cache_dir is a file": (lambda t: ["run", write_config(t), "--set", f"cache_dir={write_text(t, 'f', 'x')}"],
                            "cannot be written"),
    "data.source a symlink loop": (lambda t: ["run", write_config(t), "--set", loop(t, "x.npy") and "data.source=x.npy"],
                                   "data.source=x.npy: is a symbolic link loop"),
    "config file a symlink loop": (lambda t: ["run", loop(t, "c.yaml")], "symbolic link loop"),
    "data.unlabeled_source missing": (lambda t: ["run", write_config(t, data=unlabeled(t, str(t / "absent.npy")))],
                                      "data.unlabeled_source='"),
    "data.unlabeled_source.1 a symlink loop": (lambda t: ["run", write_config(t, data=unlabeled(
        t, [str(in_npy(t)), loop(t, "u.npy")]))], "symbolic link loop"),
    "data.unlabeled_source a directory": (lambda t: ["run", write_config(t, data=unlabeled(t, folder_with(t, "u")))],
                                          "is a directory"),
}

SERVERS: dict[str, tuple[Build, str]] = {
    "tracking server unreachable": (lambda t: ["run", write_config(t), "--set", f"tracking_uri={UNREACHABLE}"],
                                    "is unreachable"),
    "encode from an unreachable server": (lambda t: ["encode", "models:/bad-encoder@champion",
                                                     save(t, "in.npy", rng_data((5, 4))), "--out", str(t / "c.npy")],
                                          "is unreachable"),
    "MLflow answers /health but hangs on its API": (lambda t: ["run", write_config(t), "--set",
                                                               f"tracking_uri={keep(health_only_server())}"],
                                                    "answers /health but not its API"),
    "PREFECT_API_URL never answers": (lambda t: [setenv("PREFECT_API_URL", f"http://127.0.0.1:{keep(silent_port())}"
                                                        "/api") and "run", write_config(t)], "no answer within 3 s"),
    "ui on a taken port": (lambda t: ["ui", "--port", str(keep(silent_port()))], "already in use"),
    "PREFECT_API_URL on a dead port": (lambda t: [setenv("PREFECT_API_URL", f"http://127.0.0.1:{dead_port()}/api")
                                                  and "run", write_config(t)], "Prefect API"),
}

SIZES: dict[str, tuple[Build, str]] = {
    "YAML alias bomb in data.features": (lambda t: ["run", alias_bomb(t)], "expands to more than 100,000 values"),
    "alias bomb in a --set value": (lambda t: ["run", write_config(t), "--set", f"data.features={alias_bomb_value()}"],
                                    "expands to more than 100,000 values"),
    "a 100,000-character data.source is echoed cut": (lambda t: ["run", write_config(t), "--set",
                                                                 "data.source=" + "x" * 100_000 + ".npy"],
                                                       "more characters)"),
    "config file of 50 MB": (lambda t: ["run", write_text(t, "big.yaml", "name: big\n" + "# padding\n" * 5_000_000)],
                             "over the 1,048,576-byte limit"),
    "config nested 100,000 deep": (lambda t: ["run", write_text(t, "deep.yaml", "name: " + deep_json(100_000))],
                                   "nested too deeply"),
    ".npz header declaring 8 GB": (lambda t: [available(4 * 2**30) and "run", write_config(t), "--set",
                                              f"data.source={npz_declaring(t, (100_000, 10_000))}"],
                                   "needs about"),
    ".npz header declaring 8 TB": (lambda t: ["run", write_config(t), "--set",
                                              f"data.source={npz_declaring(t, (100_000_000, 10_000))}"],
                                   "needs about"),
    "data.unlabeled_source .npz declaring 8 TB": (lambda t: ["run", write_config(t, data=unlabeled(
        t, npz_declaring(t, (100_000_000, 10_000))))], "needs about"),
    "hidden 200000 on 784 inputs": (lambda t: [available(4 * 2**30) and "run", write_config(t), "--set",
                                               f"data.source={save(t, 'mnist-like.npy', rng_data((100, 784)))}",
                                               "--set", "layers.0.hidden=200000"], "layers.0 (784 -> 200,000)"),
}

FAMILIES: dict[str, dict[str, tuple[Build, str]]] = {
    "config": CONFIG, "sizes": SIZES, "data": DATA, "paths": PATHS, "stores": STORES, "servers": SERVERS, "outputs": OUTPUTS,
    "models": MODELS,
}
CASES = {f"{family}: {name}": case for family, cases in FAMILIES.items() for name, case in cases.items()}


SCENE: dict[str, object] = {}  # the running case's ExitStack and monkeypatch, for builders that need them


def keep(context):
    """Enter ``context`` (a hostile server) for the rest of the case; returns what it yields."""
    return SCENE["stack"].enter_context(context)


def available(nbytes: int) -> bool:
    """The machine has ``nbytes`` of memory available for the rest of the case."""
    SCENE["monkeypatch"].setattr(limits, "available_bytes", lambda: nbytes)
    return True


def cores(n: int) -> bool:
    """The machine has ``n`` CPU cores for the rest of the case."""
    SCENE["monkeypatch"].setattr(os, "cpu_count", lambda: n)
    return True


def setenv(name: str, value: str) -> str:
    """Set an environment variable for the rest of the case; returns ``value``."""
    SCENE["monkeypatch"].setenv(name, value)
    return value


@pytest.fixture(scope="module", autouse=True)
def imported():
    """Pay the one-off imports (torch, sklearn, mlflow) up front, as a long-lived process would have."""
    import pipeline.data.loading  # noqa: F401
    import pipeline.tracking.store  # noqa: F401


def never_train(*args, **kwargs):
    raise AssertionError("a bad-input case reached training")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    # A case that slipped past the preflight must fail here, never train: with trainer.devices > 1, Lightning's
    # ddp would re-launch sys.argv (this pytest) once per device, and those children would do the same.
    import pytorch_lightning as pl

    monkeypatch.setattr(pl.Trainer, "fit", never_train)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", UNREACHABLE)  # only models:/ URIs and runs without one reach it
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "kept.txt").write_text("an earlier run's file")
    with ExitStack() as stack:
        SCENE.update(stack=stack, monkeypatch=monkeypatch)
        yield
        SCENE.clear()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line_and_leaves_every_file_as_it_was(case, tmp_path, capsys, monkeypatch):
    if "without a gpu" in case and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    build, expected = CASES[case]
    argv = build(tmp_path)
    capsys.readouterr()  # what building the case printed (MLflow creating a store)
    if "tracking_uri" not in " ".join(argv) and argv[0] == "run":
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
    before = snapshot(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert snapshot(tmp_path) == before  # nothing tracked, cached, written or lost


def test_export_with_force_overwrites_an_existing_output(tmp_path, capsys):
    directory = encoder_dir(tmp_path)
    out = tmp_path / "e.onnx"
    out.write_text("old")
    assert main(["export", str(directory), "--format", "onnx", "--out", str(out), "--force"]) == 0
    assert out.stat().st_size > 100 and out.read_bytes()[:3] != b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "e.onnx", "encoder"]  # nothing temporary left


def test_export_safetensors_with_force_replaces_an_earlier_export_folder(tmp_path, capsys):
    source = encoder_dir(tmp_path, "source", d_in=5)
    old = encoder_dir(tmp_path, "old")
    assert main(["export", str(source), "--format", "safetensors", "--out", str(old), "--force"]) == 0
    assert sorted(p.name for p in old.iterdir()) == ["config.json", "model.safetensors"]
    assert (old / "config.json").read_text() == (source / "config.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "old", "source"]


def test_a_failed_encode_with_force_keeps_the_existing_output(tmp_path, capsys):
    directory = encoder_dir(tmp_path)  # expects 4 features; the input has 3
    save(tmp_path, "in.npy", rng_data((5, 3)))
    out = tmp_path / "codes.npy"
    np.save(out, np.arange(3.0))
    assert main(["encode", str(directory), str(tmp_path / "in.npy"), "--out", str(out), "--force"]) == 2
    np.testing.assert_array_equal(np.load(out), np.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "codes.npy", "encoder", "in.npy"]


HEAVY = ("torch", "pytorch_lightning", "prefect", "mlflow", "sklearn", "pandas")
PROBE = """
import sys
from flows.cli import main
from pipeline.app import limits
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


@pytest.mark.parametrize(("damage", "message"), [
    (lambda c: c["scaling"].update(offset=float("nan")), "scaling.offset is nan"),
    (lambda c: c["layers"][0].update(d_hidden=5_000_000), "declares layers"),
    (lambda c: c.update(format="something-else"), "format 'something-else'"),
    (lambda c: c.pop("layers"), "config.json is unreadable"),
], ids=["NaN offset", "huge layer", "another format", "no layers"])
@pytest.mark.parametrize("command", ["encode", "export"])
def test_a_damaged_encoder_folder_is_named_before_anything_heavy_is_imported(command, damage, message, tmp_path):
    damage_config(tmp_path, damage)
    save(tmp_path, "in.npy", rng_data((5, 4)))
    argv = (["encode", "encoder", "in.npy", "--out", "c.npy"] if command == "encode"
            else ["export", "encoder", "--format", "onnx", "--out", "e.onnx"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=set(HEAVY)), *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "2 []", done.stdout + done.stderr
    assert message in done.stderr


@pytest.mark.parametrize(("settings", "message"), [
    (["data.source=one.npz", "data.labels=y"], "only class 3 has labeled rows"),
    (["trainer.accelerator=cpu", "trainer.devices=4096"], "trainer.devices=4096, but this machine has"),
    ([f"data.{k}" for k in ("source=labeled.npz", "labels=y", "unlabeled_source=nan.npy")], "NaN or infinite"),
    ([f"data.{k}" for k in ("source=labeled.npz", "labels=y", "unlabeled_source=[narrow.npy]")],
     "2 features but data.source='labeled.npz' has 4"),
], ids=["one class", "devices beyond the cores", "unlabeled file with a NaN", "unlabeled file of another width"])
def test_a_single_class_or_too_many_devices_is_named_before_anything_heavy_is_imported(settings, message, tmp_path):
    np.savez(tmp_path / "one.npz", X=rng_data((100, 4)), y=np.full(100, 3))
    unlabeled(tmp_path, "")  # labeled.npz
    with_nan(tmp_path)  # nan.npy: 3 features
    save(tmp_path, "narrow.npy", rng_data((10, 2)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI")  # the local store in the folder: the check itself must answer
    argv = ["run", *(arg for setting in settings for arg in ("--set", setting))]
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


def test_an_unreachable_tracking_server_fails_a_fresh_run_process_with_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": UNREACHABLE}
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and UNREACHABLE in done.stderr


def read_only_mount_works() -> bool:
    try:
        return subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


# Read-only folders (a bind mount made read-only in a private mount namespace: file modes do not stop root):
# folder to make read-only -> (--set overrides given the folder, text the one line must contain).
READ_ONLY: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "read-only mlflow.db": (lambda d: [f"tracking_uri=sqlite:///{mlflow_store(d)}"], "cannot be written"),
    "read-only cache_dir": (lambda d: [f"cache_dir={d}"], "cache_dir="),
}


@pytest.mark.skipif(not read_only_mount_works(), reason="needs unshare (a private mount namespace)")
@pytest.mark.parametrize("case", list(READ_ONLY))
def test_a_read_only_store_or_cache_exits_2_before_anything_starts(case, tmp_path):
    build, expected = READ_ONLY[case]
    folder = tmp_path / "ro"
    folder.mkdir()
    overrides = [arg for setting in build(folder) for arg in ("--set", setting)]
    config = write_config(tmp_path)
    before = snapshot(tmp_path)
    cli = " ".join(map(shlex.quote, [sys.executable, "-m", "flows.cli", "run", config, *overrides]))
    script = f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} && exec {cli}"
    done = subprocess.run(["unshare", "-Urm", "sh", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and expected in done.stderr, done.stderr
    assert snapshot(tmp_path) == before


# Signals during encode: (signal, output suffix, whether an older output is there to keep) -> exit status.
SIGNALS: dict[str, tuple[signal.Signals, str, bool]] = {
    "SIGINT while writing parquet": (signal.SIGINT, ".parquet", False),
    "SIGTERM while writing npy over an older output (--force)": (signal.SIGTERM, ".npy", True),
}


@pytest.mark.parametrize("case", list(SIGNALS))
def test_a_signal_during_encode_leaves_no_partial_output_and_nothing_temporary(case, tmp_path):
    signum, suffix, older = SIGNALS[case]
    directory = encoder_dir(tmp_path, d_in=64)
    np.save(tmp_path / "in.npy", rng_data((400_000, 64)).astype(np.float32))
    out = tmp_path / f"codes{suffix}"
    if older:
        out.write_bytes(b"an older output, to be kept")
    before = snapshot(tmp_path)
    argv = [sys.executable, "-m", "flows.cli", "encode", str(directory), str(tmp_path / "in.npy"), "--out", str(out),
            *(["--force"] if older else [])]
    child = subprocess.Popen(argv, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not list(tmp_path.glob(f".codes.*.partial{suffix}")) and child.poll() is None:
            pass  # the temporary output is being written: interrupt now
        child.send_signal(signum)
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 128 + signum, err
    assert err.strip().splitlines() == [f"interrupted ({signum.name}): nothing was written to --out {out}"]
    assert snapshot(tmp_path) == before  # the older output (if any) is intact; no partial, nothing temporary
