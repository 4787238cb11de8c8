"""The container healthcheck of services with no port: ``python -m services.<name> --check``."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from harness.processes import ROOT, running_stack
from harness.waiting import wait_for


def check(stack_env: dict[str, str], module: str, **env: str) -> int:
    return subprocess.run([sys.executable, "-m", f"services.{module}", "--check"], cwd=ROOT,
                          env={**stack_env, **env}, capture_output=True, timeout=30).returncode


def test_check_follows_the_heartbeat(tmp_path: Path, redis_url: str) -> None:
    with running_stack(tmp_path, redis_url) as stack:
        env = stack.env()
        [proc] = stack.of("processor")
        [coord] = stack.of("coordinator")
        proc_name = f"proc-{stack.prefix}-{proc.name.rsplit('-', 1)[1]}"
        coord_name = f"coord-{stack.prefix}-{coord.name.rsplit('-', 1)[1]}"
        assert check(env, "processor", PROCESSOR_NAME=proc_name) == 0
        assert check(env, "coordinator", COORDINATOR_NAME=coord_name) == 0
        assert check(env, "processor", PROCESSOR_NAME="nobody") == 1
        proc.kill(signal.SIGTERM)
        wait_for(lambda: check(env, "processor", PROCESSOR_NAME=proc_name) == 1, 10,
                 "the check to fail once the processor is gone")
        assert check({**env, "REDIS_URL": "redis://127.0.0.1:1/0"}, "coordinator",
                     COORDINATOR_NAME=coord_name) == 1
