"""A PROVIDERS_FILE over two mock providers, for the tests and the benchmark of routing: the
model ``mock-r1`` routed to provider ``a``, then to ``b`` (shared/providers.py reads it)."""

from __future__ import annotations

from pathlib import Path


def two_providers_file(folder: Path, a: str, b: str, *, max_concurrency: int = 0) -> Path:
    """Write ``folder/providers.toml``: providers ``a`` and ``b`` at the base URLs ``a`` and
    ``b`` (their ``/v1``), each declaring ``max_concurrency`` unless it is 0 (then the governor
    learns the limit), and the model ``mock-r1`` routed to a, then b."""
    limit = f"max_concurrency = {max_concurrency}\n" if max_concurrency else ""
    path = folder / "providers.toml"
    path.write_text(f"""
[[provider]]
name = "a"
base_url = "{a}"
{limit}
[[provider]]
name = "b"
base_url = "{b}"
{limit}
[[model]]
name = "mock-r1"
routes = [{{ provider = "a", model = "mock-r1" }}, {{ provider = "b", model = "mock-r1" }}]
""")
    return path
