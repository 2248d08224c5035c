"""What does a run cost when it trains almost nothing, next to the floor of any torch program?

In one sitting, side by side (rounds interleave the cases, so a load on the machine hits them alike), each a
fresh process timed from the outside:

- ``python -c "import torch"``: the floor;
- a trivial run (one 16-unit layer, one epoch, on digits; one fine-tuning epoch) with ``--fresh``: with
  Prefect's temporary server and a local sqlite store, and against running servers (started here by
  ``sae-pipeline servers start``'s own code, on free ports): handed to its warm runner (``flows.warm``: the
  code imported once, a forked copy per command) as a user who exported its variables gets, and in its own
  process (``SAE_RUNNER`` unset);
- the digits ``make run`` config (2 layers x 60 epochs, 50 fine-tuning epochs) on an empty cache, against the
  sum of its layer and fine-tuning epochs (time inside Lightning's epoch loop) plus the floor, with the
  temporary server and handed to the warm runner (its epochs: those the same run measured in its own process);
- the same config again, every layer and the fine-tuning cached (a version that still fine-tunes, ``--before``
  one, gets its fine-tuning epochs printed beside it), with the temporary server and handed to the warm runner
  of the running servers;
- and beside them two floors that are the libraries' own: importing torch, Lightning, Prefect and MLflow's
  pyfunc (what a run that trains and logs a model cannot avoid), and Prefect's temporary server started and
  stopped on its own.

Targets: trivial run <= 4x the floor with running servers, <= 5x with the temporary server; the cached
re-run <= 3x; the digits run <= 1.5x (its epochs + the floor). Then one trivial run of each kind again (each in
its own process: what the warm runner's copy skips is the imports), broken down by phase, on the main thread
and off it: imports by package, the Prefect server start and the wait for it,
Prefect's flow and task glue, MLflow runs and logging, model logging and its checks, registry, plots, probes.
Timers wrap the functions that do each part (exclusive: a part nested in another counts once, in the inner
one); an import counts under the outermost library import that pulled it in (what ``import pytorch_lightning``
loads, torchmetrics and SciPy among it, is Lightning's), wherever it happens; Python's garbage collections
count apart; what no timer covers is "the rest".

    .venv/bin/python benchmarks/run_floor.py [--quick] [--rounds N] [--no-phases] [--before CHECKOUT]

``--quick`` (one round, under ~3 minutes on a quiet machine) is what to run after a change.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from phase_timers import EPOCH_PART, child  # this script's folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
TRIVIAL = """\
name: trivial
seed: 0
data:
  source: digits
defaults:
  epochs: 1
trainer:
  accelerator: cpu
layers:
  - hidden: 16
finetune:
  epochs: 1
"""
ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
       "DO_NOT_TRACK": "1", "MLFLOW_ENABLE_TELEMETRY": "false", "OMP_WAIT_POLICY": "PASSIVE",
       "PYTHONPATH": str(ROOT)}  # as the Makefile sets them; this checkout's code
WARM = "running servers, warm runner"
OWN = "running servers, own process"
CACHED = "digits make run, layers and fine-tuning cached"
TARGETS = {f"trivial run, {WARM}": 4.0, f"trivial run, {OWN}": 4.0, "trivial run, temporary server": 5.0,
           CACHED: 3.0, f"{CACHED}, {WARM}": 3.0}
EPOCHS_TARGET = 1.5  # digits make run <= 1.5 x (its epochs + the floor)
FLOOR = "import torch (the floor)"
LIBRARIES = "import torch, Lightning, Prefect, MLflow (libraries' floor)"
SERVER = "Prefect's temporary server: start and stop (its floor)"
SERVER_ALONE = "from prefect.server.api.server import SubprocessASGIServer as S; s = S(); s.start(); s.stop()"


# -- the parent: the cases, side by side ----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Bench:
    """A temporary work folder, the environment of each case, and what each timed run measured."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        (tmp / "trivial.yaml").write_text(TRIVIAL)
        base = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
        self.local = base | ENV | {"PREFECT_HOME": str(tmp / "prefect-home"),
                                   "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
        self.servers: dict[str, str] | None = None
        self.walls: dict[str, list[float]] = defaultdict(list)
        self.epochs: dict[str, list[float]] = defaultdict(list)  # make-run case -> its epochs' seconds

    def start_servers(self) -> None:
        sys.path.insert(0, str(ROOT))
        os.environ["PYTHONPATH"] = str(ROOT)  # the warm runner it starts runs this checkout's code
        from pipeline.app import servers

        self.servers = servers.start(self.tmp / "servers", free_port(), free_port(), quiet=True)

    def stop_servers(self) -> None:
        if self.servers is not None:
            from pipeline.app import servers

            servers.stop(self.tmp / "servers")

    def cases(self, before: Path | None = None) -> dict[str, tuple[list[str], dict[str, str]]]:
        """Every case by name; with ``before``, each run also with that checkout's code ("... (before)")."""
        python = [sys.executable, "-c"]
        out = {
            FLOOR: ([*python, "import torch"], self.local),
            LIBRARIES: ([*python, "import torch, pytorch_lightning, prefect, mlflow.pyfunc"], self.local),
            SERVER: ([*python, SERVER_ALONE], self.local),
        }
        for name, (command, env) in self.runs().items():
            out[name] = (command, env)
            if before is not None and not name.endswith(OWN):  # before, the running servers had no runner
                out[f"{name} (before)"] = (command, env | {"PYTHONPATH": str(before),
                                                           "PREFECT_HOME": f"{env['PREFECT_HOME']}-before"})
        return out

    def runs(self) -> dict[str, tuple[list[str], dict[str, str]]]:
        trivial = ["run", str(self.tmp / "trivial.yaml"), "--fresh"]
        out = {"trivial run, temporary server": (self._child(trivial), self.local)}
        if self.servers is not None:
            out[f"trivial run, {WARM}"] = (self._child(trivial), {**self.local, **self.servers})
            out[f"trivial run, {OWN}"] = (self._child(trivial), self.own_process())
        out["digits make run, empty cache"] = (self._child(["run", "--fresh"]), self.local)
        out[CACHED] = (self._child(["run"]), self.local)
        if self.servers is not None:
            warm = {**self.local, **self.servers}
            out[f"digits make run, empty cache, {WARM}"] = (self._child(["run", "--fresh"]), warm)
            out[f"{CACHED}, {WARM}"] = (self._child(["run"]), warm)
        return out

    def own_process(self) -> dict[str, str]:
        """The running servers' environment without the warm runner: the command runs in its own process."""
        return {k: v for k, v in {**self.local, **(self.servers or {})}.items() if k != "SAE_RUNNER"}

    def _child(self, command: list[str], phases: bool = False) -> list[str]:
        report = self.tmp / "report.json"
        return [sys.executable, str(Path(__file__).resolve()), "--child", str(report),
                *(["--phases"] if phases else []), "--", *command]

    def time(self, name: str, command: list[str], env: dict[str, str]) -> dict[str, Any]:
        report = self.tmp / "report.json"
        report.unlink(missing_ok=True)
        report.with_suffix(".exit").unlink(missing_ok=True)
        start = time.perf_counter()
        done = subprocess.run(command, env=env, cwd=self.tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, check=False)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        self.walls[name].append(wall)
        measured = json.loads(report.read_text()) if report.exists() else {}
        measured["outside"] = wall
        if report.with_suffix(".exit").exists():
            measured["exit"] = float(report.with_suffix(".exit").read_text()) - measured["wall"]
        return measured

    def phases(self, name: str, env: dict[str, str]) -> dict[str, Any]:
        command = self._child(["run", str(self.tmp / "trivial.yaml"), "--fresh"], phases=True)
        return self.time(f"{name} (timed by phase)", command, env)

    def breakdowns(self, before: Path | None) -> list[tuple[str, dict[str, Any]]]:
        """(title, what was measured) of a trivial run by phase, per server kind (and before)."""
        out = []
        kinds = [("temporary server", {})] + ([(OWN, self.own_process())] if self.servers else [])
        trees = [("", {})] + ([(" (before)", {"PYTHONPATH": str(before),
                                              "PREFECT_HOME": f"{self.local['PREFECT_HOME']}-before"})]
                              if before else [])
        for kind, servers in kinds:
            for label, code in trees:
                env = self.local | servers | code
                out.append((f"trivial run, {kind}{label}", self.phases(f"{kind}{label}", env)))
        return out


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def verdict(ok: bool, ratio: float, target: float) -> str:
    return f"met ({ratio:.2f}x <= {target}x)" if ok else f"MISSED ({ratio:.2f}x > {target}x, by {ratio - target:.2f}x)"


def print_ratios(bench: Bench, load: tuple[float, float]) -> None:
    floor = median(bench.walls[FLOOR])
    print(f"\nload average {load[0]:.1f} at the start, {load[1]:.1f} at the end, on {os.cpu_count()} CPUs; "
          f"median of {len(bench.walls[FLOOR])} round(s), each case a fresh process")
    print("| case | wall s (each) | median s | x floor | target |")
    print("|---|---|---|---|---|")
    for name, walls in bench.walls.items():
        if "timed by phase" in name:
            continue
        ratio = median(walls) / floor
        target = TARGETS.get(name.removesuffix(" (before)"))
        aim = verdict(ratio <= target, ratio, target) if target else ""
        # a command handed to the warm runner ran its epochs in the copy: those of the same run in its process
        epochs = median(bench.epochs.get(name) or bench.epochs.get(name.replace(f", {WARM}", ""), []))
        if target and epochs == epochs:  # a cached run that still fine-tunes: say what its epochs take
            aim += f"; its fine-tuning epochs {epochs:.1f} s, the rest {(median(walls) - epochs) / floor:.2f}x"
        elif epochs == epochs:
            bound = median(walls) / (epochs + floor)
            aim = (f"{bound:.2f}x (its epochs {epochs:.1f} s + the floor): "
                   + verdict(bound <= EPOCHS_TARGET, bound, EPOCHS_TARGET))
        print(f"| {name} | {', '.join(f'{w:.1f}' for w in walls)} | {median(walls):.1f} | {ratio:.2f} | {aim} |")


def print_phases(title: str, measured: dict[str, Any]) -> None:
    parts = measured["parts"]
    main = dict(parts.get("main", {}))
    wall, outside = measured["wall"], measured["outside"]
    main["at exit (atexit: Prefect's server stop, workers' flush)"] = measured.get("exit", 0.0)
    main["Python start-up and shutdown"] = outside - wall - measured.get("exit", 0.0)
    imports = sum(v for k, v in main.items() if k.startswith("import "))
    print(f"\n{title}: {outside:.1f} s wall; imports on the main thread {imports:.1f} s")
    if measured.get("not timed"):
        print(f"(not timed, not found in this code: {', '.join(measured['not timed'])})")
    print("| main thread: part | s | share |")
    print("|---|---|---|")
    for part, seconds in sorted(main.items(), key=lambda kv: -kv[1]):
        if seconds >= 0.02:
            print(f"| {part} | {seconds:.2f} | {seconds / outside:.0%} |")
    others = {t: p for t, p in parts.items() if t != "main" and sum(p.values()) >= 0.05}
    if others:
        print("\noff the main thread (overlapping the above): " + "; ".join(
            f"{thread}: " + ", ".join(f"{part} {s:.2f}" for part, s in sorted(p.items(), key=lambda kv: -kv[1])
                                      if s >= 0.02) for thread, p in others.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round (default: --rounds)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every case (default 3)")
    parser.add_argument("--no-phases", action="store_true", help="skip the by-phase breakdown")
    parser.add_argument("--no-servers", action="store_true", help="skip the running-servers case")
    parser.add_argument("--before", type=Path, metavar="CHECKOUT",
                        help="also run every case with another checkout's code (e.g. the main branch), side by side")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--phases", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("command", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return child(args.child, args.phases, args.command)
    rounds = 1 if args.quick else max(args.rounds, 0)  # 0: the breakdown alone
    with tempfile.TemporaryDirectory(prefix="sae-run-floor-") as tmp:
        bench = Bench(Path(tmp))
        try:
            load_start = os.getloadavg()[0]
            if not args.no_servers:
                bench.start_servers()
            cases = bench.cases(args.before)
            # Warm-up, not counted: the Prefect home's database, the MLflow store and servers, the file cache.
            for name in [n for n in cases if n.startswith("trivial run")]:
                bench.time("warm-up", *cases[name])
            bench.walls.pop("warm-up", None)
            for _ in range(rounds):
                for name, (command, env) in cases.items():
                    measured = bench.time(name, command, env)
                    if name.startswith("digits make run"):
                        epochs = sum(p.get(EPOCH_PART, 0.0) for p in measured.get("parts", {}).values())
                        if epochs > 0:  # not seen in a command handed to the warm runner
                            bench.epochs[name].append(epochs)
            breakdowns = [] if args.no_phases else bench.breakdowns(args.before)
            if rounds:
                print_ratios(bench, (load_start, os.getloadavg()[0]))
            for title, measured in breakdowns:
                print_phases(f"{title}, by phase", measured)
        finally:
            bench.stop_servers()
    return 0


if __name__ == "__main__":
    sys.exit(main())
