"""Redis with a password, and Redis over TLS, through REDIS_URL alone: a task goes through, and
the password appears in no log."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import redis

from harness.processes import RedisServer, make_tls_files, running_stack

# The store plays no part of its own here: on the first store only (tests/conftest.py).
pytestmark = pytest.mark.first_store_only

PASSWORD = "canary-redis-pw-3b9f0c"


def run_one_task(tmp_path: Path, url: str, api_factory: Any) -> None:
    with running_stack(tmp_path, url) as stack:
        api = api_factory(stack.edge_url)
        task = api.wait_terminal(api.submit({"prompt": "through a locked door"}))
        assert task["status"] == "succeeded", task
        health = api.http.get("/api/health").json()
        assert health["checks"]["redis"] == "ok"
    for log in tmp_path.glob("*.log"):
        assert PASSWORD not in log.read_text(errors="replace"), f"password in {log.name}"


def test_password_protected_redis(tmp_path: Path, api_factory: Any) -> None:
    server = RedisServer(tmp_path / "redis", password=PASSWORD).start()
    try:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port).ping()  # the server really wants the password
        run_one_task(tmp_path, server.url, api_factory)
    finally:
        server.kill()


def start_tls_server(tmp_path: Path) -> RedisServer:
    """A TLS-only redis-server, or a skip naming what this machine lacks."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed (it makes the test certificates)")
    tls = make_tls_files(tmp_path / "certs")
    server = RedisServer(tmp_path / "redis", password=PASSWORD, tls=tls)
    try:
        return server.start()
    except AssertionError:
        server.kill()
        log = (server.dir / "redis.log").read_text(errors="replace")
        if "TLS" in log and ("not built" in log or "not supported" in log.lower()):
            pytest.skip(f"this redis-server has no TLS support: {log.strip()[-200:]}")
        raise


def test_tls_redis(tmp_path: Path, api_factory: Any) -> None:
    server = start_tls_server(tmp_path)
    try:
        assert server.url.startswith("rediss://")
        with pytest.raises(redis.ConnectionError):
            redis.Redis(port=server.port, password=PASSWORD,
                        socket_connect_timeout=2, socket_timeout=2).ping()  # no plain text
        run_one_task(tmp_path, server.url, api_factory)
    finally:
        server.kill()
