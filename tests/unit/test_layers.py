"""``pytest -m <layer>`` selects the tests of that folder, and only those (``make test-fast``
relies on it to leave out the e2e and chaos suites)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# One module of each layer is enough to see what a marker expression keeps; collecting them
# starts no process. Plugins stay unloaded: they mark nothing.
SAMPLE = ["tests/unit/test_sse.py", "tests/integration/test_openapi_doc.py",
          "tests/e2e/test_cancel.py", "tests/chaos/test_drain.py"]


def collected(pytester: pytest.Pytester, expression: str) -> set[str]:
    """The folders of the tests that ``pytest -m expression`` collects from SAMPLE: a whole
    pytest session (its own config, our conftest.py files, pytest's own -m) run in this
    process, which has imported the modules already, so it takes a fraction of a second."""
    recorder = pytester.inline_run(
        "--collect-only", "-q", "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"),
        "-p", "no:cacheprovider", "-m", expression, *(str(ROOT / s) for s in SAMPLE))
    assert recorder.ret == pytest.ExitCode.OK, recorder.ret
    [finish] = recorder.getcalls("pytest_collection_finish")
    return {item.path.relative_to(ROOT).parts[1] for item in finish.session.items}


@pytest.mark.parametrize(("expression", "folders"), [
    ("chaos", {"chaos"}), ("e2e", {"e2e"}), ("unit or integration", {"unit", "integration"}),
    ("not e2e and not chaos", {"unit", "integration"}),  # make test-fast
])
def test_a_marker_expression_selects_the_folders_it_names(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, expression: str,
        folders: set[str]) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert collected(pytester, expression) == folders
