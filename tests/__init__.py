"""The test suite; ROOT is the repository (tests run from any working directory)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
