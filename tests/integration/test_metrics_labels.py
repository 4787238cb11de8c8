"""Metrics an operator can aggregate, read from the registry the processor serves after real
tasks ran in process: ``model`` and a capped ``tenant`` on tokens and latencies, ``status`` (the
one name for an HTTP status) on provider calls, the client's TTFT from submit, and with an
OpenTelemetry reader the GenAI conventions' three metrics."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client.parser import text_string_to_metric_families

from shared import metrics, tracing
from tests.integration import kit
from tests.integration.kit import Core

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(role: str = "processor") -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(metrics.exposition(role).decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def label_names(samples: Samples, name: str) -> set[str]:
    return {k for (n, ls) in samples if n == name for k, _v in ls} - {"le"}


async def run(core: Core, tenant: str, mocks: list[dict[str, Any]]) -> None:
    for mock in mocks:
        await kit.submit(core.steps, tenant=tenant, body=kit.request(mock))
    await core.burst()


async def test_tokens_latencies_and_calls_carry_model_and_tenant(core: Core) -> None:
    tenant = f"labels-{uuid.uuid4().hex[:8]}"
    fault = {"fault": {"key": uuid.uuid4().hex, "status": 500, "times": 1}}
    await run(core, tenant, [{"content_tokens": 5, "reasoning_tokens": 2}] * 2
              + [{"content_tokens": 5, "reasoning_tokens": 0, **fault}])
    s = scrape()
    mine = {"model": "mock-r1", "tenant": tenant}
    assert total(s, "sluice_tasks_finished_total", status="succeeded", **mine) == 3
    assert total(s, "sluice_tokens_total", kind="completion", **mine) == 15
    assert total(s, "sluice_tokens_total", kind="reasoning", **mine) == 4
    assert total(s, "sluice_generation_tokens_total", **mine) == 19
    assert total(s, "sluice_prompt_tokens_total", **mine) > 0
    for family in ("sluice_queue_wait_seconds", "sluice_e2e_request_latency_seconds",
                   "sluice_client_time_to_first_token_seconds"):
        assert total(s, f"{family}_count", **mine) == 3, family
    assert total(s, "sluice_time_to_first_token_seconds_count", **mine) == 3
    assert label_names(s, "sluice_inter_token_latency_seconds_bucket") == {"provider", "model"}
    # One label name for an HTTP status, everywhere: provider calls say `status`, as HTTP does.
    # Without PROVIDERS_FILE the one provider is `default`, asked for the task's model.
    assert label_names(s, "sluice_provider_requests_total") == {"provider", "model", "status"}
    call = {"provider": "default", "model": "mock-r1"}
    assert total(s, "sluice_provider_requests_total", status="500", **call) >= 1
    assert total(s, "sluice_provider_requests_total", status="200", **call) >= 3
    assert total(s, "sluice_tokens_total", kind="completion", tenant=tenant, **call) == 15
    # The provider's other series are per provider and model too (read from the families: a
    # 429-free run leaves them without samples).
    for family in (metrics.provider_rate_limited, metrics.provider_pauses,
                   metrics.provider_pause_seconds, metrics.provider_in_flight):
        assert family._labelnames == ("provider", "model"), family


def test_every_http_status_label_is_named_status() -> None:
    """Over every family any process serves: no label called `code`."""
    for role, families in metrics.ROLE_FAMILIES.items():
        for family in families:
            assert "code" not in getattr(family, "_labelnames", ()), (role, family)


async def test_the_client_ttft_runs_from_submit_and_counts_each_task_once(core: Core) -> None:
    """A task answered after a 500 has one client TTFT (its first token the client saw), longer
    than the provider's TTFT of the call that gave it."""
    tenant = f"ttft-{uuid.uuid4().hex[:8]}"
    fault = {"fault": {"key": uuid.uuid4().hex, "status": 500, "times": 1}}
    await run(core, tenant, [{"content_tokens": 3, **fault}])
    s = scrape()
    mine = {"model": "mock-r1", "tenant": tenant}
    assert total(s, "sluice_client_time_to_first_token_seconds_count", **mine) == 1
    assert (total(s, "sluice_client_time_to_first_token_seconds_sum", **mine)
            >= total(s, "sluice_time_to_first_token_seconds_sum", **mine))


async def test_the_tenant_label_is_capped(core: Core) -> None:
    """Past METRICS_MAX_TENANTS tenants seen, a new tenant's tokens count under 'other'."""
    before = scrape()
    saved = metrics.tenant_label
    metrics.tenant_label = metrics.TenantLabels(True, 1)
    try:
        first, second = (f"cap-{i}-{uuid.uuid4().hex[:6]}" for i in range(2))
        await run(core, first, [{"content_tokens": 4, "reasoning_tokens": 0}])
        await run(core, second, [{"content_tokens": 4, "reasoning_tokens": 0}])
    finally:
        metrics.tenant_label = saved
    s = scrape()
    assert total(s, "sluice_tokens_total", kind="completion", tenant=first) == 4
    assert total(s, "sluice_tokens_total", kind="completion", tenant=second) == 0
    grew = (total(s, "sluice_tokens_total", kind="completion", tenant="other")
            - total(before, "sluice_tokens_total", kind="completion", tenant="other"))
    assert grew == 4


@pytest.fixture
def genai_reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    tracing.setup_metrics("processor", reader)
    try:
        yield reader
    finally:
        tracing._instruments = None  # off again, as without an endpoint


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out.setdefault(m.name, []).extend(m.data.data_points)
    return out


async def test_genai_metrics_follow_the_semantic_conventions(
        core: Core, genai_reader: InMemoryMetricReader) -> None:
    tenant = f"otel-{uuid.uuid4().hex[:8]}"
    fault = {"fault": {"key": uuid.uuid4().hex, "status": 400}}
    await run(core, tenant, [{"content_tokens": 7, "reasoning_tokens": 0},
                             {"content_tokens": 7, **fault}])
    got = points(genai_reader)
    usage = {p.attributes["gen_ai.token.type"]: p for p in got["gen_ai.client.token.usage"]}
    assert set(usage) == {"input", "output"}
    assert usage["output"].sum == 7 and usage["output"].count == 1
    for p in usage.values():
        assert p.attributes["gen_ai.operation.name"] == "chat"
        assert p.attributes["gen_ai.request.model"] == "mock-r1"
    durations = {p.attributes.get("error.type"): p.count
                 for p in got["gen_ai.client.operation.duration"]}
    assert durations[None] == 1 and sum(durations.values()) == 2  # the 400 has an error.type
    assert [p.count for p in got["gen_ai.server.time_to_first_token"]] == [1]
