"""deploy/: the alert rules load in promtool, and every metric (and label) the rules and the
Grafana dashboard read is one some service exports, derived from the services' registries."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared import metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# Prometheus' own series, and the labels it adds to every scraped one.
PROMETHEUS_OWN = {"up"}
TARGET_LABELS = {"job", "instance", "le"}
PROMQL_WORDS = {"sum", "by", "rate", "increase", "deriv", "max", "min", "and", "or", "topk",
                "histogram_quantile", "without", "on", "ignoring", "avg", "count", "unless"}


def exported() -> dict[str, set[str]]:
    """Every sample name any service serves, with the label names it may carry."""
    out: dict[str, set[str]] = {}
    collectors: list[Any] = [c for role in metrics.ROLE_FAMILIES for c in
                             metrics.registry(role)._collector_to_names]
    collectors.append(metrics.BatchesFlushed())
    for collector in collectors:
        describe = getattr(collector, "describe", None)
        families = (list(describe()) if describe is not None else []) or list(collector.collect())
        labels = set(getattr(collector, "_labelnames", ()))
        for family in families:
            labels |= {k for s in family.samples for k in s.labels}
            labels |= set(getattr(family, "_labelnames", ()))
            if family.type == "counter":
                names = {family.name + "_total", family.name + "_created"}
            elif family.type == "histogram":
                names = {family.name + s for s in ("_bucket", "_count", "_sum", "_created")}
            else:
                names = {family.name} | {s.name for s in family.samples}
            for name in names:
                out.setdefault(name, set()).update(labels)
    return out


SELECTOR = re.compile(r"\b([a-z_:][a-z0-9_:]*)\s*(\{[^}]*\})?")
LABEL = re.compile(r'([a-z_][a-z0-9_]*)\s*(=~|!~|!=|=)\s*"')


def queried(expr: str) -> list[tuple[str, set[str]]]:
    """The series an expression reads: (metric name, label names in its selector)."""
    expr = re.sub(r'"[^"]*"', '""', re.sub(r"\$\w+", "x", expr))
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    out = []
    for m in SELECTOR.finditer(expr):
        name, sel = m.group(1), m.group(2) or ""
        if name in PROMQL_WORDS or name.startswith("__") or not (
                name.startswith(("sluice_", "process_", "python_")) or name in PROMETHEUS_OWN):
            continue
        out.append((name, {lm.group(1) for lm in LABEL.finditer(sel.replace('""', '"'))}))
    return out


def rule_exprs() -> list[str]:
    doc = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    doc = json.loads((DEPLOY / "grafana" / "sluice.json").read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"].replace("label_values(", "").split(",")[0]
              for v in doc["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_promtool_loads_the_alert_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (Debian's prometheus package has it)")
    done = subprocess.run([promtool, "check", "rules", str(DEPLOY / "alerts.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"SUCCESS: \d+ rules found", done.stdout), done.stdout


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_metric_queried_is_exported(source: str) -> None:
    exprs = rule_exprs() if source == "alerts" else dashboard_exprs()
    served = exported()
    reads = [q for e in exprs for q in queried(e)]
    assert len({n for n, _ in reads}) >= 10, reads  # the parse found the queries
    for name, labels in reads:
        if name in PROMETHEUS_OWN:
            continue
        assert name in served, f"{source} reads {name}, which no service exports"
        assert labels <= served[name] | TARGET_LABELS, (
            f"{source} reads {name}{{{labels - served[name]}}}: no such label")


def test_the_parse_catches_a_misspelt_metric_and_label() -> None:
    served = exported()
    [(name, labels)] = queried('sum(rate(sluice_provider_requests_total{code="429"}[5m]))')
    assert name in served and not labels <= served[name] | TARGET_LABELS
    [(name, _)] = queried("sluice_queue_depht")
    assert name not in served


def test_the_dashboard_is_valid_grafana_json() -> None:
    doc = json.loads((DEPLOY / "grafana" / "sluice.json").read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for p in doc["panels"]:
        box = p["gridPos"]
        assert set(box) == {"h", "w", "x", "y"} and box["x"] + box["w"] <= 24


def test_an_open_breaker_fires_its_alert_per_provider(tmp_path: Path) -> None:
    """promtool's rule unit test: provider a's breaker open (2) on two processors for 3
    minutes fires SluiceProviderBreakerOpen for a alone; b, half open then closed, does not."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (Debian's prometheus package has it)")
    case = {
        "rule_files": [str(DEPLOY / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": 'sluice_provider_breaker_state{job="sluice-processor",'
                           'instance="p1:9100",provider="a"}', "values": "0 2 2 2 2 2"},
                {"series": 'sluice_provider_breaker_state{job="sluice-processor",'
                           'instance="p2:9100",provider="a"}', "values": "0 0 2 2 2 2"},
                {"series": 'sluice_provider_breaker_state{job="sluice-processor",'
                           'instance="p1:9100",provider="b"}', "values": "0 1 0 0 0 0"},
            ],
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": "SluiceProviderBreakerOpen", "exp_alerts": []},
                {"eval_time": "4m", "alertname": "SluiceProviderBreakerOpen", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "provider": "a"},
                    "exp_annotations": {"summary": (
                        "Provider a's breaker is open: its calls fail, its work goes to the "
                        "next route (or waits, without one)")}}]},
            ],
        }],
    }
    path = tmp_path / "breaker_test.yml"
    path.write_text(yaml.safe_dump(case))
    done = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_provider_series_are_filtered_by_provider_not_by_the_clients_model() -> None:
    """A provider call's `model` is the route's (what that provider is asked for), not the
    model a client asks for: the dashboard filters those series by $provider, never $model; and
    the breaker and the governor have panels per provider."""
    call_families = {f._name for f in (metrics.ttft, metrics.itl, metrics.tokens,
                                       metrics.provider_requests, metrics.provider_rate_limited,
                                       metrics.provider_pauses, metrics.provider_in_flight)}
    doc = json.loads((DEPLOY / "grafana" / "sluice.json").read_text())
    assert "provider" in {v["name"] for v in doc["templating"]["list"]}
    seen = set()
    for expr in [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]:
        for name, _labels in queried(expr):
            family = re.sub(r"_(total|bucket|count|sum)$", "", name)
            if family in call_families:
                seen.add(family)
                assert '"$model"' not in expr and 'provider=~"$provider"' in expr, expr
    assert seen >= {"sluice_provider_requests", "sluice_tokens",
                    "sluice_time_to_first_token_seconds"}
    per_provider = [e for e in dashboard_exprs() if "by (provider)" in e]
    assert any("sluice_provider_breaker_state" in e for e in per_provider)
    assert any("sluice_governor_window" in e for e in per_provider)
