"""The Lua scripts, loaded once per client; each is one atomic multi-key step (see lua/*.lua).

Only :mod:`shared.steps` calls them. Status and event names are not spelled in the Lua: every
script starts with a prelude generated from :mod:`shared.tasks` that defines them as locals
(``QUEUED``, ``TERMINAL[status]``, ``TERMINAL_EVENT[status]``, ``EV_STATUS``...), so the names
have one source. A script's shebang line (``#!lua flags=...``) stays its first line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.commands.core import AsyncScript

from shared import tasks
from shared.redis_conn import RedisClient

DIR = Path(__file__).with_name("lua")
NAMES = ("submit", "batch", "capacity", "begin", "attempt", "emit", "complete", "renew",
         "release", "cancel", "handoff", "requeue", "retry", "heartbeat", "trace", "tried",
         "forget")


def _lua_table(pairs: dict[str, str | bool]) -> str:
    def lit(v: str | bool) -> str:
        return "true" if v is True else f"'{v}'"
    return "{" + ", ".join(f"['{k}']={lit(v)}" for k, v in pairs.items()) + "}"


def prelude() -> str:
    """One line of Lua locals naming every status and event type, from shared.tasks."""
    names = {"QUEUED": tasks.QUEUED, "BATCHED": tasks.BATCHED, "RUNNING": tasks.RUNNING,
             "SUCCEEDED": tasks.SUCCEEDED, "FAILED": tasks.FAILED,
             "CANCELLED": tasks.CANCELLED, "EV_STATUS": tasks.EV_STATUS,
             "EV_RESET": tasks.EV_RESET}
    local = ", ".join(names) + " = " + ", ".join(f"'{v}'" for v in names.values())
    terminal = _lua_table(dict.fromkeys(sorted(tasks.TERMINAL), True))
    events = _lua_table(dict(tasks.TERMINAL_EVENT))
    return (f"local {local}\nlocal TERMINAL, TERMINAL_EVENT = {terminal}, {events}\n")


def source(name: str) -> str:
    """A script's text as sent to Redis: its shebang line (if any), the prelude, its body."""
    text = (DIR / f"{name}.lua").read_text()
    if text.startswith("#!"):
        first, _, rest = text.partition("\n")
        return f"{first}\n{prelude()}{rest}"
    return prelude() + text


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
    requeue: AsyncScript
    retry: AsyncScript
    heartbeat: AsyncScript
    trace: AsyncScript
    tried: AsyncScript
    forget: AsyncScript

    @classmethod
    def register(cls, redis: RedisClient) -> Scripts:
        loaded: dict[str, Any] = {name: redis.register_script(source(name)) for name in NAMES}
        return cls(**loaded)
