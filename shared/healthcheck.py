"""``--check``: the container healthcheck of a service that has no port (arq's ``--check``).

Coordinators and processors keep a heartbeat in a sorted set (member = their name, score = the
epoch ms at which it expires). The check is a separate process started by the container engine,
so it passes when that set holds a live heartbeat of the service running beside it.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys

from redis import Redis, RedisCluster
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry

from shared.config import mask_url
from shared.redis_conn import is_cluster_url, plain_url
from shared.timeutil import now_ms


def default_name(role: str) -> str:
    """``<role>-<hostname>-<pid>-<random>``: unique even where containers share a hostname and
    a pid (host networking gives every replica the host's name, and each runs as pid 1)."""
    return f"{role}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def name_matcher(role: str, configured: str | None) -> tuple[str, bool]:
    """What to look for: ``(name, False)`` for a name set through the environment, else
    ``(prefix, True)``: the check runs in its own process, so it cannot know the random part
    of the default name, only the ``<role>-<hostname>-`` it shares with the service beside it."""
    if configured:
        return configured, False
    return f"{role}-{socket.gethostname()}-", True


def live_members(redis_url: str, heartbeat_key: str) -> dict[str, float]:
    """Members of the heartbeat set whose expiry is still ahead, with seconds left."""
    now = now_ms()
    # A one-shot process: a plain client with short timeouts and no retries, so a Redis that is
    # down fails the check at once instead of outliving the engine's healthcheck timeout.
    options = {"decode_responses": True, "socket_connect_timeout": 2, "socket_timeout": 2}
    client: Redis | RedisCluster = (
        RedisCluster.from_url(plain_url(redis_url), retry=Retry(NoBackoff(), 0), **options)
        if is_cluster_url(redis_url) else Redis.from_url(redis_url, **options))
    try:
        pairs: list[tuple[str, float]] = client.zrangebyscore(  # type: ignore[assignment]
            heartbeat_key, f"({now}", "+inf", withscores=True)
    finally:
        client.close()
    return {member: (score - now) / 1000 for member, score in pairs}


def check(redis_url: str, heartbeat_key: str, role: str, configured: str | None) -> int:
    """Exit status for the engine: 0 when a live heartbeat matches, else 1."""
    wanted, is_prefix = name_matcher(role, configured)
    try:
        alive = live_members(redis_url, heartbeat_key)
    except (RedisError, RedisClusterException) as exc:
        print(f"unhealthy: redis at {mask_url(redis_url)}: {type(exc).__name__}", file=sys.stderr)
        return 1
    for member, left_s in alive.items():
        if member == wanted or (is_prefix and member.startswith(wanted)):
            print(f"ok: {member} heartbeat expires in {left_s:.1f} s")
            return 0
    shown = f"{wanted}*" if is_prefix else wanted
    print(f"unhealthy: no live heartbeat for {shown} in {heartbeat_key}", file=sys.stderr)
    return 1
