"""The report: one table on stdout, everything measured in a JSON file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson

from bench.common import Row


def _mark(ok: bool | None) -> str:
    return "" if ok is None else ("PASS" if ok else "MISS")


def table(rows: list[Row]) -> str:
    head = ("scenario", "metric", "value", "target", "")
    cells = [head] + [(r.scenario, r.metric, r.value, r.target, _mark(r.ok)) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    widths[2] = min(widths[2], 80)
    lines = []
    for i, c in enumerate(cells):
        lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_bytes(orjson.dumps(_clean(doc), option=orjson.OPT_INDENT_2))
