"""The task page with two providers (PROVIDERS_FILE, two mock provider processes, the first
answering 503 to every call): a task that failed on the first and succeeded on the second
shows both attempts on its timeline in headless Chromium, each with its provider, route
model, processor and latency, the first one's error; at a phone's 390 px the timeline wraps
(no entry runs off the screen, the page never scrolls sideways). Screenshots go to a folder
the test prints."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.processes import Stack, free_port
from harness.providers import two_providers_file
from harness.waiting import wait_for
from tests.client import Api
from tests.e2e.test_dashboard_browser import (
    ADMIN_KEY,
    ENV,
    TENANT_KEY,
    show,
    slow_body,
    text_of,
    use_key,
)

pytestmark = pytest.mark.first_store_only


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("dashboard-providers")
    second_port = free_port()
    s = Stack(folder, redis_url, dict(ENV))
    s.env_overrides["PROVIDERS_FILE"] = str(two_providers_file(
        folder, f"{s.mock_url}/v1", f"http://127.0.0.1:{second_port}/v1",
        names=("first", "second"), models=("r1-first", "r1-second")))
    try:
        s.start("mockai", MOCKAI_FAIL_STATUS="503")  # the first provider: an outage
        s.start("mockai", MOCKAI_PORT=str(second_port))
        for url in (s.mock_url, f"http://127.0.0.1:{second_port}"):
            wait_for(lambda url=url: httpx.get(f"{url}/health").status_code == 200, 20,
                     f"the mock provider at {url}")
        s.up(mock=False)
        yield s
    except BaseException:
        print(s.logs())
        raise
    finally:
        s.down()


@pytest.fixture(scope="module")
def moved_on(stack: Stack) -> str:
    """A task that failed on the first provider and succeeded on the second."""
    api = Api(stack.edge_url, TENANT_KEY)
    task_id = api.submit(slow_body(tokens=12, per_s=0))
    task = api.wait_terminal(task_id, 60)
    assert task["status"] == "succeeded", task
    assert [(t["provider"], t["status"]) for t in task["tries"]] == [
        ("first", "failed"), ("second", "succeeded")], task["tries"]
    return task_id


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("screenshots-providers")
    print(f"dashboard screenshots: {folder}")
    return folder


def open_task(driver: Any, stack: Stack, task_id: str) -> str:
    """The task page, once its timeline shows the second attempt; its timeline's text."""
    driver.get(f"{stack.edge_url}/dashboard")
    use_key(driver, ADMIN_KEY)
    wait_for(lambda: "every tenant" in text_of(driver, "access"), 20, "admin access")
    show(driver, f"task/{task_id}")
    wait_for(lambda: "status succeeded" in text_of(driver, "task-timeline"), 20,
             "the task's timeline")
    return text_of(driver, "task-timeline")


def test_the_timeline_shows_each_attempt_with_its_provider_and_error(
        stack: Stack, moved_on: str, browser: Any, shots: Path) -> None:
    timeline = open_task(browser, stack, moved_on)
    browser.execute_script("document.getElementById('task-timeline').scrollIntoView()")
    browser.save_screenshot(str(shots / "desktop-task.png"))
    lines = timeline.split("\n")
    first = lines.index("attempt 1 on first (r1-first): failed")
    second = lines.index("attempt 2 on second (r1-second): succeeded")
    assert first < second < lines.index("status succeeded"), lines
    # Each call's who, where and how long, and the first one's error, right under it.
    processor = Api(stack.edge_url, ADMIN_KEY).http.get(
        f"/api/admin/tasks/{moved_on}").json()["attempts"][0]["processor"]
    assert processor and processor.startswith("proc-")
    assert lines[first + 1].startswith(
        f"provider first · model r1-first · processor {processor} · "), lines[first + 1]
    assert lines[first + 1].endswith(" ms"), lines[first + 1]
    assert lines[first + 2].startswith("http_503 (503): mock: outage"), lines[first + 2]
    assert lines[second + 1].startswith(
        f"provider second · model r1-second · processor {processor} · "), lines[second + 1]
    assert "first token" in lines[second + 1]
    assert not lines[second + 2].startswith("http_"), lines[second + 2]  # no error of its own
    attempts = text_of(browser, "task-attempts")
    assert "first" in attempts and "second" in attempts and "http_503" in attempts


def test_the_timeline_wraps_at_390_px(stack: Stack, moved_on: str, browser: Any,
                                      shots: Path) -> None:
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    timeline = open_task(browser, stack, moved_on)
    assert "attempt 1 on first (r1-first): failed" in timeline
    assert "http_503 (503): mock: outage" in timeline
    browser.execute_script("document.getElementById('task-timeline').scrollIntoView()")
    browser.save_screenshot(str(shots / "phone-task.png"))
    found = browser.execute_script("""
        const w = 390;  // the phone's width (a page wider than it widens window.innerWidth)
        const steps = [...document.getElementById('task-timeline').children];
        const wide = steps.filter((e) => e.getBoundingClientRect().right > w + 1)
          .map((e) => e.textContent.slice(0, 60));
        return {scroll: document.documentElement.scrollWidth, inner: w, steps: steps.length,
                wide, scrolled: !!document.getElementById('task-timeline').closest('.scroll')};
        """)
    # Every step can be read where it stands: none runs off the screen, none sits in a box
    # that scrolls sideways, and the page itself does not.
    assert found["steps"] >= 6 and found["wide"] == [] and not found["scrolled"], found
    assert found["scroll"] <= found["inner"], found


def test_the_provider_tab_shows_each_providers_breaker(stack: Stack, browser: Any,
                                                      shots: Path) -> None:
    """The first provider's failure is on its breaker (failing, or open after enough of them),
    the second's is ok; each governor is named by its provider."""
    api = Api(stack.edge_url, TENANT_KEY)  # a failure on the first within the last minute
    assert api.wait_terminal(api.submit(slow_body(tokens=3, per_s=0)), 60)["status"] == (
        "succeeded")
    browser.get(f"{stack.edge_url}/dashboard#provider")
    use_key(browser, ADMIN_KEY)
    wait_for(lambda: "breaker" in text_of(browser, "provider"), 20, "the provider tab")
    lines = text_of(browser, "provider").split("\n")
    browser.save_screenshot(str(shots / "desktop-provider.png"))
    first = lines[lines.index("provider first") + 1]
    assert first.startswith(("breaker failing", "breaker open")), lines
    assert "mock: outage" in first, first
    assert lines[lines.index("provider second") + 1].startswith("breaker ok"), lines
    pacing = lines[lines.index("pacing (governor)") + 1]
    assert "first: window" in pacing and "second: window" in pacing, pacing
