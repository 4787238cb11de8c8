"""Prometheus metrics: after a known workload (tasks that succeed, fail and retry), every
service's /metrics holds the exact counts; a real Prometheus scrapes them all with the example
configuration; the tenant label stays bounded; /metrics is refused without an admin key."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.processes import ROOT, START_S, Stack, free_port
from harness.waiting import wait_for
from shared import metrics
from tests.client import Api

TENANT_KEY, ADMIN_KEY, TOKEN = "sk-metrics-tenant", "sk-metrics-admin", "metrics-token-1"
ENV = {"EDGE_API_KEYS": f"{TENANT_KEY}:acme", "EDGE_ADMIN_KEYS": ADMIN_KEY,
       "METRICS_TOKEN": TOKEN, "METRICS_TENANT_LABEL": "true", "MAX_ATTEMPTS": "3",
       "RETRY_BASE_S": "0.01", "RETRY_CAP_S": "0.05", "BATCH_TIMEOUT_MS": "50"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# Observability is the services' and Redis's; the store does nothing of its own here.
pytestmark = pytest.mark.first_store_only


class MetricsStack:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.ports = {m: free_port() for m in ("mockai", "coordinator", "processor")}

    def up(self) -> None:
        s = self.stack
        s.start("mockai", METRICS_PORT=str(self.ports["mockai"]))
        wait_for(lambda: httpx.get(f"{s.mock_url}/health").status_code == 200, START_S, "mock")
        s.start("edge")
        wait_for(lambda: httpx.get(f"{s.edge_url}/api/health").status_code == 200, START_S,
                 "edge")
        s.start("coordinator", METRICS_PORT=str(self.ports["coordinator"]))
        s.start("processor", METRICS_PORT=str(self.ports["processor"]))
        s.wait_alive(1, 1)

    def url(self, service: str) -> str:
        if service == "edge":
            return f"{self.stack.edge_url}/metrics"
        return f"http://127.0.0.1:{self.ports[service]}/metrics"

    def scrape(self, service: str) -> Samples:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"} if service == "edge" else {}
        r = httpx.get(self.url(service), headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        return parse(r.text)


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """One series' value (0 when absent: a counter never incremented is not exported)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def body(fault: dict[str, Any] | None = None) -> dict[str, Any]:
    mock: dict[str, Any] = {"content_tokens": 6, "reasoning_tokens": 2, "tokens_per_s": 0}
    if fault is not None:
        mock["fault"] = {"key": uuid.uuid4().hex, **fault}
    return {"model": "mock-r1", "messages": [{"role": "user", "content": "hi"}],
            "metadata": {"mock": mock}}


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Any]:
    """3 plain successes, 1 success after a 500, 1 after a 429 with Retry-After: 0, and 2
    failures on a 400 (not retryable): 7 tasks, 9 provider calls."""
    stack = Stack(tmp_path_factory.mktemp("metrics"), redis_url, dict(ENV))
    ms = MetricsStack(stack)
    try:
        ms.up()
        api = Api(stack.edge_url, TENANT_KEY)
        bodies = [body(), body(), body(), body({"status": 500, "times": 1}),
                  body({"status": 429, "retry_after": "0", "times": 1}),
                  body({"status": 400}), body({"status": 400})]
        ids = [api.submit(b) for b in bodies]
        finals = [api.wait_terminal(t, 60) for t in ids]
        assert [f["status"] for f in finals] == ["succeeded"] * 5 + ["failed"] * 2
        # The counters move just after the task turns terminal: wait for the last of them.
        wait_for(lambda: total(ms.scrape("processor"), "sluice_tasks_finished_total") == 7,
                 START_S, "the processor to count 7 finished tasks")
        yield ms, ids
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.down()


def test_each_service_counts_the_workload_exactly(workload: Any) -> None:
    ms, _ids = workload
    edge = ms.scrape("edge")
    assert value(edge, "sluice_tasks_submitted_total", tenant="acme") == 7
    assert value(edge, "sluice_http_requests_total", service="edge", route="/api/tasks",
                 method="POST", status="202") == 7
    # Dead letters are a gauge of their own, not a state of the queue's depth; the waiting
    # room is `waiting`.
    assert value(edge, "sluice_dead_letters") == 2
    states = {dict(ls)["state"] for (n, ls) in edge if n == "sluice_queue_depth"}
    assert states == {"queued", "waiting", "batched", "running"}
    for state in states:
        assert value(edge, "sluice_queue_depth", state=state) == 0, state
    assert value(edge, "sluice_processors_alive") == 1
    assert value(edge, "sluice_coordinators_alive") == 1

    proc = ms.scrape("processor")
    mine = {"model": "mock-r1", "tenant": "acme"}
    assert value(proc, "sluice_tasks_finished_total", status="succeeded", **mine) == 5
    assert value(proc, "sluice_tasks_finished_total", status="failed", **mine) == 2
    assert value(proc, "sluice_tasks_dead_lettered_total") == 2
    assert value(proc, "sluice_task_retries_total") == 2
    # A provider call's series say who was called: without PROVIDERS_FILE, `default`, asked
    # for the task's model.
    call = {"provider": "default", "model": "mock-r1"}
    for status, n in (("200", 5), ("500", 1), ("429", 1), ("400", 2)):
        assert value(proc, "sluice_provider_requests_total", status=status, **call) == n, status
    assert total(proc, "sluice_provider_requests_total") == 9
    assert value(proc, "sluice_provider_rate_limited_total", **call) == 1
    assert value(proc, "sluice_provider_pauses_total", **call) == 1
    assert value(proc, "sluice_provider_calls_in_flight", **call) == 0
    # The provider governor (on by default) as this processor last saw it: a window, nothing
    # in flight once the work is done.
    assert value(proc, "sluice_governor_window", provider="default") >= 1
    assert value(proc, "sluice_governor_calls_in_flight", provider="default") == 0
    # Histograms: one queue wait and one e2e latency per task, one first token per answer.
    # Per model and tenant; the client's TTFT (from submit) once per answered task.
    assert value(proc, "sluice_queue_wait_seconds_count", **mine) == 7
    assert value(proc, "sluice_e2e_request_latency_seconds_count", **mine) == 7
    assert value(proc, "sluice_time_to_first_token_seconds_count", **call, tenant="acme") == 5
    assert value(proc, "sluice_client_time_to_first_token_seconds_count", **mine) == 5
    # Tasks taken in batches: the 7, and once more the one the 429 sent back to the queue.
    assert value(proc, "sluice_batch_size_sum") == 8
    # The mock answers 6 content and 2 reasoning tokens per success.
    used = {**call, "tenant": "acme"}
    assert value(proc, "sluice_tokens_total", kind="reasoning", **used) == 5 * 2
    assert value(proc, "sluice_tokens_total", kind="completion", **used) == 5 * 6
    assert value(proc, "sluice_generation_tokens_total", **used) == 5 * 8
    assert value(proc, "sluice_prompt_tokens_total", **used) == value(
        proc, "sluice_tokens_total", kind="prompt", **used) > 0

    coord = ms.scrape("coordinator")
    assert value(coord, "sluice_tasks_placed_total") == 8  # the 429's task placed twice
    assert total(coord, "sluice_batches_flushed_total") == value(
        proc, "sluice_batches_taken_total") >= 1

    mock = ms.scrape("mockai")
    route = "/v1/chat/completions"
    for code, n in (("200", 5), ("500", 1), ("429", 1), ("400", 2)):
        assert value(mock, "sluice_http_requests_total", service="mockai", route=route,
                     method="POST", status=code) == n, code


def test_edge_metrics_need_an_admin_key_or_the_token(workload: Any) -> None:
    ms, _ids = workload
    url = ms.url("edge")
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {TENANT_KEY}"}).status_code == 403
    for key in (ADMIN_KEY, TOKEN):
        r = httpx.get(url, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and "sluice_tasks_submitted_total" in r.text
    # No task id ever becomes a label.
    _, ids = workload
    for service in ("edge", "processor", "coordinator", "mockai"):
        text = httpx.get(ms.url(service), headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text
        assert not any(t in text for t in ids), service


def test_a_real_prometheus_scrapes_every_service(workload: Any, tmp_path: Path) -> None:
    """Debian's prometheus with deploy/prometheus.yml, its targets pointed at this stack."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed (.ci/run and `make prometheus` install it)")
    ms, _ids = workload
    token_file = tmp_path / "metrics_token"
    token_file.write_text(TOKEN + "\n")
    config = (ROOT / "deploy" / "prometheus.yml").read_text()
    for service in ("coordinator", "processor"):  # DNS discovery -> the test's own port
        config = config.replace(
            f'dns_sd_configs:\n      - names: ["{service}"]\n        type: A\n        port: 9100',
            f'static_configs:\n      - targets: ["127.0.0.1:{ms.ports[service]}"]')
    config = (config.replace("scrape_interval: 15s", "scrape_interval: 1s")
              .replace('"edge:8080"', f'"127.0.0.1:{ms.stack.edge_port}"')
              .replace('"mockai:9100"', f'"127.0.0.1:{ms.ports["mockai"]}"')
              .replace("/etc/prometheus/metrics_token", str(token_file)))
    assert "dns_sd_configs" not in config
    (tmp_path / "prometheus.yml").write_text(config)
    (tmp_path / "alerts.yml").write_text((ROOT / "deploy" / "alerts.yml").read_text())
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        def all_up() -> bool:
            targets = httpx.get(f"{api}/targets").json()["data"]["activeTargets"]
            return len(targets) == 4 and all(t["health"] == "up" for t in targets)
        wait_for(all_up, 60, "prometheus to report its 4 targets up", interval=0.5)

        def finished() -> float:
            r = httpx.get(f"{api}/query", params={"query": "sum(sluice_tasks_finished_total)"})
            result = r.json()["data"]["result"]
            return float(result[0]["value"][1]) if result else 0.0
        assert wait_for(lambda: finished() == 7, 30, "PromQL to count 7 tasks", interval=0.5)
        r = httpx.get(f"{api}/query", params={
            "query": 'sum by (status) (sluice_tasks_finished_total{tenant="acme"})'})
        by_status = {s["metric"]["status"]: float(s["value"][1])
                     for s in r.json()["data"]["result"]}
        assert by_status == {"succeeded": 5.0, "failed": 2.0}
        # deploy/alerts.yml loaded and evaluated against this stack's series.
        groups = httpx.get(f"{api}/rules").json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) >= 10 and all(r["health"] != "err" for r in rules), rules
    except BaseException:
        log.flush()
        print((tmp_path / "prometheus.log").read_text()[-3000:])
        raise
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_ten_thousand_tenants_stay_under_the_cardinality_bound() -> None:
    """The tenant label keeps the first METRICS_MAX_TENANTS tenants, the rest become 'other'
    (here in process, through the same counters the edge and the processor use)."""
    labels = metrics.TenantLabels(enabled=True, cap=50)
    before = value(parse(metrics.exposition().decode()), "sluice_tasks_submitted_total",
                   tenant="other")
    for i in range(10_000):
        metrics.tasks_submitted.labels(labels(f"cardinality-{i}")).inc()
    series = [ls for (n, ls) in parse(metrics.exposition().decode())
              if n == "sluice_tasks_submitted_total"
              and dict(ls).get("tenant", "").startswith(("cardinality-", "other"))]
    assert len(series) == 51  # 50 tenants and 'other'
    text = metrics.exposition().decode()
    assert value(parse(text), "sluice_tasks_submitted_total",
                 tenant="other") - before == 10_000 - 50
    assert len(text.encode()) < 200_000
    off = metrics.TenantLabels(enabled=False)
    assert {off(f"t{i}") for i in range(100)} == {""}
