"""The Lua scripts, loaded once per client; each is one atomic multi-key step (see lua/*.lua)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.commands.core import AsyncScript

from shared.redis_conn import RedisClient

_DIR = Path(__file__).with_name("lua")
NAMES = ("submit", "batch", "capacity", "begin", "attempt", "emit", "complete", "renew",
         "release", "cancel", "handoff", "retry", "heartbeat")


@dataclass(frozen=True, slots=True)
class Scripts:
    submit: AsyncScript
    batch: AsyncScript
    capacity: AsyncScript
    begin: AsyncScript
    attempt: AsyncScript
    emit: AsyncScript
    complete: AsyncScript
    renew: AsyncScript
    release: AsyncScript
    cancel: AsyncScript
    handoff: AsyncScript
    retry: AsyncScript
    heartbeat: AsyncScript

    @classmethod
    def register(cls, redis: RedisClient) -> Scripts:
        loaded: dict[str, Any] = {
            name: redis.register_script((_DIR / f"{name}.lua").read_text()) for name in NAMES
        }
        return cls(**loaded)
