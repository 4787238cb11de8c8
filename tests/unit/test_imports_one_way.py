"""The tests may import the benchmarks (to test them) and the process harness; neither
``bench/`` nor ``harness/`` may import the tests, so no import cycle can come back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (a function's import too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package", ["bench", "harness"])
def test_a_lower_layer_never_imports_the_tests(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python file under {package}/"
    wrong = {str(f.relative_to(ROOT)): sorted(m for m in imported_modules(f)
                                             if m == "tests" or m.startswith("tests."))
             for f in files}
    assert {f: m for f, m in wrong.items() if m} == {}
