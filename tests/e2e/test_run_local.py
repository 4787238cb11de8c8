"""``make run`` (scripts/run_local.py) as a newcomer runs it, with the mock's port and the
metrics port moved: the banner comes once the edge answers and says where everything is, the
first task succeeds, and each service serves its own /metrics with only its own families."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.processes import ROOT, free_port
from harness.waiting import wait_for
from tests.client import Api

pytestmark = pytest.mark.first_store_only  # the script starts its own Redis; SQLite is enough


def free_run_of(n: int) -> int:
    """A port p with p .. p+n-1 all free (METRICS_PORT and the ports after it)."""
    for _ in range(100):
        base = free_port()
        socks = [socket.socket() for _ in range(n)]
        try:
            for i, sock in enumerate(socks):
                sock.bind(("0.0.0.0", base + i))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise AssertionError("no run of free ports")


@dataclass
class Run:
    proc: subprocess.Popen[str]
    edge_port: int
    mock_port: int
    metrics_port: int
    out: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.out)


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    edge, mock, metrics = free_port(), free_port(), free_run_of(3)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AI_", "MOCKAI_", "METRICS_", "REDIS_", "STORE_", "EDGE_"))}
    env.update({"EDGE_PORT": str(edge), "EDGE_HOST": "127.0.0.1", "MOCKAI_PORT": str(mock),
                "METRICS_PORT": str(metrics), "STORE_URL": str(tmp_path / "sluice.db"),
                "LOG_FORMAT": "json", "BATCH_TIMEOUT_MS": "100"})
    proc = subprocess.Popen([sys.executable, "-m", "scripts.run_local"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    r = Run(proc, edge, mock, metrics)
    reader = threading.Thread(target=lambda: r.out.extend(iter(proc.stdout.readline, "")),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    try:
        yield r
    except BaseException:
        print(r.text[-6000:])
        raise
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def families(url: str, **kw: object) -> dict[str, float]:
    """Family name -> the sum of its samples (a histogram's _count among them)."""
    text = httpx.get(url, timeout=10, **kw).raise_for_status().text  # type: ignore[arg-type]
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def test_make_run_with_moved_ports_runs_a_task_and_serves_every_metrics_port(run: Run) -> None:
    wait_for(lambda: "sluice is up" in run.text or run.proc.poll() is not None, 90,
             "the banner")
    assert run.proc.poll() is None, run.text[-3000:]
    # The banner comes once the edge answers, and names every address and the model.
    assert httpx.get(f"http://127.0.0.1:{run.edge_port}/api/health").status_code == 200
    banner = run.text[run.text.index("sluice is up"):]
    m = run.metrics_port
    for part in (f"http://localhost:{run.edge_port}/dashboard",
                 f"http://127.0.0.1:{run.mock_port}/v1", "model      mock-r1",
                 f"http://localhost:{run.edge_port}/metrics",
                 f"coordinator http://localhost:{m}/metrics",
                 f"processor http://localhost:{m + 1}/metrics",
                 f"mockai http://localhost:{m + 2}/metrics", "redis      redis://127.0.0.1:"):
        assert part in banner, part

    api = Api(f"http://127.0.0.1:{run.edge_port}")
    task = api.submit({"messages": [{"role": "user", "content": "hello"}]})
    assert api.wait_terminal(task, 60)["status"] == "succeeded"

    def processor_counted() -> dict[str, float]:
        found = families(f"http://127.0.0.1:{m + 1}/metrics")
        return found if found.get("sluice_tasks_finished_total") == 1 else {}
    proc = wait_for(processor_counted, 20, "the processor to count the task")
    edge = families(f"http://127.0.0.1:{run.edge_port}/metrics")
    coord = families(f"http://127.0.0.1:{m}/metrics")
    mock = families(f"http://127.0.0.1:{m + 2}/metrics")
    assert edge["sluice_tasks_submitted_total"] == 1
    assert coord["sluice_tasks_placed_total"] == 1
    assert proc["sluice_time_to_first_token_seconds_count"] == 1
    assert mock["sluice_http_requests_total"] >= 1
    # Each process exports only what it updates: no placeholder of another's family.
    assert "sluice_time_to_first_token_seconds_count" not in edge
    assert "sluice_tasks_finished_total" not in edge
    assert "sluice_tasks_submitted_total" not in proc
    assert "sluice_http_requests_total" not in proc
    assert "sluice_tasks_finished_total" not in coord and "sluice_tasks_finished_total" not in mock
    assert all("process_cpu_seconds_total" in f for f in (edge, coord, proc, mock))

    run.proc.send_signal(signal.SIGINT)
    assert run.proc.wait(60) == 0
