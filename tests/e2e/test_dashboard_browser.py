"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium through
Debian's chromedriver. Refused without a key; a task submitted through the API appears live
and its tokens stream in; a dead-lettered task is retried with its button and succeeds.
A screenshot of each view is saved under the test's output folder (printed)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.processes import Stack, running_stack
from harness.waiting import wait_for
from tests.client import Api

TENANT_KEY, OTHER_KEY, ADMIN_KEY = "sk-dash-acme", "sk-dash-other", "sk-dash-admin"
ENV = {"EDGE_API_KEYS": f"{TENANT_KEY}:acme,{OTHER_KEY}:other", "EDGE_ADMIN_KEYS": ADMIN_KEY,
       "BATCH_TIMEOUT_MS": "50", "MAX_ATTEMPTS": "2", "RETRY_BASE_S": "0.01"}

# Observability is the services' and Redis's; the store does nothing of its own here.
pytestmark = pytest.mark.first_store_only


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("dashboard"), redis_url, env=ENV) as s:
        yield s


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("screenshots")
    print(f"dashboard screenshots: {folder}")
    return folder


def text_of(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By
    return str(driver.find_element(By.ID, element_id).text)


def use_key(driver: Any, key: str) -> None:
    from selenium.webdriver.common.by import By
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.ID, "key-save").click()


def show(driver: Any, view: str) -> None:
    driver.execute_script(f"location.hash = '#{view}'")


def slow_body(tokens: int = 24, per_s: int = 8, fault: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    mock: dict[str, Any] = {"content_tokens": tokens, "reasoning_tokens": 0,
                            "tokens_per_s": per_s}
    if fault is not None:
        mock["fault"] = {"key": uuid.uuid4().hex, **fault}
    return {"model": "mock-r1", "messages": [{"role": "user", "content": "secret prompt"}],
            "metadata": {"mock": mock}}


def test_refused_without_an_admin_key(stack: Stack, browser: Any, shots: Path) -> None:
    browser.get(f"{stack.edge_url}/dashboard")
    wait_for(lambda: "Access refused" in text_of(browser, "auth-error"), 20,
             "the page to say it was refused")
    use_key(browser, "sk-not-a-key")
    wait_for(lambda: "admin key" in text_of(browser, "auth-error"), 20, "refused again")
    browser.save_screenshot(str(shots / "refused.png"))


def test_a_task_appears_live_and_its_tokens_stream_in(stack: Stack, browser: Any,
                                                      shots: Path) -> None:
    browser.get(f"{stack.edge_url}/dashboard")
    use_key(browser, ADMIN_KEY)
    wait_for(lambda: "every tenant" in text_of(browser, "access"), 20, "admin access")
    show(browser, "live")
    task_id = Api(stack.edge_url, TENANT_KEY).submit(slow_body(tokens=40, per_s=6))
    box = f"live-{task_id}"
    wait_for(lambda: task_id in text_of(browser, box), 30, "the task to appear live")

    def streamed() -> int:
        lines = text_of(browser, box).split("\n")
        return len(" ".join(lines[1:]).split())
    first = wait_for(streamed, 30, "its first tokens")
    wait_for(lambda: streamed() > first, 30, "more tokens to stream in")
    browser.save_screenshot(str(shots / "live.png"))
    wait_for(lambda: "succeeded" in text_of(browser, box), 60, "the task to succeed")
    assert streamed() >= 40
    # The prompt is not shown (DASHBOARD_SHOW_PROMPTS is off).
    show(browser, f"task/{task_id}")
    wait_for(lambda: "succeeded" in text_of(browser, "task-meta"), 20, "the task page")
    assert "secret prompt" not in browser.page_source
    assert "done" in text_of(browser, "task-events")
    # Its story: each status change with its time, and its attempt on the processor.
    wait_for(lambda: "status succeeded" in text_of(browser, "task-timeline"), 20, "timeline")
    for step in ("status queued", "status batched", "status running", "first token"):
        assert step in text_of(browser, "task-timeline"), step
    assert "succeeded" in text_of(browser, "task-attempts")
    # The overview's figures: the bottleneck line, percentiles, this task's tenant.
    show(browser, "overview")
    wait_for(lambda: "Bottleneck now:" in text_of(browser, "bottleneck"), 20, "bottleneck")
    wait_for(lambda: "end to end" in text_of(browser, "latency"), 20, "percentiles")
    show(browser, f"task/{task_id}")
    browser.save_screenshot(str(shots / "task.png"))


def test_a_dead_letter_is_retried_with_its_button(stack: Stack, browser: Any,
                                                  shots: Path) -> None:
    from selenium.webdriver.common.by import By

    api = Api(stack.edge_url, TENANT_KEY)
    # A 400 is not retried: the task fails at once; the fault holds once, so a retry succeeds.
    task_id = api.submit(slow_body(tokens=5, per_s=0, fault={"status": 400, "times": 1}))
    assert api.wait_terminal(task_id)["status"] == "failed"
    browser.get(f"{stack.edge_url}/dashboard#dead")
    use_key(browser, ADMIN_KEY)
    wait_for(lambda: task_id in text_of(browser, "dead"), 30, "the dead letter to be listed")
    browser.save_screenshot(str(shots / "dead.png"))
    # Its page: the error stands where a result would.
    show(browser, f"task/{task_id}")
    wait_for(lambda: "http_400" in text_of(browser, "task-result"), 20, "the error in place")
    assert text_of(browser, "task-result-title") == "Error"
    show(browser, "dead")
    wait_for(lambda: task_id in text_of(browser, "dead"), 30, "the dead letters again")
    browser.find_element(By.ID, f"retry-{task_id}").click()
    wait_for(lambda: browser.current_url.endswith(f"#task/{task_id}"), 20, "the task page")
    wait_for(lambda: browser.find_element(By.ID, "task-meta").get_attribute("data-status")
             == "succeeded", 60, "the retried task to succeed")
    assert api.get(task_id)["status"] == "succeeded"


def test_other_views_and_a_tenant_key_sees_only_its_tasks(stack: Stack, browser: Any,
                                                          shots: Path) -> None:
    browser.get(f"{stack.edge_url}/dashboard")
    use_key(browser, ADMIN_KEY)
    wait_for(lambda: "every tenant" in text_of(browser, "access"), 20, "admin access")
    for view, element in (("overview", "depth-cards"), ("queue", "why"),
                          ("processors", "processors"), ("provider", "provider")):
        show(browser, view)
        wait_for(lambda element=element: text_of(browser, element).strip(), 20, view)
        browser.save_screenshot(str(shots / f"{view}.png"))
    assert "yes" in text_of(browser, "provider") or "streaming" in text_of(browser, "provider")
    # Another tenant's key: the page works, limited to that tenant, and sees no acme task.
    acme_task = Api(stack.edge_url, TENANT_KEY).submit(slow_body(tokens=5, per_s=0))
    browser.get(f"{stack.edge_url}/dashboard#task/{acme_task}")
    use_key(browser, OTHER_KEY)
    wait_for(lambda: "only tenant other" in text_of(browser, "access"), 20, "tenant access")
    wait_for(lambda: "404" in text_of(browser, "task-meta"), 20, "acme's task to be hidden")


def test_the_history_lives_in_redis_and_prompts_stay_hidden(stack: Stack) -> None:
    """The charts' per-minute rollup is in Redis (any edge draws the same page), and a task
    page shows no prompt while DASHBOARD_SHOW_PROMPTS is off."""
    admin = Api(stack.edge_url, ADMIN_KEY)
    tenant = Api(stack.edge_url, TENANT_KEY)
    ids = [tenant.submit(slow_body(tokens=3, per_s=0)) for _ in range(3)]
    for t in ids:
        tenant.wait_terminal(t)
    # This stack's every submission (this module's tests too), as the edge counted them.
    counted = sum(s.value for f in text_string_to_metric_families(
        admin.http.get("/metrics").text) for s in f.samples
        if s.name == "sluice_tasks_submitted_total")
    assert counted >= 3

    def submitted() -> float:
        history = admin.http.get("/api/admin/overview").json()["history"]
        assert len(history) == 60
        return float(sum(m.get("submitted", 0) for m in history))
    wait_for(lambda: submitted() == counted, 20, f"the rollup to count {counted} submissions")
    page = admin.http.get(f"/api/admin/tasks/{ids[0]}").json()
    assert page["status"] == "succeeded" and "request" not in page
    assert "secret prompt" not in str(page)
    assert [e["type"] for e in page["events"]][-1] == "done"
    # A tenant's key reads only its own tasks here, an admin key every tenant's.
    other = Api(stack.edge_url, OTHER_KEY)
    assert other.http.get(f"/api/admin/tasks/{ids[0]}").status_code == 404
    assert tenant.http.get(f"/api/admin/tasks/{ids[0]}").status_code == 200
    assert other.http.get("/api/admin/overview").json()["access"] == "tenant"
    assert Api(stack.edge_url).http.get("/api/admin/overview").status_code == 401
