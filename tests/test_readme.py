"""The README is the front door: short, and every command, option, key and file it names is real."""

import re
from types import SimpleNamespace

from flows.cli import _add_flow_commands, run_summary
from pipeline.app.cli import build_parser
from pipeline.run.results import Registration, TrackedRun
from tests import ROOT

README = (ROOT / "README.md").read_text()


def subcommands() -> dict[str, set[str]]:
    """sae-pipeline's subcommands, each with its option strings."""
    parser = build_parser(extend=_add_flow_commands)
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return {name: {s for action in p._actions for s in action.option_strings} for name, p in sub.choices.items()}


def test_the_readme_is_short_and_starts_with_the_two_commands():
    lines = README.splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines: move reference material to docs/"
    commands = [line.split()[0:2] for line in lines if line.startswith("make ")]
    assert commands[:2] == [["make", "run"], ["make", "test"]]


def test_every_file_the_readme_names_exists():
    named = set(re.findall(r"(?<![\w/.-])((?:docs|examples|pipeline|tests|benchmarks|sae|flows)/[\w./-]*\w)", README))
    assert len(named) > 5, "the pattern found almost no paths: it is not reading the README"
    assert sorted(p for p in named if not (ROOT / p).exists()) == []


def test_every_command_and_option_the_readme_names_exists():
    commands = subcommands()
    used = re.findall(r"(?m)(?:^|`)sae-pipeline ([a-z]+)((?: [^\n`#|]*)?)", README)  # in code, not prose
    assert len(used) > 5
    for command, rest in used:
        assert command in commands, f"README names `sae-pipeline {command}`, which does not exist"
        unknown = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest)) - commands[command] - {"--help"}
        assert not unknown, f"README: `sae-pipeline {command}` has no option {sorted(unknown)}"


def test_every_make_target_the_readme_names_exists():
    targets = set(re.findall(r"(?m)^([a-z][\w-]*):", (ROOT / "Makefile").read_text()))
    named = set(re.findall(r"`make ([a-z][\w-]*)", README)) | set(re.findall(r"(?m)^make ([a-z][\w-]*)", README))
    assert named and named <= targets, sorted(named - targets)


def test_the_run_json_keys_are_the_ones_the_readme_lists():
    listed = re.search(r"`run --json` prints one JSON object \(([^)]*)\)", README)
    assert listed, "README no longer describes run --json"
    registration = Registration("m", "1", "champion", "models:/m@champion", "models:/m/1", "first")
    tracked = TrackedRun("r", "0", "sqlite:///mlflow.db", model_uri="models:/m@champion", registration=registration)
    summary = run_summary(SimpleNamespace(tracked=tracked, metrics=lambda: {"seconds": 1.0}))
    assert set(re.findall(r"`(\w+)`", listed.group(1))) == set(summary)
