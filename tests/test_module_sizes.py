"""Proves no module of the product, the harness, the specs or the benchmarks exceeds 500 lines: one person can hold one module in mind."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bft", "harness", "specs", "bench")
MODULE_LINES_MAX = 500


@pytest.mark.parametrize("module", sorted(str(path.relative_to(ROOT)) for package in PACKAGES
                                          for path in (ROOT / package).rglob("*.py")))
def test_no_module_exceeds_the_size_limit(module):
    assert len((ROOT / module).read_text().splitlines()) <= MODULE_LINES_MAX
