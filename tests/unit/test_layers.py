"""``pytest -m <layer>`` selects the tests of that folder, and only those (``make test-fast``
relies on it to leave out the e2e and chaos suites)."""

from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.mark.parametrize(("expression", "folders"), [
    ("chaos", {"chaos"}), ("e2e", {"e2e"}), ("unit or integration", {"unit", "integration"}),
    ("not e2e and not chaos", {"unit", "integration"}),  # make test-fast
])
def test_a_marker_expression_selects_the_folders_it_names(expression: str,
                                                          folders: set[str]) -> None:
    assert collected(expression) == folders
