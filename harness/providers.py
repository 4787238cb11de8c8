"""A PROVIDERS_FILE over two mock providers, for the tests and the benchmark of routing: the
model ``mock-r1`` routed to provider ``a``, then to ``b`` (shared/providers.py reads it)."""

from __future__ import annotations

from pathlib import Path


def two_providers_file(folder: Path, a: str, b: str, *, max_concurrency: int = 0,
                       names: tuple[str, str] = ("a", "b"),
                       models: tuple[str, str] = ("mock-r1", "mock-r1")) -> Path:
    """Write ``folder/providers.toml``: two providers (``names``, by default a and b) at the
    base URLs ``a`` and ``b`` (their ``/v1``), each declaring ``max_concurrency`` unless it is 0
    (then the governor learns the limit), and the model ``mock-r1`` routed to the first, then
    the second, asking each for its entry of ``models``."""
    limit = f"max_concurrency = {max_concurrency}\n" if max_concurrency else ""
    (first, second), (first_model, second_model) = names, models
    path = folder / "providers.toml"
    path.write_text(f"""
[[provider]]
name = "{first}"
base_url = "{a}"
{limit}
[[provider]]
name = "{second}"
base_url = "{b}"
{limit}
[[model]]
name = "mock-r1"
routes = [{{ provider = "{first}", model = "{first_model}" }},
          {{ provider = "{second}", model = "{second_model}" }}]
""")
    return path
