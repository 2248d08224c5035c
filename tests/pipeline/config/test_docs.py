"""docs/configuration.md's config block is generated from the schema: a stale block, or an undocumented field, fails here."""

import subprocess
import sys

import yaml

from pipeline.config import PipelineConfig, load_default_config
from pipeline.config.docs import DOC, annotated_yaml, config_block, current_block, main
from tests import ROOT

REGENERATE = "regenerate it with `make config-docs` (or `PYTHONPATH=. .venv/bin/python -m pipeline.config.docs`) and commit"


def test_the_documented_config_block_is_the_generated_one():
    assert current_block(DOC.read_text()) == config_block(), f"docs/configuration.md's config block is stale: {REGENERATE}"


def test_the_annotated_yaml_reads_back_as_the_same_config():
    config = load_default_config()
    assert PipelineConfig.from_dict(yaml.safe_load(annotated_yaml(config))) == config


def test_every_field_is_described_and_a_value_off_its_default_names_the_default():
    text = annotated_yaml(load_default_config(overrides=["defaults.beta=5.0", "data.test_fraction=0.25"]))
    lines = text.splitlines()
    beta = lines.index("  beta: 5.0")
    assert lines[beta - 1] == "  # Weight of the sparsity term (kl and l1). Schema default: 3.0."
    fraction = next(i for i, line in enumerate(lines) if line == "  test_fraction: 0.25")
    assert lines[fraction - 1].endswith("Schema default: 0.2.")
    assert "# Target mean activation rho for kl, strictly inside (0, 1).\n  target: 0.1\n" in text  # at default
    start = lines.index("layers:")  # layer items show only what they set; their fields are described above them
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith(" "))
    outside = lines[:start + 1] + lines[end:]
    undescribed = [line for before, line in zip(["#", *outside], outside, strict=False)
                   if not line.lstrip().startswith("#") and not before.lstrip().startswith("#")]
    assert undescribed == []


def test_the_cli_prints_the_annotated_config_and_the_check_reports_a_stale_block(tmp_path, capsys):
    done = subprocess.run([sys.executable, "-m", "flows.cli", "config", "show", "--annotated"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert done.returncode == 0 and done.stdout == annotated_yaml(load_default_config()), done.stderr
    stale = tmp_path / "configuration.md"
    stale.write_text(f"intro\n{config_block().replace('seed: 0', 'seed: 1')}\noutro\n")
    assert main(["--check", "--doc", str(stale)]) == 1 and "stale" in capsys.readouterr().out
    assert main(["--doc", str(stale)]) == 0 and stale.read_text() == f"intro\n{config_block()}\noutro\n"
