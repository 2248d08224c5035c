"""Benchmarks are not run by the suite (they time things), but each must import and parse its arguments:
a renamed function once broke benchmarks/quality.py without any test noticing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests import ROOT

SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))
BENCHMARKS = [p for p in SCRIPTS if "\ndef main(" in p.read_text()]  # the others are modules scripts import


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.stem)
def test_benchmark_imports_and_answers_help(path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    monkeypatch.syspath_prepend(str(path.parent))  # as when run as a script: its own folder comes first
    spec.loader.exec_module(module)  # every import the script needs resolves
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_every_benchmark_is_checked() -> None:
    assert {p.stem for p in BENCHMARKS} >= {"quality", "throughput", "probes", "pipeline_overhead", "tune",
                                           "run_floor", "label_efficiency", "cli_latency"}
    assert {p.stem for p in SCRIPTS} - {p.stem for p in BENCHMARKS} == {"phase_timers"}  # run_floor's timers
