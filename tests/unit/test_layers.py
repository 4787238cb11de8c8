"""``pytest -m <layer>`` selects the tests of that folder, and only those (``make test-fast``
relies on it to leave out the e2e and chaos suites)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# One module of each layer is enough to see what a marker expression keeps; collecting them
# starts no process. Plugins stay unloaded: they take seconds to import and mark nothing.
SAMPLE = ["tests/unit/test_sse.py", "tests/integration/test_openapi_doc.py",
          "tests/e2e/test_cancel.py", "tests/chaos/test_drain.py"]


def collected(expression: str) -> set[str]:
    """The folders of the tests that ``pytest -m expression`` collects from SAMPLE."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p",
                          "no:cacheprovider", "-m", expression, *SAMPLE], cwd=ROOT,
                         env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
                         capture_output=True, text=True, timeout=120)
    ids = [line for line in out.stdout.splitlines() if "::" in line]
    assert out.returncode == 0, out.stdout + out.stderr
    return {line.split("/")[1] for line in ids}


EXPECTED = {"chaos": {"chaos"}, "e2e": {"e2e"}, "unit or integration": {"unit", "integration"},
            "not e2e and not chaos": {"unit", "integration"}}  # the last: make test-fast


@pytest.fixture(scope="module")
def selections() -> dict[str, set[str]]:
    """What each expression collects, the four runs at once: each is mostly pytest starting."""
    with ThreadPoolExecutor(len(EXPECTED)) as pool:
        return dict(zip(EXPECTED, pool.map(collected, EXPECTED), strict=True))


@pytest.mark.parametrize(("expression", "folders"), EXPECTED.items())
def test_a_marker_expression_selects_the_folders_it_names(
        selections: dict[str, set[str]], expression: str, folders: set[str]) -> None:
    assert selections[expression] == folders
