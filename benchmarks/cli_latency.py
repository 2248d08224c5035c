"""How fast does ``sae-pipeline`` answer when there is nothing to do but say no?

Times (median of --repeat runs, wall clock, each a fresh process) for --help, config commands, a config
error, data errors (one caught from the path alone, one that reads the file) and an unreachable tracking
server (run and encode). Bars: --help and a config error <= 1.5 s; the unreachable server <= 10 s.
Beside them, in the same run: a bare interpreter, and importing torch + Lightning + Prefect + MLflow (what
every answer used to cost before the CLI imported them lazily).

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
BARS = {"--help": 1.5, "config error": 1.5, "unreachable server (run)": 10.0, "unreachable server (encode)": 10.0}


def commands(tmp: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    nan = tmp / "nan.npy"
    X = np.random.default_rng(0).random((500, 8))
    X[3, 2] = np.nan
    np.save(nan, X)
    cli = [sys.executable, "-m", "flows.cli"]
    return {
        "bare interpreter": ([sys.executable, "-c", "pass"], {}),
        "import torch+lightning+prefect+mlflow": (
            [sys.executable, "-c", "import torch, pytorch_lightning, prefect, mlflow"], {}),
        "--help": ([*cli, "--help"], {}),
        "config validate (valid)": ([*cli, "config", "validate"], {}),
        "config error": ([*cli, "run", "--set", "layers.0.hidden=abc"], {}),
        "data error (missing file)": ([*cli, "run", "--set", f"data.source={tmp / 'absent.npy'}"], {}),
        "data error (NaN, file read)": ([*cli, "run", "--set", f"data.source={nan}"], {}),
        "unreachable server (run)": ([*cli, "run"], {"MLFLOW_TRACKING_URI": UNREACHABLE}),
        "unreachable server (encode)": ([*cli, "encode", "models:/x@champion", str(nan), "--out", str(tmp / "c.npy")],
                                        {"MLFLOW_TRACKING_URI": UNREACHABLE}),
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
        for name, (argv, env) in commands(Path(tmp)).items():
            runs = [time_once(argv, env, Path(tmp)) for _ in range(args.repeat)]
            rows.append((name, statistics.median(w for w, _, _ in runs), statistics.median(c for _, c, _ in runs),
                         runs[-1][2]))
    heavy = {n: w for n, w, _, _ in rows}["import torch+lightning+prefect+mlflow"]
    print(f"{'command':40s} {'wall s':>7s} {'cpu s':>6s} {'exit':>5s} {'wall vs heavy import':>21s}  bar (wall)")
    for name, wall, cpu, code in rows:
        bar = BARS.get(name)
        verdict = "" if bar is None else f"<= {bar:g} s: {'met' if wall <= bar else 'NOT met'}"
        print(f"{name:40s} {wall:7.2f} {cpu:6.2f} {code:5d} {wall / heavy:20.2f}x  {verdict}")
    print(f"(medians of {args.repeat}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
