"""The house by role: the edge's modules sit in role packages, webhooks belong to the edge, and
``shared/`` holds only what two or more services use (directly, or through another module of
``shared/``)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EDGE_TOP = {"__init__", "__main__", "app", "context", "openapi", "settings"}
EDGE_ROLES = {"openai", "ops", "plumbing", "tasks", "webhooks"}


def _imports(path: Path) -> set[str]:
    """Every module a file imports, and for ``from x import y`` also ``x.y``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def _shared_of(modules: set[str]) -> set[str]:
    return {m.split(".")[1] for m in modules if m.startswith("shared.") and m.count(".") >= 1}


def shared_users() -> dict[str, set[str]]:
    """For each module of shared/, the services that use it, directly or through others."""
    shared = {p.stem for p in (ROOT / "shared").glob("*.py") if p.stem != "__init__"}
    inner = {name: _shared_of(_imports(ROOT / "shared" / f"{name}.py")) & shared
             for name in shared}
    users: dict[str, set[str]] = defaultdict(set)
    for path in (ROOT / "services").rglob("*.py"):
        service = path.relative_to(ROOT / "services").parts[0]
        todo = list(_shared_of(_imports(path)) & shared)
        seen: set[str] = set()
        while todo:  # what it imports, and what those import in turn
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo += inner[name]
        for name in seen:
            users[name].add(service)
    return {name: users[name] for name in shared}


def test_every_module_of_shared_serves_two_services_or_more() -> None:
    lonely = {name: sorted(s) for name, s in shared_users().items() if len(s) < 2}
    assert lonely == {}


def test_the_edge_is_packaged_by_role() -> None:
    edge = ROOT / "services" / "edge"
    modules = {p.stem for p in edge.glob("*.py")}
    packages = {p.name for p in edge.iterdir() if (p / "__init__.py").exists()}
    assert modules == EDGE_TOP
    assert packages == EDGE_ROLES
    assert not (ROOT / "services" / "webhooks").exists()  # the edge's: services/edge/webhooks
