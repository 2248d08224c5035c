"""How fast does ``sae-pipeline`` answer when there is nothing to do but say no?

Times (median of --repeat runs, wall clock, each a fresh process) for --help and config commands, then one
error of each kind a user meets: config, data (caught from the path or a file's header, and one that reads the
file), tracking URI (scheme, sqlite store, database driver, an unreachable server), model URI (a folder missing or
damaged, a models:/ URI against a missing store, an unreachable server) and --out (the working directory, a bad
suffix, the input itself). Each row names its bar: 1.5 s where the answer needs no data read, 3 s where it reads
the data file. Beside them, in the same run: a bare interpreter, and importing torch + Lightning + Prefect +
MLflow (what every answer used to cost before the CLI imported them lazily), as a ratio.

    .venv/bin/python benchmarks/cli_latency.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
UNREACHABLE = "http://127.0.0.1:9"
NO_READ, READS = 1.5, 3.0  # seconds: the bar for an answer without reading data, and for one that reads it


def fixtures(tmp: Path) -> dict[str, Path]:
    """The files the commands below point at: data with a NaN, an encoder folder, a garbage store, a folder."""
    nan = tmp / "nan.npy"
    X = np.random.default_rng(0).random((500, 8))
    X[3, 2] = np.nan
    np.save(nan, X)
    good = tmp / "in.npy"
    np.save(good, np.random.default_rng(0).random((50, 8)).astype(np.float32))
    (tmp / "labels.csv").write_text("a,b,y\n1,2,0\n3,4,1\n")
    (tmp / "garbage.db").write_bytes(os.urandom(4096))
    (tmp / "store").mkdir()
    encoder = tmp / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text("{}")
    (encoder / "model.safetensors").write_bytes(b"\0" * 8)
    return {"nan": nan, "in": good, "encoder": encoder}


def commands(tmp: Path) -> dict[str, tuple[list[str], dict[str, str], float | None]]:
    """name -> (argv, extra environment, bar in seconds or None)."""
    f = fixtures(tmp)
    cli = [sys.executable, "-m", "flows.cli"]
    run = [*cli, "run", "--set"]
    encode = [*cli, "encode", str(f["encoder"]), str(f["in"]), "--out"]
    return {
        "bare interpreter": ([sys.executable, "-c", "pass"], {}, None),
        "import torch+lightning+prefect+mlflow": (
            [sys.executable, "-c", "import torch, pytorch_lightning, prefect, mlflow"], {}, None),
        "--help": ([*cli, "--help"], {}, NO_READ),
        "config validate (valid)": ([*cli, "config", "validate"], {}, NO_READ),
        "config error": ([*run, "layers.0.hidden=abc"], {}, NO_READ),
        "data: missing file": ([*run, f"data.source={tmp / 'absent.npy'}"], {}, NO_READ),
        "data: column not in the csv header": ([*run, f"data.source={tmp / 'labels.csv'}", "--set",
                                                "data.labels=label"], {}, NO_READ),
        "data: NaN (reads the file)": ([*run, f"data.source={f['nan']}"], {}, READS),
        "tracking URI: ftp://": ([*run, "tracking_uri=ftp://x"], {}, NO_READ),
        "tracking URI: sqlite path is a directory": ([*run, f"tracking_uri=sqlite:///{tmp / 'store'}"], {}, NO_READ),
        "tracking URI: garbage mlflow.db": ([*run, f"tracking_uri=sqlite:///{tmp / 'garbage.db'}"], {}, NO_READ),
        "tracking URI: postgresql without driver": ([*run, "tracking_uri=postgresql://u:p@127.0.0.1/m"], {}, NO_READ),
        "tracking URI: server unreachable (run)": ([*cli, "run"], {"MLFLOW_TRACKING_URI": UNREACHABLE}, NO_READ),
        "model URI: folder missing": ([*cli, "encode", str(tmp / "absent"), str(f["in"]), "--out",
                                       str(tmp / "c.npy")], {}, NO_READ),
        "model: a damaged encoder folder (its config.json)": ([*encode, str(tmp / "c.npy")], {}, NO_READ),
        "model URI: models:/ on a store that does not exist": (
            [*cli, "encode", "models:/x@champion", str(f["in"]), "--out", str(tmp / "c.npy")],
            {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'absent.db'}"}, NO_READ),
        "model URI: models:/ on an unreachable server": (
            [*cli, "encode", "models:/x@champion", str(f["in"]), "--out", str(tmp / "c.npy")],
            {"MLFLOW_TRACKING_URI": UNREACHABLE}, NO_READ),
        "--out: the working directory": ([*encode, ".", "--force"], {}, NO_READ),
        "--out: bad suffix (before the model loads)": ([*encode, str(tmp / "c.txt")], {}, NO_READ),
        "--out: the input itself": ([*encode, str(f["in"]), "--force"], {}, NO_READ),
    }


def time_once(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of the child, exit status); CPU time hardly depends on how busy the machine is."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sae-cli-latency-") as tmp:
        rows = []
        for name, (argv, env, bar) in commands(Path(tmp)).items():
            runs = [time_once(argv, {"MLFLOW_TRACKING_URI": "", **env}, Path(tmp)) for _ in range(args.repeat)]
            rows.append((name, statistics.median(w for w, _, _ in runs), statistics.median(c for _, c, _ in runs),
                         runs[-1][2], bar))
    heavy = {n: w for n, w, _, _, _ in rows}["import torch+lightning+prefect+mlflow"]
    print(f"{'command':52s} {'wall s':>7s} {'cpu s':>6s} {'exit':>5s} {'vs heavy import':>16s}  bar (wall)")
    for name, wall, cpu, code, bar in rows:
        verdict = "" if bar is None else f"<= {bar:g} s: {'met' if wall <= bar else 'NOT met'}"
        print(f"{name:52s} {wall:7.2f} {cpu:6.2f} {code:5d} {wall / heavy:15.2f}x  {verdict}")
    print(f"(medians of {args.repeat}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
