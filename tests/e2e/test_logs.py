"""What the services print, read from their real stdout (LOG_FORMAT=json): `service` on every
line, the tenant and the client's trace id on a request's and a task's lines, a failed task's
final line at warning with its error, and no access lines for scrapes and dashboard polls unless
LOG_POLLS=true."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from harness.processes import Stack, free_port, json_lines
from harness.waiting import wait_for
from tests.client import Api

KEY, ADMIN = "sk-logs-tenant", "sk-logs-admin"
ENV = {"EDGE_API_KEYS": f"{KEY}:acme", "EDGE_ADMIN_KEYS": ADMIN, "MAX_ATTEMPTS": "1",
       "BATCH_TIMEOUT_MS": "50"}
POLLS = ("/metrics", "/api/admin/overview", "/api/admin/live", "/dashboard")
pytestmark = pytest.mark.first_store_only


def traceparent() -> str:
    return f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"


def lines(stack: Stack, module: str) -> list[dict[str, Any]]:
    return [line for s in stack.services if s.name.startswith(module + "-")
            for line in json_lines(s.log.read_text(errors="replace"))]


def poll(base: str) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    for path in POLLS * 2:
        assert httpx.get(base + path, headers=admin, timeout=10).status_code == 200, path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Any]:
    stack = Stack(tmp_path_factory.mktemp("logs"), redis_url, dict(ENV)).up()
    try:
        api = Api(stack.edge_url, KEY)
        good, bad = traceparent(), traceparent()
        ok = api.submit({"prompt": "hi"}, headers={"traceparent": good})
        failed = api.submit({"prompt": "hi", "metadata": {"mock": {"fault": {
            "key": uuid.uuid4().hex, "status": 400}}}}, headers={"traceparent": bad})
        assert api.wait_terminal(ok)["status"] == "succeeded"
        assert api.wait_terminal(failed)["status"] == "failed"
        poll(stack.edge_url)
        # A second edge with LOG_POLLS=true, on the same Redis.
        port = free_port()
        stack.start("edge", EDGE_PORT=str(port), LOG_POLLS="true")
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{base}/api/health").status_code == 200, 20, "edge 2")
        poll(base)
        wait_for(lambda: sum(1 for line in lines(stack, "processor")
                             if line.get("event") == "task") >= 2, 20, "the task lines")
        yield stack, {"ok": (ok, good), "failed": (failed, bad)}, port
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.down()


def test_every_line_names_its_service(run: Any) -> None:
    stack, _tasks, _port = run
    for module in ("edge", "coordinator", "processor", "mockai"):
        got = lines(stack, module)
        assert got, module
        assert {line.get("service") for line in got} == {module}, module


def test_request_and_task_lines_carry_tenant_and_trace_id(run: Any) -> None:
    stack, tasks, _port = run
    for task_id, parent in tasks.values():
        trace = parent.split("-")[1]
        submit = [line for line in lines(stack, "edge") if line.get("event") == "request"
                  and line.get("method") == "POST" and line.get("task_id") == task_id]
        assert len(submit) == 1, submit
        assert submit[0]["tenant"] == "acme" and submit[0]["trace_id"] == trace
        final = [line for line in lines(stack, "processor")
                 if line.get("event") == "task" and line.get("task_id") == task_id]
        assert len(final) == 1, final
        assert final[0]["tenant"] == "acme" and final[0]["trace_id"] == trace


def test_a_failed_task_ends_on_a_warning_with_its_error(run: Any) -> None:
    stack, tasks, _port = run
    by_task = {line["task_id"]: line for line in lines(stack, "processor")
               if line.get("event") == "task"}
    failed, ok = by_task[tasks["failed"][0]], by_task[tasks["ok"][0]]
    assert failed["level"] == "warning" and failed["status"] == "failed"
    assert failed["error_code"] and failed["error_message"], failed
    assert ok["level"] == "info" and ok["error_code"] is None
    assert not any(line.get("event") == "lease_lost" for line in lines(stack, "processor"))


def test_polls_have_no_access_line_unless_asked(run: Any) -> None:
    stack, _tasks, port = run
    first, second = (s for s in stack.services if s.name.startswith("edge-"))
    def paths(service: Any) -> set[str]:
        return {line["path"] for line in json_lines(service.log.read_text())
                if line.get("event") == "request" and line.get("method") == "GET"}
    assert not paths(first) & set(POLLS), paths(first)
    assert set(POLLS) <= paths(second), paths(second)
    assert port
