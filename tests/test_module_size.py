"""Small files with one job: past 300 lines a module is asking to be split (the house style)."""

import pytest

from tests import ROOT

LIMIT = 300


@pytest.mark.parametrize("package", ["sae", "pipeline", "flows"])
def test_no_module_is_over_300_lines(package):
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in (ROOT / package).rglob("*.py")}
    assert len(sizes) > 5, "the walk found almost no modules: it is not looking at the code"
    assert {name: n for name, n in sizes.items() if n > LIMIT} == {}
